"""Capacity estimation of docs/methods.md §3: plan each round from what devices measured before.

After a round every trained device reports its measured step time, transfer rates and (when
metered) saved bytes. The server keeps, per device, an exponential moving average

    estimate <- γ·estimate + (1 - γ)·observation

where ``γ`` (default 0.7) is the weight of history: ``γ = 0`` follows the last report only. A
device's first report sets its estimate to that observation rather than blending it with the
declared profile: the declared numbers are a guess, the report is a measurement. Until a device
has reported, the server plans from its declared profile.

A device that ran out of memory sets its ``memory_ceiling``: the predicted memory of the config
that failed (the smallest, over every such failure). The server plans it only configs predicted
to need less from then on; the ceiling is not averaged and is checkpointed with the rest.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fedquad.cost.fleet import Device
from fedquad.cost.model import CostProfile, StepComposition, saved_bytes, step_seconds
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError

_FIELDS = ("slowdown", "uplink", "downlink", "memory_factor", "memory_ceiling")
"""Per-device estimates; the first three replace the declared :class:`Device` fields."""


@dataclass(frozen=True)
class Report:
    """What a device tells the server after a round."""

    device: int
    config: DeviceConfig
    step_seconds: float
    """Measured seconds per local step of ``config``."""
    uplink: float
    """Bytes/s it observed sending its update."""
    downlink: float
    """Bytes/s it observed receiving the global model."""
    saved_bytes: int | None = None
    """Measured bytes saved for backward in one step (blocks and head); None if not metered."""

    def __post_init__(self) -> None:
        where = f"report of device {self.device}"
        _positive(f"{where} step_seconds", self.step_seconds)
        _positive(f"{where} uplink", self.uplink)
        _positive(f"{where} downlink", self.downlink)
        if self.saved_bytes is not None:
            value = self.saved_bytes
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FedquadError(
                    f"{where} saved_bytes = {value!r} is not allowed: use a whole number > 0"
                )


class CapacityEstimator:
    """Per-device moving averages of slowdown, bandwidths and memory factor."""

    def __init__(self, gamma: float = 0.7) -> None:
        _check_gamma(gamma)
        self.gamma = gamma
        self._estimates: dict[int, dict[str, float]] = {}
        self.failure_rate = 0.0
        """Moving average of the share of a round's planned devices whose update was not
        aggregated (crashed, late, rejected): what over-selection makes up for."""

    def observe(
        self, report: Report, profile: CostProfile, composition: StepComposition | None = None
    ) -> None:
        """Blend one report into its device's estimates (``composition``: its tier's, against
        which its step time is a slowdown)."""
        observed = _observations(report, profile, composition)  # a bad report leaves no trace
        state = self._estimates.setdefault(report.device, {})
        for name, value in observed.items():
            state[name] = _blend(state.get(name), value, self.gamma)

    def estimate(self, declared: Device) -> Device:
        """``declared`` with slowdown and bandwidths replaced where the device has reported."""
        state = self._estimates.get(declared.id, {})
        return dataclasses.replace(
            declared,
            slowdown=state.get("slowdown", declared.slowdown),
            uplink=state.get("uplink", declared.uplink),
            downlink=state.get("downlink", declared.downlink),
        )

    def observe_out_of_memory(self, device: int, memory_bytes: float) -> None:
        """``device`` ran out of memory on a config predicted to need ``memory_bytes``."""
        _positive(f"out-of-memory report of device {device} memory_bytes", memory_bytes)
        state = self._estimates.setdefault(device, {})
        state["memory_ceiling"] = min(state.get("memory_ceiling", math.inf), float(memory_bytes))

    def memory_ceiling(self, device: int) -> float | None:
        """Predicted bytes of the cheapest config the device ran out of memory on; None if none."""
        return self._estimates.get(device, {}).get("memory_ceiling")

    def observe_round(self, planned: int, aggregated: int) -> None:
        """A round planned ``planned`` devices and aggregated ``aggregated`` of their updates."""
        if planned > 0:
            failed = (planned - aggregated) / planned
            self.failure_rate = self.gamma * self.failure_rate + (1 - self.gamma) * failed

    def memory_factor(self, device: int) -> float:
        """Measured / predicted saved bytes; 1.0 until the device reports a measurement."""
        return self._estimates.get(device, {}).get("memory_factor", 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (device ids become string keys)."""
        devices = {str(i): dict(self._estimates[i]) for i in sorted(self._estimates)}
        return {"gamma": self.gamma, "failure_rate": self.failure_rate, "devices": devices}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapacityEstimator:
        unknown = sorted(set(data) - {"gamma", "failure_rate", "devices"})
        if unknown:
            raise FedquadError(
                f"capacity estimator has unknown field {unknown[0]!r}: "
                "known are devices, failure_rate, gamma"
            )
        estimator = cls(gamma=data.get("gamma", 0.7))
        rate = data.get("failure_rate", 0.0)
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise FedquadError(f"capacity estimator failure_rate = {rate!r}: use 0 to 1")
        estimator.failure_rate = float(rate)
        for key, state in data.get("devices", {}).items():
            estimator._estimates[_device_id(key)] = _state_from_dict(key, state)
        return estimator


# --------------------------------------------------------------------------- helpers


def _observations(
    report: Report, profile: CostProfile, composition: StepComposition | None = None
) -> dict[str, float]:
    """One report as ratios to the host profile (slowdown, memory factor) and raw rates."""
    predicted = step_seconds(profile, report.config, 1.0, composition)
    if predicted <= 0:
        raise FedquadError(
            f"cost profile predicts {predicted} s per step for {report.config}: "
            "a measured step time needs a positive prediction"
        )
    values = {
        "slowdown": report.step_seconds / predicted,
        "uplink": report.uplink,
        "downlink": report.downlink,
    }
    if report.saved_bytes is not None:
        expected = saved_bytes(profile, report.config)
        if expected <= 0:
            raise FedquadError(
                f"cost profile predicts {expected} saved bytes for {report.config}: "
                "a measured memory factor needs a positive prediction"
            )
        values["memory_factor"] = report.saved_bytes / expected
    return values


def _blend(previous: float | None, observation: float, gamma: float) -> float:
    # The first observation replaces the declared value instead of averaging with it.
    if previous is None:
        return observation
    return gamma * previous + (1 - gamma) * observation


def _check_gamma(gamma: Any) -> None:
    ok = isinstance(gamma, int | float) and not isinstance(gamma, bool)
    if not ok or not 0 <= gamma < 1:  # NaN fails the comparison too
        raise FedquadError(
            f"capacity estimator gamma = {gamma!r} is not allowed: use 0 <= gamma < 1"
        )


def _positive(key: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise FedquadError(f"{key} = {value!r} is not allowed: use a number > 0")


def _device_id(key: Any) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise FedquadError(
            f"capacity estimator device {key!r} is not allowed: use a whole-number id"
        ) from None


def _state_from_dict(key: Any, state: Any) -> dict[str, float]:
    if not isinstance(state, dict):
        raise FedquadError(
            f"capacity estimator device {key!r} = {state!r}: use a table of {', '.join(_FIELDS)}"
        )
    for name, value in state.items():
        if name not in _FIELDS:
            raise FedquadError(
                f"capacity estimator device {key!r} has unknown field {name!r}: "
                f"known are {', '.join(_FIELDS)}"
            )
        _positive(f"capacity estimator device {key!r} {name}", value)
    return {name: float(value) for name, value in state.items()}
