"""Server checkpoints: everything the round loop needs to continue as if never stopped.

A checkpoint holds the global LoRA and head (safetensors), the last finished round, the virtual
clock and the capacity estimates. The metrics of finished rounds are already in the run's
``metrics.jsonl``; the per-round randomness (sampling, bandwidth, planning, training seeds,
dropout) is derived from ``(seed, round, device)``, so no generator state has to be stored.

Files are written to a temporary name and renamed; the pointer ``latest.json`` is written last,
so a process killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from fedquad.errors import FedquadError
from fedquad.models.lora import State
from fedquad.report.results import give_run_mode
from fedquad.server.capacity import CapacityEstimator
from fedquad.server.clock import VirtualClock

POINTER = "latest.json"


@dataclass
class Checkpoint:
    round: int
    """The last round whose results the checkpoint holds."""
    state: State
    clock: VirtualClock
    capacity: CapacityEstimator
    host_seconds: float
    """Host seconds spent in rounds up to ``round``."""


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = f"state-{checkpoint.round:06d}.safetensors"
    tmp = directory / f".{tensors}.tmp"
    save_file({k: v.contiguous() for k, v in checkpoint.state.items()}, str(tmp))
    give_run_mode(tmp)
    _sync(tmp)
    os.replace(tmp, directory / tensors)
    _write_json(
        directory / POINTER,
        {
            "round": checkpoint.round,
            "tensors": tensors,
            "clock": checkpoint.clock.to_dict(),
            "capacity": checkpoint.capacity.to_dict(),
            "host_seconds": checkpoint.host_seconds,
        },
    )
    for old in directory.glob("state-*.safetensors"):  # only the pointer's file is needed now
        if old.name != tensors:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> Checkpoint:
    pointer = directory / POINTER
    if not pointer.exists():
        raise FedquadError(
            f"no checkpoint in {str(directory)!r}: a run writes one after its first round "
            "(federation.checkpoint_every)"
        )
    try:
        data = json.loads(pointer.read_text())
        state = load_file(str(directory / data["tensors"]))
        return Checkpoint(
            round=int(data["round"]),
            state=state,
            clock=VirtualClock.from_dict(data["clock"]),
            capacity=CapacityEstimator.from_dict(data["capacity"]),
            host_seconds=float(data["host_seconds"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedquadError(f"checkpoint in {str(directory)!r} cannot be read: {exc}") from None


def has_checkpoint(directory: Path) -> bool:
    return (directory / POINTER).exists()


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
