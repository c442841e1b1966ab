"""The virtual clock of docs/methods.md §6: each synchronous round adds ``T^h = max_i T_i``.

Times come from the cost model (§3) and each device's slowdown and bandwidths, never from the
host's wall clock. Torch-free, like the cost package it builds on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedquad.cost.model import (
    CostProfile,
    LinkProfile,
    RoundTime,
    download_bytes,
    round_time,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError


@dataclass(frozen=True)
class DeviceTime:
    """One device's round on the virtual clock, in seconds and bytes."""

    device: int
    compute: float
    """``τ·t_i(d, q)``."""
    download: float
    upload: float
    total: float
    """``T_i = compute + download + upload``."""
    waiting: float
    """``T^h - T_i``: idle time until the slowest device of the round finishes."""
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class RoundTiming:
    """A whole synchronous round."""

    seconds: float
    """``T^h = max_i T_i``; 0.0 when no device trained."""
    devices: dict[int, DeviceTime]
    straggler: int | None
    """Id of the device with the largest ``T_i`` (lowest id on a tie); None when none trained."""
    late: tuple[int, ...] = ()
    """Devices still busy at the round's deadline: the server stopped waiting for them."""


def time_round(
    profile: CostProfile,
    configs: Mapping[int, DeviceConfig],
    devices: Mapping[int, LinkProfile],
    local_steps: int,
    deadline: float | None = None,
    delays: Mapping[int, float] | None = None,
    failed_compute: Mapping[int, float] | None = None,
) -> RoundTiming:
    """Time one round: every device in ``configs`` trains its config on its link in ``devices``.

    ``delays`` multiply a device's compute time (a straggling device); ``failed_compute`` adds
    the seconds a device spent on a failed attempt before training its config (an out-of-memory
    retry). With a ``deadline`` the round ends at the deadline if some device is still busy
    then; those devices are ``late``.
    """
    if local_steps < 1:
        raise FedquadError(f"local_steps = {local_steps} is not allowed: use >= 1")
    missing = sorted(set(configs) - set(devices))
    if missing:
        raise FedquadError(
            f"device {missing[0]} has a config but no device profile: give one for every device"
        )
    times = {i: round_time(profile, configs[i], devices[i], local_steps) for i in sorted(configs)}
    for i, factor in (delays or {}).items():
        if i in times:
            t = times[i]
            compute = t.compute * factor
            times[i] = RoundTime(compute, t.download, t.upload, compute + t.download + t.upload)
    for i, seconds in (failed_compute or {}).items():
        if i in times:
            t = times[i]
            compute = t.compute + seconds
            times[i] = RoundTime(compute, t.download, t.upload, compute + t.download + t.upload)
    if not times:
        return RoundTiming(seconds=0.0, devices={}, straggler=None)
    # max() keeps the first of equal totals: ties go to the lowest id.
    straggler = max(times, key=lambda i: times[i].total)
    seconds = times[straggler].total
    late: tuple[int, ...] = ()
    if deadline is not None and seconds > deadline:
        late = tuple(i for i, t in times.items() if t.total > deadline)
        seconds = deadline
    timed = {
        i: DeviceTime(
            device=i,
            compute=t.compute,
            download=t.download,
            upload=t.upload,
            total=t.total,
            waiting=max(0.0, seconds - t.total),
            bytes_down=download_bytes(profile, configs[i]),
            bytes_up=upload_bytes(profile, configs[i]),
        )
        for i, t in times.items()
    }
    return RoundTiming(seconds=seconds, devices=timed, straggler=straggler, late=late)


@dataclass
class VirtualClock:
    """Simulated seconds since the first round; checkpointed with the run."""

    now: float = 0.0

    def __post_init__(self) -> None:
        _check_now(self.now)

    def advance(self, timing: RoundTiming) -> float:
        """Move past one synchronous round and return the new time."""
        self.now += timing.seconds
        return self.now

    def to_dict(self) -> dict[str, Any]:
        return {"now": self.now}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VirtualClock:
        unknown = sorted(set(data) - {"now"})
        if unknown:
            raise FedquadError(f"virtual clock has unknown field {unknown[0]!r}: known is 'now'")
        return cls(now=data.get("now", 0.0))


def _check_now(now: Any) -> None:
    ok = isinstance(now, int | float) and not isinstance(now, bool)
    if not ok or not math.isfinite(now) or now < 0:
        raise FedquadError(f"virtual clock now = {now!r} is not allowed: use seconds >= 0")
