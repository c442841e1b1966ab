"""The simulated fleet of docs/methods.md §6: tiers from a TOML file, devices, bandwidths per round.

Units in the fleet file: bandwidths in MB/s (10^6 bytes per second, not megabits), absolute
memory in MiB (2^20 bytes), fractional memory as a multiple of the workload's full-depth,
unquantized footprint ``M(L, 0)``. A :class:`Device` carries bytes and bytes/s.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedquad.cost.model import COMPOSITIONS, StepComposition
from fedquad.errors import FedquadError, unknown_key

MB = 1_000_000
MIB = 1 << 20


@dataclass(frozen=True)
class Tier:
    """A class of identical boards; each device of the tier draws its own uplink per round."""

    name: str
    count: int
    slowdown: float
    """``σ`` relative to the host, before the fleet's ``base_slowdown``."""
    memory: float | None = None
    """Budget as a fraction of the full footprint ``M(L, 0)``; exclusive with ``memory_mib``."""
    memory_mib: float | None = None
    """Absolute budget in MiB; exclusive with ``memory``."""
    uplink_mbps: tuple[float, float] = (1.0, 3.0)
    """Uplink drawn uniformly in this range (MB/s) per device per round."""
    downlink_mbps: float = 15.0
    """Downlink in MB/s."""
    availability: float = 1.0
    """Probability that a device of the tier is online in a round (drawn per device per round)."""
    composition: StepComposition | None = None
    """The tier's own step composition (docs/methods.md §6); None: the host's mix × σ. In a
    fleet file a built-in name (``"jetson"``) or a table ``{forward, fixed, quant_overhead}``."""

    def budget_bytes(self, full_footprint_bytes: int) -> int:
        if self.memory is not None:
            return int(self.memory * full_footprint_bytes)
        assert self.memory_mib is not None  # checked by _check_tier
        return int(self.memory_mib * MIB)


@dataclass(frozen=True)
class Device:
    """One device as the planner and the virtual clock see it this round."""

    id: int
    tier: str
    slowdown: float
    memory_budget_bytes: int
    uplink: float
    """Bytes/s this round."""
    downlink: float
    """Bytes/s."""
    available: bool = True
    """Online this round; only online devices can be sampled."""
    composition: StepComposition | None = None
    """Its tier's step composition; None: the host's mix."""


@dataclass(frozen=True)
class FleetSpec:
    tiers: tuple[Tier, ...]
    per_round: int = 10
    """Devices sampled uniformly per round (for every method)."""
    base_slowdown: float = 1.0
    """Multiplies every tier's ``slowdown``: the host-to-fastest-board ratio."""

    def __post_init__(self) -> None:
        if not self.tiers:
            raise FedquadError("fleet has no [[tier]] tables: give at least one")
        names = [t.name for t in self.tiers]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise FedquadError(f"fleet tier name {duplicate!r} is repeated: use unique names")
        for tier in self.tiers:
            _check_tier(tier)
        _positive("fleet base_slowdown", self.base_slowdown)
        if not isinstance(self.per_round, int) or not 1 <= self.per_round <= self.num_devices:
            raise FedquadError(
                f"fleet per_round = {self.per_round!r} is not allowed: "
                f"use 1 to the fleet size {self.num_devices}"
            )

    @property
    def num_devices(self) -> int:
        return sum(t.count for t in self.tiers)


def with_composition(spec: FleetSpec, composition: StepComposition) -> FleetSpec:
    """``spec`` with every tier timed by ``composition``."""
    tiers = tuple(dataclasses.replace(t, composition=composition) for t in spec.tiers)
    return dataclasses.replace(spec, tiers=tiers)


def default_fleet() -> FleetSpec:
    """docs/methods.md §6: 30/40/10 small/medium/large boards, speed 1:1.85:2.66, 10 per round."""
    return FleetSpec(
        tiers=(
            Tier(name="small", count=30, slowdown=2.66, memory=0.4),
            Tier(name="medium", count=40, slowdown=1.44, memory=1.2),
            Tier(name="large", count=10, slowdown=1.0, memory=2.0),
        ),
        per_round=10,
        base_slowdown=1.0,
    )


def papers_fleet() -> FleetSpec:
    """docs/methods.md §6: the default's tiers and speeds, memory on the published prototype's
    4 : 6 : 8 ladder (0.75 / 1.15 / 1.5 × ``M(L, 0)``): depth 1 fits every tier, full depth
    only the medium and large ones."""
    tiers = default_fleet().tiers
    memory = {"small": 0.75, "medium": 1.15, "large": 1.5}
    return FleetSpec(
        tiers=tuple(dataclasses.replace(t, memory=memory[t.name]) for t in tiers),
        per_round=10,
        base_slowdown=1.0,
    )


def decorrelated_fleet() -> FleetSpec:
    """docs/methods.md §6: the default's three speed classes, each split in half at 0.5 and
    1.15 × ``M(L, 0)``: memory independent of speed, so a fast device may have little memory."""
    halves = (("lowmem", 0.5), ("highmem", 1.15))
    tiers = []
    for tier in default_fleet().tiers:
        low_count = tier.count // 2
        counts = (low_count, tier.count - low_count)
        for (suffix, memory), count in zip(halves, counts, strict=True):
            name = f"{tier.name}-{suffix}"
            tiers.append(dataclasses.replace(tier, name=name, count=count, memory=memory))
    return FleetSpec(tiers=tuple(tiers), per_round=10, base_slowdown=1.0)


_HOST_CLOCK_FLEETS: dict[str, Callable[[], FleetSpec]] = {
    "default": default_fleet,
    "papers": papers_fleet,
    "decorrelated": decorrelated_fleet,
}


def _on_jetson(make: Callable[[], FleetSpec]) -> Callable[[], FleetSpec]:
    return lambda: with_composition(make(), COMPOSITIONS["jetson"])


TIERED_FLEETS: dict[str, Callable[[], FleetSpec]] = {
    **_HOST_CLOCK_FLEETS,
    **{f"{name}-jetson": _on_jetson(make) for name, make in _HOST_CLOCK_FLEETS.items()},
}
"""The built-in fleets of board tiers, by ``fleet.name``; ``<name>-jetson`` is the same fleet
with every tier timed by the ``jetson`` step composition (docs/methods.md §6, §8: the board
clock beside the host's)."""


# --------------------------------------------------------------------------- validation

_TOP_KEYS = ("base_slowdown", "per_round", "tier")
_TIER_KEYS = tuple(Tier.__dataclass_fields__)


def _positive(key: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if not ok or not math.isfinite(value):
        raise FedquadError(f"{key} = {value!r} is not allowed: use a number > 0")


def _probability(key: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 < value <= 1:  # NaN fails the comparison too
        raise FedquadError(f"{key} = {value!r} is not allowed: use a probability 0 < a <= 1")


def _check_tier(tier: Tier) -> None:
    where = f"fleet tier {tier.name!r}"
    if not isinstance(tier.name, str) or not tier.name:
        raise FedquadError(f"fleet tier name = {tier.name!r} is not allowed: use a non-empty name")
    if not isinstance(tier.count, int) or isinstance(tier.count, bool) or tier.count < 1:
        raise FedquadError(f"{where} count = {tier.count!r} is not allowed: use a whole number > 0")
    _positive(f"{where} slowdown", tier.slowdown)
    if (tier.memory is None) == (tier.memory_mib is None):
        raise FedquadError(
            f"{where} has memory = {tier.memory!r} and memory_mib = {tier.memory_mib!r}: "
            "give exactly one (a fraction of the full footprint, or MiB)"
        )
    if tier.memory is not None:
        _positive(f"{where} memory", tier.memory)
    else:
        _positive(f"{where} memory_mib", tier.memory_mib)
    low_high = tier.uplink_mbps
    if not isinstance(low_high, tuple) or len(low_high) != 2:
        raise FedquadError(f"{where} uplink_mbps = {low_high!r} is not allowed: use [low, high]")
    _positive(f"{where} uplink_mbps low", low_high[0])
    _positive(f"{where} uplink_mbps high", low_high[1])
    if low_high[0] > low_high[1]:
        raise FedquadError(f"{where} uplink_mbps = {list(low_high)}: use low <= high")
    _positive(f"{where} downlink_mbps", tier.downlink_mbps)
    _probability(f"{where} availability", tier.availability)
    if tier.composition is not None and not isinstance(tier.composition, StepComposition):
        raise FedquadError(
            f"{where} composition = {tier.composition!r} is not allowed: use a StepComposition"
        )


def _tier_from_dict(index: int, data: Any) -> Tier:
    if not isinstance(data, dict):
        raise FedquadError(f"fleet tier #{index + 1} = {data!r}: use a [[tier]] table")
    for key in data:
        if key not in _TIER_KEYS:
            raise unknown_key(key, _TIER_KEYS, f"fleet tier #{index + 1}")
    for key in ("name", "count", "slowdown"):
        if key not in data:
            raise FedquadError(f"fleet tier #{index + 1} has no '{key}': it is required")
    values = dict(data)
    if "composition" in values:
        values["composition"] = _composition(data["name"], values["composition"])
    if "uplink_mbps" in values:
        uplink = values["uplink_mbps"]
        if not isinstance(uplink, list) or len(uplink) != 2:
            raise FedquadError(
                f"fleet tier {data['name']!r} uplink_mbps = {uplink!r} is not allowed: "
                "use [low, high] in MB/s"
            )
        values["uplink_mbps"] = tuple(uplink)
    return Tier(**values)


_COMPOSITION_KEYS = ("forward", "fixed", "quant_overhead")


def _composition(tier: Any, value: Any) -> StepComposition:
    if isinstance(value, str):
        if value not in COMPOSITIONS:
            raise FedquadError(
                f"fleet tier {tier!r} composition = {value!r} is not allowed: use one of "
                f"{', '.join(COMPOSITIONS)} or a table {{forward = …, fixed = …}}"
            )
        return COMPOSITIONS[value]
    if not isinstance(value, dict):
        raise FedquadError(
            f"fleet tier {tier!r} composition = {value!r} is not allowed: use a built-in name "
            "or a table {forward = …, fixed = …}"
        )
    for key in value:
        if key not in _COMPOSITION_KEYS:
            raise unknown_key(key, _COMPOSITION_KEYS, f"fleet tier {tier!r} composition")
    if "forward" not in value:
        raise FedquadError(f"fleet tier {tier!r} composition has no 'forward': it is required")
    try:
        return StepComposition(**value, name=None)
    except FedquadError as exc:
        raise FedquadError(f"fleet tier {tier!r}: {exc}") from None


def fleet_from_dict(data: dict[str, Any]) -> FleetSpec:
    """Build and validate a fleet from parsed TOML (``[[tier]]`` tables plus top-level keys)."""
    for key in data:
        if key not in _TOP_KEYS:
            raise unknown_key(key, _TOP_KEYS, "fleet")
    tiers = data.get("tier", [])
    if not isinstance(tiers, list):
        raise FedquadError("fleet 'tier' is not a list of tables: write each as [[tier]]")
    return FleetSpec(
        tiers=tuple(_tier_from_dict(i, t) for i, t in enumerate(tiers)),
        per_round=data.get("per_round", 10),
        base_slowdown=data.get("base_slowdown", 1.0),
    )


def load_fleet(path: str | Path) -> FleetSpec:
    """Read a fleet TOML file; every problem is a one-line :class:`FedquadError`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise FedquadError(f"fleet file {str(path)!r} does not exist: give a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedquadError(f"fleet file {str(path)!r} is not valid TOML: {exc}") from None
    return fleet_from_dict(data)


def fleet_to_toml(spec: FleetSpec) -> str:
    """TOML that :func:`load_fleet` reads back to an equal spec."""
    tiers = []
    for tier in spec.tiers:
        table: dict[str, Any] = {"name": tier.name, "count": tier.count, "slowdown": tier.slowdown}
        # TOML has no null: only the memory field in use is written.
        if tier.memory is not None:
            table["memory"] = tier.memory
        if tier.memory_mib is not None:
            table["memory_mib"] = tier.memory_mib
        table["uplink_mbps"] = list(tier.uplink_mbps)
        table["downlink_mbps"] = tier.downlink_mbps
        table["availability"] = tier.availability
        if tier.composition is not None:
            c = tier.composition
            table["composition"] = c.name or {
                "forward": c.forward,
                "fixed": c.fixed,
                "quant_overhead": c.quant_overhead,
            }
        tiers.append(table)
    doc = {"per_round": spec.per_round, "base_slowdown": spec.base_slowdown, "tier": tiers}
    return tomli_w.dumps(doc)


# --------------------------------------------------------------------------- per round

_BANDWIDTH_STREAM = 1
"""Extra seed word: bandwidth draws must not share a stream with the device sample of a round."""
_AVAILABILITY_STREAM = 2
"""Extra seed word of the online draws: a stream of their own leaves every bandwidth unchanged."""


def devices_for_round(
    spec: FleetSpec, full_footprint_bytes: int, seed: int, round_index: int
) -> list[Device]:
    """Every device of the fleet for this round, ids ``0 … N-1`` in tier order.

    Uplinks and availability are drawn for all devices (not only the sampled ones) so a device's
    bandwidth and presence in a round do not depend on which method or sample is run.
    """
    if full_footprint_bytes < 1:
        raise FedquadError(
            f"full footprint = {full_footprint_bytes} bytes is not allowed: use >= 1"
        )
    rng = np.random.default_rng([seed, round_index, _BANDWIDTH_STREAM])
    online = _online(spec, seed, round_index)
    devices: list[Device] = []
    for tier in spec.tiers:
        low, high = tier.uplink_mbps
        uplinks = rng.uniform(low, high, size=tier.count) * MB
        budget = tier.budget_bytes(full_footprint_bytes)
        for uplink in uplinks:
            devices.append(
                Device(
                    id=len(devices),
                    tier=tier.name,
                    slowdown=tier.slowdown * spec.base_slowdown,
                    memory_budget_bytes=budget,
                    uplink=float(uplink),
                    downlink=tier.downlink_mbps * MB,
                    available=online[len(devices)],
                    composition=tier.composition,
                )
            )
    return devices


def _online(spec: FleetSpec, seed: int, round_index: int) -> list[bool]:
    """Per device in id order: online this round with its tier's probability."""
    rng = np.random.default_rng([seed, round_index, _AVAILABILITY_STREAM])
    draws = rng.random(spec.num_devices)
    chance = np.repeat([t.availability for t in spec.tiers], [t.count for t in spec.tiers])
    # draws lie in [0, 1), so availability 1.0 keeps every device online.
    return [bool(d) for d in draws < chance]


def sample_available(
    devices: list[Device], per_round: int, seed: int, round_index: int
) -> list[int]:
    """Ids trained this round: ``per_round`` drawn uniformly among the online devices, sorted.

    Fewer are returned when fewer are online. The draw is :func:`sample_round`'s over the online
    devices, so with every device online the two agree.
    """
    _check_per_round(per_round, len(devices))
    online = [d.id for d in devices if d.available]
    size = min(per_round, len(online))
    return [online[i] for i in _draw(len(online), size, seed, round_index)]


def sample_round(num_devices: int, per_round: int, seed: int, round_index: int) -> list[int]:
    """Device ids trained this round: uniform without replacement, seeded per round (the same
    for every method)."""
    _check_per_round(per_round, num_devices)
    return _draw(num_devices, per_round, seed, round_index)


def _check_per_round(per_round: int, num_devices: int) -> None:
    if not 1 <= per_round <= num_devices:
        raise FedquadError(
            f"per_round = {per_round} is not allowed: use 1 to the fleet size {num_devices}"
        )


def _draw(population: int, size: int, seed: int, round_index: int) -> list[int]:
    """``size`` of ``range(population)`` without replacement, sorted; none when ``size`` is 0."""
    if size == 0:
        return []
    rng = np.random.default_rng([seed, round_index])
    return sorted(int(i) for i in rng.choice(population, size=size, replace=False))
