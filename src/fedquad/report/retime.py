"""The board clock (docs/methods.md §6, §8): a finished run re-timed with another step
composition, from what its directory holds.

A run's virtual time is the sum over its rounds of ``T^h = max_i T_i`` over the devices that
trained, ``T_i = compute + download + upload`` (``fedquad.server.clock``). Only ``compute``
depends on the step composition, so re-timing needs each trained device's config and tier (its
record in ``metrics.jsonl``), the tier's slowdown and composition (``fleet.toml``), the time terms
(``cost_profile.json``) and ``τ`` (``config.toml``). Each device's recorded compute is scaled by
the ratio of its step time under the new composition to that under its tier's recorded one: a
straggling delay is carried along, and re-timing with the recorded composition gives back the
recorded times exactly (the ratio of two equal numbers is exactly 1).

Exact for the methods whose plans do not depend on time (fedlora, hetlora, flexlora, fedra): the
same devices train the same configs on either clock. An adaptive method planned its rounds on the
host clock; re-timed, it shows those plans' time on the board ("re-timed, planned on the host
clock"), not what it would have planned there.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedquad.config import TrainConfig, read_toml
from fedquad.cost.fleet import FleetSpec, Tier, load_fleet
from fedquad.cost.model import COMPOSITIONS, CostProfile, StepComposition, step_seconds
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.methods_registry import method

BOARD = COMPOSITIONS["jetson"]
"""The board clock's step composition (docs/methods.md §8)."""
TIME_FREE_PLANNERS = ("full-depth", "rank-by-speed", "random-blocks")
"""Planners whose plans are the same on either clock: full depth (whose step time the board
composition keeps), a rank chosen by full-depth speed, and random blocks by memory."""
RUN_FILES = ("cost_profile.json", "fleet.toml", "config.toml")
_CONFIG_FIELDS = tuple(DeviceConfig.__dataclass_fields__)
_LATE = "missed the deadline"


def exact_on_board(method_name: str) -> bool:
    """Whether a method's re-timed runs are what it would have run on the board."""
    return method(method_name).planner in TIME_FREE_PLANNERS


@dataclass(frozen=True)
class RunCost:
    """What a run's directory says about how its rounds were timed."""

    profile: CostProfile
    fleet: FleetSpec
    local_steps: int
    precision: str = "fp32"


def read_run_cost(run_dir: str | Path) -> RunCost | None:
    """The run's cost profile, fleet, ``τ`` and precision; ``None`` when a file is missing (a
    results directory of an older version keeps only ``metrics.jsonl``)."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in RUN_FILES):
        return None
    profile = CostProfile.from_dict(json.loads((run_dir / "cost_profile.json").read_text()))
    train = read_toml(run_dir / "config.toml").get("train", {})
    defaults = TrainConfig()
    return RunCost(
        profile=profile,
        fleet=load_fleet(run_dir / "fleet.toml"),
        local_steps=int(train.get("local_steps", defaults.local_steps)),
        precision=str(train.get("precision", defaults.precision)),
    )


@dataclass(frozen=True)
class Retimed:
    metrics: list[dict[str, Any]]
    """The run's records with every device's ``compute_seconds`` and ``waiting_seconds`` and
    each round's ``virtual_seconds`` and ``virtual_seconds_total`` on the new clock."""
    scaled_rounds: tuple[int, ...]
    """Rounds that timed devices their records do not show (rejected updates, devices late
    for the deadline): their recorded time is scaled by their recorded devices' change."""


def record_config(device: Mapping[str, Any]) -> DeviceConfig:
    """The config a device record says it trained (the config's fields it carries)."""
    return _config({k: v for k, v in device.items() if k in _CONFIG_FIELDS})


def _config(values: Mapping[str, Any]) -> DeviceConfig:
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return DeviceConfig(**fields)


def retime(
    metrics: Sequence[Mapping[str, Any]], cost: RunCost, composition: StepComposition | None
) -> Retimed:
    """``metrics`` on the clock where every tier's steps have ``composition`` (None: the
    host's mix), the same devices training the same configs."""
    tiers = {t.name: t for t in cost.fleet.tiers}
    out, scaled, now = [], [], 0.0
    for record in metrics:
        new = copy.deepcopy(dict(record))
        old_totals, totals = [], []
        for device in new["devices"]:
            tier = tiers.get(device["tier"])
            if tier is None:
                raise FedquadError(
                    f"round {record['round']}: device {device.get('device')} has tier "
                    f"{device['tier']!r}, which the run's fleet.toml lacks: give its own fleet"
                )
            old_totals.append(_total(device))
            device["compute_seconds"] *= _compute_factor(device, tier, cost, composition)
            totals.append(_total(device))
        if _timed_unrecorded(record):
            scaled.append(record["round"])
            old = max(old_totals, default=0.0)
            change = max(totals, default=0.0) / old if old > 0 else 1.0
            seconds = record["virtual_seconds"] * change
        else:
            seconds = max(totals, default=0.0)
        for device, total in zip(new["devices"], totals, strict=True):
            device["waiting_seconds"] = max(0.0, seconds - total)
        now += seconds
        new["virtual_seconds"] = seconds
        new["virtual_seconds_total"] = now
        out.append(new)
    return Retimed(metrics=out, scaled_rounds=tuple(scaled))


def _total(device: Mapping[str, Any]) -> float:
    """``T_i`` as the clock adds it up (the same order: equal inputs, equal sums)."""
    return float(device["compute_seconds"] + device["download_seconds"] + device["upload_seconds"])


def _compute_factor(
    device: Mapping[str, Any], tier: Tier, cost: RunCost, composition: StepComposition | None
) -> float:
    """New compute over recorded compute: ``τ·t(c) [+ t(failed)]`` under each composition."""
    slowdown = tier.slowdown * cost.fleet.base_slowdown
    config = record_config(device)
    retry = device.get("oom_retry") or {}
    failed = _config(retry["failed_config"]) if "used_config" in retry else None

    def compute(mix: StepComposition | None) -> float:
        seconds = cost.local_steps * step_seconds(cost.profile, config, slowdown, mix)
        if failed is not None:  # the failed attempt's first step (server.rounds)
            seconds += step_seconds(cost.profile, failed, slowdown, mix)
        return seconds

    recorded = compute(tier.composition)
    return compute(composition) / recorded if recorded > 0 else 1.0


def _timed_unrecorded(record: Mapping[str, Any]) -> bool:
    late = any(str(r).startswith(_LATE) for r in record.get("dropped", {}).values())
    return bool(record.get("rejected")) or late
