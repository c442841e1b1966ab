"""Pinned time terms (docs/methods.md §6): reference timing files, their keys and their measurement.

A timing file holds a workload's time terms ``f, g, o, c`` (docs/methods.md §3) under a key that
names the workload without anything of the host (threads, CPU, library versions) and without the
fields the step time does not depend on (ranks, LoRA scale, timed steps), but with the precision,
the device type and the thread count it was measured at. Provenance (who, where, the load) sits
beside the key and never decides a match. The package ships one file per built-in workload
(``fedquad/timing/*.json``); a run uses the one of its workload unless told to measure, so its
virtual clock does not depend on the machine or its load.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedquad.config import QuantConfig, TrainConfig
from fedquad.cost.model import CostProfile
from fedquad.cost.profiler import (
    TIMING_VERSION,
    StepTiming,
    _block_forward_timer,
    _fit_timing,
    _one_step,
    _take,
)
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError, warn
from fedquad.models.lora import LoraStructure, get_state, load_state
from fedquad.models.registry import ModelParts
from fedquad.train.local import train_local

TIMING_DIR_ENV = "FEDQUAD_TIMING_DIR"
"""Overrides the folder reference timings are looked up in (the package's ``timing/``)."""

REFERENCE_THREADS = 1
"""Reference time terms are measured single-threaded, as every device trains."""

MAX_LOAD = 0.3
"""Above this load average a reference is not exported unless forced."""

NOT_IN_KEY = (
    # the host
    "torch",
    "threads",
    "machine",
    "processor",
    "cpus",
    # fields a step's time does not depend on
    "ranks",
    "lora_alpha",
    "lora_scale",
    "timed_steps",
    "profiled_bits",
    # the bytes cache's own fields
    "timing",
    "timing_hash",
)
"""Workload-key fields a reference timing key leaves out."""

SOURCES = ("reference", "measure")


@dataclasses.dataclass(frozen=True)
class TimingSource:
    """The time terms a run uses, with what they are for and where they came from."""

    kind: str
    """``reference`` (shipped with the package), ``measure`` (this host), ``file`` (a path)."""
    timing: StepTiming
    key: dict[str, Any]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: str | None = None
    """The file it was read from, if any."""

    @property
    def hash(self) -> str:
        """Of the key and the time terms: equal hashes, equal clocks."""
        body = json.dumps(
            {"key": self.key, "timing": self.timing.to_dict()}, sort_keys=True, default=str
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.kind,  # what it was to the run that wrote it; not read back
            "key": self.key,
            "timing": self.timing.to_dict(),
            "provenance": self.provenance,
        }

    def describe(self) -> dict[str, Any]:
        """What a summary records of it."""
        return {"source": self.kind, "file": self.origin, "hash": self.hash}


def reference_key(fields: dict[str, Any], precision: str, device: str, threads: int) -> dict:
    """The key of a workload's reference timing (see the module's docstring)."""
    key = {k: v for k, v in fields.items() if k not in NOT_IN_KEY}
    return {
        **key,
        "precision": precision,
        "device": device,
        "measure_threads": threads,
        "profile_version": TIMING_VERSION,  # the time terms' version, under its first name
    }


def reference_dir(folder: str | Path | None = None) -> Path:
    """The folder of reference timings: ``folder``, else ``$FEDQUAD_TIMING_DIR``, else the
    package's own."""
    if folder is not None:
        return Path(folder)
    env = os.environ.get(TIMING_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "timing"


def read_timing(path: str | Path, kind: str = "file") -> TimingSource:
    """A timing file; every problem is a one-line :class:`FedquadError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return TimingSource(
            kind=kind,
            timing=StepTiming.from_dict(data["timing"]),
            key=dict(data["key"]),
            provenance=dict(data.get("provenance", {})),
            origin=str(path),
        )
    except FileNotFoundError:
        raise FedquadError(
            f"timing file {str(path)!r} does not exist: give a file written by "
            "`fedquad profile --export`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FedquadError(
            f"timing file {str(path)!r} is not a timing file ({type(exc).__name__}: {exc}): "
            "write one with `fedquad profile --export`"
        ) from None


def write_timing(path: str | Path, source: TimingSource) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(source.to_dict(), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def find_reference(key: dict[str, Any], folder: str | Path | None = None) -> TimingSource | None:
    """The reference timing stored for exactly ``key``, or None."""
    canonical = _canonical(key)
    for path in sorted(reference_dir(folder).glob("*.json")):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stored, dict) and _canonical(stored.get("key")) == canonical:
            return read_timing(path, kind="reference")
    return None


def resolve_timing(
    option: str, key: dict[str, Any], folder: str | Path | None = None
) -> TimingSource | None:
    """The time terms ``profile.timing = option`` asks for; None: measure them on this host."""
    if option == "measure":
        return None
    if option == "reference":
        found = find_reference(key, folder)
        if found is None:
            warn(
                "no reference time terms ship for this workload: measuring them on this host, "
                "so the virtual clock depends on its load (profile.timing = 'reference'; set "
                "profile.timing = 'measure' to silence this, or give a file of "
                "`fedquad profile --export`)"
            )
        return found
    source = read_timing(option)
    check_key(source, key)
    return source


def check_key(source: TimingSource, key: dict[str, Any]) -> None:
    """A timing file must be for this workload: the first field that differs is named. The
    thread count it was measured at is the file's own business (a run's ``timing.json`` of
    ``profile.timing = "measure"`` is a valid file)."""
    have, want = json.loads(_canonical(source.key)), json.loads(_canonical(key))
    for name in sorted((set(have) | set(want)) - {"measure_threads"}):
        if have.get(name) != want.get(name):
            raise FedquadError(
                f"timing file {source.origin!r} is for another workload: its {name} is "
                f"{have.get(name)!r}, this run's is {want.get(name)!r}"
            )


def with_timing(profile: CostProfile, timing: StepTiming) -> CostProfile:
    """``profile`` with ``timing``'s time terms (its bytes unchanged)."""
    extra = {**profile.extra, "timed": [list(t) for t in timing.timed]}
    return dataclasses.replace(profile, f=timing.f, g=timing.g, o=timing.o, c=timing.c, extra=extra)


def host_provenance() -> dict[str, Any]:
    """Where a timing was measured (not part of any key)."""
    from fedquad.report.provenance import cpu_model, library_version

    return {
        "fedquad": library_version("fedquad"),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def measured_source(timing: StepTiming, key: dict[str, Any]) -> TimingSource:
    """The time terms measured on this host for a run (``profile.timing = "measure"``)."""
    key = {**key, "measure_threads": torch.get_num_threads()}
    return TimingSource("measure", timing, key, {**host_provenance(), "method": "profile"})


# --------------------------------------------------------------------------- measurement


def measure_reference(
    model: nn.Module,
    parts: ModelParts,
    structure: LoraStructure,
    batch: dict[str, torch.Tensor],
    train: TrainConfig,
    quant: QuantConfig,
    repeats: int = 8,
) -> StepTiming:
    """Time terms by the reference method: the points ``(1,0), (⌈D/2⌉,0), (D,0), (D,D)``
    visited round-robin ``repeats`` times (so a slow moment hits every point alike), the
    fastest step of each, at :data:`REFERENCE_THREADS` thread, on ``batch`` (padded to the
    sequence length: the profiler's batches are never trimmed). Model state and the global
    RNG are restored afterwards."""
    if repeats < 1:
        raise FedquadError(f"repeats = {repeats} is not allowed: use >= 1")
    top, num_blocks = structure.depth, structure.num_blocks
    points = sorted({(1, 0), ((top + 1) // 2, 0), (top, 0), (top, top)})
    batch = _take(batch, train.batch_size)
    if hasattr(train, "trim_batches"):  # padded batches: the time must not depend on the data
        replace: Any = dataclasses.replace  # the field is newer than some configs
        train = replace(train, trim_batches=False)
    steps = _one_step(train, 2)  # the first step of a call warms up
    best = {p: float("inf") for p in points}
    forward = float("inf")
    threads, before, rng = torch.get_num_threads(), get_state(model), torch.get_rng_state()
    torch.set_num_threads(REFERENCE_THREADS)
    try:
        for visit in range(repeats + 1):
            for depth, q in points:
                config = DeviceConfig(depth=depth, quantized=q, bits=quant.bits)
                frozen = num_blocks - depth if depth == 1 else 0
                with _block_forward_timer(parts.blocks, frozen) as block_seconds:
                    result = train_local(model, parts, structure, batch, config, steps, 0, quant)
                if visit == 0:
                    continue  # a warm-up visit of every point
                best[(depth, q)] = min(best[(depth, q)], result.step_seconds[1])
                if frozen:
                    forward = min(forward, sum(block_seconds[frozen:]) / frozen)
    finally:
        torch.set_num_threads(threads)
        load_state(model, before)
        torch.set_rng_state(rng)
    times = [(d, q, best[(d, q)]) for d, q in points]
    return _fit_timing(times, forward if forward < float("inf") else None, num_blocks)


def load_average() -> float:
    """The one-minute load average (0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def check_load(load: float, force: bool, limit: float = MAX_LOAD, own: float = 0.0) -> None:
    """Refuse a reference measured beside other work (``own``: the measurement's own share)."""
    if load - own > limit and not force:
        raise FedquadError(
            f"load average {load:.2f} is above {limit + own:.2f}: reference timings are measured "
            "on an idle machine (stop other work, or pass --force)"
        )


def _canonical(key: Any) -> str:
    return json.dumps(key, sort_keys=True, default=str)
