"""Checkpoint and resume: a run killed mid-round, resumed, ends like an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fedquad
from fedquad.cli import main
from fedquad.config import load_config
from fedquad.report.results import read_metrics
from fedquad.server.capacity import CapacityEstimator, Report
from fedquad.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedquad.server.clock import VirtualClock

RUN = [
    "method='fedquad'",
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "data.partition='iid'",
    "model.max_length=32",
    "federation.rounds=4",
    "federation.num_devices=8",
    "federation.devices_per_round=3",
    "train.local_steps=2",
    "train.batch_size=8",
    "profile.timed_steps=1",
]

COMPARED = ("sampled", "test_accuracy", "test_loss", "train_loss", "virtual_seconds_total")


def test_checkpoint_round_trip_and_only_the_latest_tensors_kept(tmp_path):
    from fedquad.cost.model import CostProfile
    from fedquad.device_config import DeviceConfig

    profile = CostProfile(
        num_blocks=1, frozen_weight_bytes=1, lora_params=(4,), head_params=1,
        saved_bytes=(10,), saved_bytes_bottom=(10,), quant_ratio={8: 0.3},
        head_saved_bytes=0, f=0.1, g=0.1, o=0.0, c=0.0,
    )  # fmt: skip
    capacity = CapacityEstimator(gamma=0.5)
    capacity.observe(Report(3, DeviceConfig(1), 0.4, 2e6, 15e6), profile)
    for r in (1, 2):
        state = {"a": torch.full((2, 3), float(r)), "b": torch.arange(4.0)}
        save_checkpoint(tmp_path, Checkpoint(r, state, VirtualClock(now=10.0 * r), capacity, 1.5))
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.clock.now == 20.0 and loaded.host_seconds == 1.5
    assert torch.equal(loaded.state["a"], torch.full((2, 3), 2.0))
    assert loaded.capacity.to_dict() == capacity.to_dict()
    assert [p.name for p in tmp_path.glob("state-*")] == ["state-000002.safetensors"]


def test_a_run_killed_mid_round_resumes_to_the_same_metrics(tmp_path):
    whole = fedquad.run(load_config(None, [*RUN, f"output_dir={tmp_path / 'whole'}"]))
    out = tmp_path / "killed"
    sets = [x for item in [*RUN, f"output_dir={out}", "run_name='k'"] for x in ("--set", item)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedquad.cli", "run", "--quiet", *sets],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "k" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        # kill as soon as round 2 is recorded: the process is then inside round 3 (or between
        # the record and its checkpoint); either way the resumed run must end the same
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "k" / "checkpoint").round in (1, 2)
    assert main(["run", "--resume", str(out / "k"), "--quiet"]) == 0
    resumed = read_metrics(out / "k")
    assert [m["round"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole.metrics, resumed, strict=True):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["round"], key)
    # resuming a finished run changes nothing
    assert main(["run", "--resume", str(out / "k"), "--quiet"]) == 0
    assert [m["test_accuracy"] for m in read_metrics(out / "k")] == [
        m["test_accuracy"] for m in whole.metrics
    ]


def test_resume_needs_a_run_with_a_checkpoint(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text("")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint") and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra", [["--config", "x.toml"], ["--set", "seed=1"]])
def test_resume_refuses_config_changes(tmp_path, capsys, extra):
    assert main(["run", "--resume", str(tmp_path), *extra]) == 2
    assert "--resume takes no --config" in capsys.readouterr().err
