"""fedquad.run(config, on_round=...) and fedquad.resume(dir, on_round=...) hand each round's
metrics record to the caller, for logging elsewhere."""

from __future__ import annotations

import json

import pytest

import fedquad
import fedquad.api
from fedquad.cli import main
from fedquad.config import load_config
from fedquad.errors import RunInterrupted
from fedquad.report.results import read_metrics

SETTINGS = [
    "method='fedlora'",
    "data.max_train_samples=120",
    "data.max_test_samples=32",
    "model.max_length=16",
    "federation.rounds=3",
    "federation.num_devices=3",
    "federation.devices_per_round=2",
    "federation.checkpoint_every=2",
    "federation.save_adapter_every=1",
    "train.local_steps=1",
    "train.batch_size=8",
    "lora.depth=1",
    "fleet.name=uniform",
    "profile.timed_steps=1",
]


class Stop(Exception):
    pass


def test_on_round_gets_each_record_in_run_and_in_resume(tmp_path):
    config = load_config(None, [*SETTINGS, f"output_dir='{tmp_path}'", "run_name='r'"])
    seen: list[dict] = []

    def log_then_stop_at_round_3(record: dict) -> None:
        seen.append(record)
        record["devices"].clear()  # the caller's copy: the run's own record is untouched
        if record["round"] == 3:
            raise Stop  # as a process killed after round 3's record, before its checkpoint

    with pytest.raises(Stop):
        fedquad.run(config, on_round=log_then_stop_at_round_3)
    run_dir = tmp_path / "r"
    written = read_metrics(run_dir)
    assert [r["round"] for r in seen] == [1, 2, 3]
    assert [r["round"] for r in written] == [1, 2, 3]
    assert all(r["devices"] for r in written)
    assert [r["test_accuracy"] for r in seen] == [r["test_accuracy"] for r in written]
    # checkpoints every 2 rounds although adapters are snapshotted every round
    assert json.loads((run_dir / "checkpoint" / "latest.json").read_text())["round"] == 2
    assert sorted(p.name for p in (run_dir / "adapter").glob("round-*")) == [
        "round-0001",
        "round-0002",
    ]

    resumed: list[dict] = []
    result = fedquad.resume(run_dir, on_round=resumed.append)
    assert [r["round"] for r in resumed] == [3]  # the round lost with the "process"
    assert resumed == [r for r in result.metrics if r["round"] == 3]
    assert sorted(p.name for p in (run_dir / "adapter").glob("round-*")) == [
        "round-0001",
        "round-0002",
        "round-0003",
    ]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.integration
def test_ctrl_c_names_the_run_and_its_resume_command(tmp_path, capsys, monkeypatch):
    def stop_after_first(record):
        if record["round"] == 1:
            raise KeyboardInterrupt

    config = load_config(
        None,
        [*SETTINGS, "federation.checkpoint_every=1", f"output_dir={tmp_path}", "run_name=stopped"],
    )
    with pytest.raises(RunInterrupted) as info:
        fedquad.run(config, on_round=stop_after_first)
    run_dir = tmp_path / "stopped"
    assert info.value.run_dir == str(run_dir)
    assert len(read_metrics(run_dir)) == 1
    # the command line prints where the run is and how to continue it
    monkeypatch.setattr(fedquad.api, "run", lambda *a, **k: (_ for _ in ()).throw(info.value))
    capsys.readouterr()  # the run's own warnings
    assert main(["run", "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"error: interrupted; the rounds so far are in {run_dir}; " + (
        f"continue with: fedquad run --resume {run_dir}"
    )
    assert [m["round"] for m in fedquad.resume(run_dir).metrics] == [1, 2, 3]
