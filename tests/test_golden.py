"""Behaviour held fixed across refactors: short fixed-seed runs on a given cost profile whose
``metrics.jsonl``, host-time fields removed, must stay byte-identical to the recorded files.

Byte-identical holds on the CPU model, instruction sets and torch version the files were
recorded on (``recorded_on.json``): another CPU's kernels round float sums differently in the last
bits. There every plan, byte count, virtual time and accuracy must still be equal, and the losses
equal to a relative 1e-5 (a behaviour change moves them by far more).

A change that is meant to alter results re-records them (``python tests/test_golden.py``) in a
commit that says why.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fedquad
import fedquad.api
from fedquad.config import load_config
from fedquad.cost.model import CostProfile
from fedquad.cost.profiler import StepTiming
from fedquad.cost.timing import TimingSource
from fedquad.report.provenance import cpu_isa, cpu_model
from fedquad.report.results import read_metrics

pytestmark = pytest.mark.integration  # every test here loads a model

GOLDEN = Path(__file__).parent / "golden"
METHODS = ("fedquad", "legend", "hetlora")
SHORT = [
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "model.max_length=32",
    "federation.rounds=3",
    "federation.num_devices=6",
    "federation.devices_per_round=3",
    "train.local_steps=2",
    "train.batch_size=8",
    "seed=0",
]
HOST_FIELDS = ("host_seconds", "host_seconds_total", "median_step_seconds")
RECORDED_ON = GOLDEN / "recorded_on.json"
LOSS_TOLERANCE = 1e-5


def this_host() -> dict[str, object]:
    """What decides the rounding: a model name alone does not (one name spans CPU generations)."""
    return {"cpu": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__}


def differences(recorded: object, now: object, path: str = "") -> list[str]:
    """Where two parsed metrics differ: exactly, except float losses within LOSS_TOLERANCE."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        if recorded.keys() != now.keys():
            return [f"{path}: keys {sorted(recorded)} != {sorted(now)}"]
        return [d for k in recorded for d in differences(recorded[k], now[k], f"{path}.{k}")]
    if isinstance(recorded, list) and isinstance(now, list):
        if len(recorded) != len(now):
            return [f"{path}: {len(recorded)} items != {len(now)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(recorded, now, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    is_loss = path.endswith("loss") and isinstance(recorded, float) and isinstance(now, float)
    if is_loss and math.isclose(recorded, now, rel_tol=LOSS_TOLERANCE):
        return []
    return (
        []
        if recorded == now and type(recorded) is type(now)
        else [f"{path}: {recorded!r} != {now!r}"]
    )


def without_host_fields(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in HOST_FIELDS}
    out["devices"] = [
        {k: v for k, v in d.items() if k not in HOST_FIELDS} for d in record["devices"]
    ]
    return out


def golden_lines(method: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The run's metrics without host fields, one JSON line per round, on the recorded profile."""
    profile = CostProfile.from_dict(json.loads((GOLDEN / f"{method}.profile.json").read_text()))
    timing = TimingSource("recorded", StepTiming.of(profile), key={})
    monkeypatch.setattr(
        fedquad.api,
        "workload_profile",
        lambda bench: SimpleNamespace(profile=profile, timing=timing),
    )
    config = load_config(None, [f"method='{method}'", *SHORT, f"output_dir={out}", "run_name=g"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every reduction splits its work the same way
    try:
        result = fedquad.run(config)
    finally:
        torch.set_num_threads(threads)
    return "".join(
        json.dumps(without_host_fields(m), sort_keys=True) + "\n"
        for m in read_metrics(result.run_dir)
    )


@pytest.mark.parametrize("method", METHODS)
def test_metrics_match_the_recorded_run(method, tmp_path, monkeypatch):
    now, recorded = (
        golden_lines(method, tmp_path, monkeypatch),
        (GOLDEN / f"{method}.jsonl").read_text(),
    )
    if json.loads(RECORDED_ON.read_text()) == this_host():
        assert now == recorded
    else:
        parsed = [json.loads(line) for line in now.splitlines()]
        assert differences([json.loads(line) for line in recorded.splitlines()], parsed) == []


def test_differences_allow_only_rounding_in_losses():
    run = {"round": 1, "accuracy": 0.5, "train_loss": 0.6806647322309298, "devices": [{"depth": 2}]}
    assert differences(run, {**run, "train_loss": 0.6806647411481602}) == []
    assert differences(run, {**run, "train_loss": 0.6807}) != []
    assert differences(run, {**run, "accuracy": 0.5000001}) != []
    assert differences(run, {**run, "devices": [{"depth": 3}]}) == [".devices[0].depth: 2 != 3"]
    assert differences(run, {**run, "round": 1.0}) != []


def test_a_host_is_named_by_its_kernel_instruction_sets_too():
    zen2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"
    zen4 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16\n"
    assert cpu_isa(zen2) == ["avx2", "fma"]
    assert cpu_isa(zen4) == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert cpu_isa("no flags here") == []
    assert this_host()["isa"] == cpu_isa()  # so one model name of two generations differs


def _record() -> None:
    """Re-record every golden file (and the profile it runs on, if missing)."""
    import tempfile

    from fedquad.workbench import build_workbench, workload_profile

    for method in METHODS:
        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
            profile_path = GOLDEN / f"{method}.profile.json"
            if not profile_path.exists():
                config = load_config(None, [f"method='{method}'", *SHORT, "profile.timed_steps=1"])
                profile = workload_profile(build_workbench(config)).profile
                profile_path.write_text(json.dumps(profile.to_dict(), indent=1, sort_keys=True))
            (GOLDEN / f"{method}.jsonl").write_text(golden_lines(method, Path(tmp), mp))
            print(f"recorded {method}", file=sys.stderr)
    RECORDED_ON.write_text(json.dumps(this_host(), indent=1) + "\n")


if __name__ == "__main__":
    _record()
