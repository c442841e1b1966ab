"""The flower-sim executor: the same rounds on Flower's Simulation Engine as on the local one."""

from __future__ import annotations

import contextlib
import dataclasses
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is first imported

import psutil
import pytest
import torch

import fedquad
from fedquad.config import load_config
from fedquad.device_config import DeviceConfig
from fedquad.engines.flower_app import (
    instruction_content,
    instruction_from,
    reply_content,
    reply_from,
)
from fedquad.server.messages import TrainInstruction, TrainReply
from helpers import SMALL_RUN

TOLERANCE = 1e-6
"""Measured: the two engines give the same curves bit for bit (the seeds flow alike and the
client code is the same); the tolerance only absorbs float reassociation on other hosts."""


def _curves(metrics):
    keys = ("test_accuracy", "test_loss", "train_loss")
    return [[m[k] for k in keys if k in m] for m in metrics]


def _per_device(metrics, key):
    return [{d["device"]: d[key] for d in m["devices"]} for m in metrics]


def _started_here(flwr_home: str) -> list[int]:
    """Processes other than this one running with this test's FLWR_HOME: Ray's, which inherit
    the environment (its actors are re-parented once Ray's head stops, so not our children)."""
    pids = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            ours = process.environ().get("FLWR_HOME") == flwr_home
            if ours and process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
                pids.append(process.pid)
    return pids


def _local_and_sim(settings, tmp_path, monkeypatch):
    """The same run on the local executor and on flower-sim: (local metrics, sim metrics)."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    results = {}
    for engine in ("local", "flower-sim"):
        config = load_config(
            None, [*settings, f"engine='{engine}'", f"output_dir={tmp_path}", f"run_name={engine}"]
        )
        results[engine] = fedquad.run(config).metrics
    return results["local"], results["flower-sim"]


@pytest.mark.slow  # the fast flower-sim check: the faults test beside the local executor
@pytest.mark.integration
def test_flower_sim_gives_the_local_curves(tmp_path, monkeypatch):
    local, sim = _local_and_sim(SMALL_RUN, tmp_path, monkeypatch)

    assert [m["round"] for m in sim] == [1, 2]
    assert [m["sampled"] for m in sim] == [m["sampled"] for m in local]
    for a, b in zip(_curves(sim), _curves(local), strict=True):
        assert a == pytest.approx(b, rel=0, abs=TOLERANCE)
    for a, b in zip(_per_device(sim, "loss"), _per_device(local, "loss"), strict=True):
        assert a == pytest.approx(b, rel=0, abs=TOLERANCE)
    for key in ("bytes_up", "bytes_down", "num_samples", "peak_saved_bytes"):
        assert _per_device(sim, key) == _per_device(local, key)
    assert _per_device(sim, "saved_bytes_per_block") == _per_device(local, "saved_bytes_per_block")

    # Ray is shut down and every process the simulation started has exited, orphaned or not
    import ray

    assert not ray.is_initialized()
    assert not _started_here(str(tmp_path / "flwr"))


def test_messages_carry_instructions_and_replies_unchanged():
    g = torch.Generator().manual_seed(0)
    tensors = {"a.lora_A.weight": torch.randn(4, 3, generator=g), "head.bias": torch.zeros(2)}
    config = DeviceConfig(depth=3, quantized=1, bits=4, rank=2, blocks=(3, 5))
    ins = TrainInstruction(device_id=7, round=2, config=config, tensors=tensors, seed=2**32 - 1)
    back = instruction_from(instruction_content(ins))
    assert dataclasses.replace(back, tensors={}) == dataclasses.replace(ins, tensors={})
    assert back.tensors.keys() == tensors.keys()
    assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items())

    measurements = {
        "loss": 0.5,
        "step_seconds": [0.1, 0.2],
        "median_step_seconds": 0.15,
        "peak_saved_bytes": 123,
        "saved_bytes": {"per_block": {"-1": 3, "4": 120}, "total": 123},
        "note": "cpu",
    }
    reply = TrainReply(device_id=7, tensors=tensors, num_samples=60, measurements=measurements)
    got = reply_from(reply_content(reply))
    assert dataclasses.replace(got, tensors={}) == dataclasses.replace(reply, tensors={})
    assert all(torch.equal(got.tensors[k], v) for k, v in tensors.items())


FAULTY = [  # test_faults' run, smaller: 2 rounds of all 6 devices; seed 0 draws every kind
    "method='fedquad'",
    "data.max_train_samples=240",
    "data.max_test_samples=64",
    "data.partition='iid'",
    "model.max_length=32",
    "federation.rounds=2",
    "federation.num_devices=6",
    "federation.devices_per_round=6",
    "federation.norm_bound=0",
    "fleet.name='uniform'",
    "train.local_steps=1",
    "train.batch_size=8",
    "profile.timed_steps=1",
    "faults.crash_probability=0.2",
    "faults.delay_probability=0.2",
    "faults.corrupt_probability=0.2",
    "faults.delay_factor=50.0",  # late whatever share of the round compute has on this host
]


@pytest.mark.integration
def test_injected_faults_are_accounted_for_on_flower_sim_as_on_local(tmp_path, monkeypatch):
    """Crashed, late and corrupted devices travel through Flower's messages: the simulation
    leaves out the same devices, for the same reasons, as the local executor."""
    from fedquad.server.faults import CORRUPT, CRASH, DELAY, fault_of

    local, sim = _local_and_sim(FAULTY, tmp_path, monkeypatch)

    faults = load_config(None, FAULTY).faults
    kinds = set()
    for m, n in zip(sim, local, strict=True):
        for key in ("sampled", "dropped", "rejected", "sat_out", "virtual_seconds"):
            assert m[key] == n[key], (m["round"], key)
        assert [d["device"] for d in m["devices"]] == [d["device"] for d in n["devices"]]
        for device in m["sampled"]:
            kind = fault_of(faults, 0, m["round"], device)
            kinds.add(kind)
            if kind == CRASH:
                assert "crashed" in m["dropped"][str(device)]
            elif kind == DELAY:
                assert "missed the deadline" in m["dropped"][str(device)]
            elif kind == CORRUPT:
                assert "NaN" in m["rejected"][str(device)]
    assert {CRASH, DELAY, CORRUPT, None} <= kinds
    for a, b in zip(_curves(sim), _curves(local), strict=True):
        assert a == pytest.approx(b, rel=0, abs=TOLERANCE)
    assert not _started_here(str(tmp_path / "flwr"))
