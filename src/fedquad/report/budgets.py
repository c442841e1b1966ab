"""Fixed virtual-time budgets for "accuracy at a budget" (docs/methods.md §8), chosen before any
training from a planning-only dry run.

The dry run plans and times every round as the round loop would (``fedquad.server.rounds``):
the same device draws, plans, deadlines and capacity estimates, each trained device reporting
the cost model's step time for its true slowdown and its round's bandwidths. It trains nothing,
so it sees no measured saved bytes (which a run with trimmed batches does not report either) and
no failures. For a method whose plans do not depend on training it is the run's clock exactly.

The budgets are fractions (1/3, 2/3, all) of the shortest planned run of the comparison, over
every entry and seed, rounded down to three significant figures: every run, as planned, is still
training at every budget, so each budget compares models trained for the same virtual time, and
none reads a run after it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import TYPE_CHECKING

from fedquad.errors import FedquadError

if TYPE_CHECKING:
    from fedquad.cost.fleet import FleetSpec
    from fedquad.cost.model import CostProfile
    from fedquad.server.configure import RoundSettings

BUDGET_FRACTIONS = (Fraction(1, 3), Fraction(2, 3), Fraction(1))
SIGNIFICANT_DIGITS = 3


def planned_round_seconds(
    settings: RoundSettings,
    fleet: FleetSpec,
    profile: CostProfile,
    lora_depth: int,
    device_samples: Sequence[int],
) -> list[float]:
    """Each round's ``T^h`` of a run of ``settings``, planned and timed without training."""
    from fedquad.cost.model import device_step_seconds
    from fedquad.server.capacity import CapacityEstimator, Report
    from fedquad.server.clock import time_round
    from fedquad.server.configure import RoundPlanner, round_deadline

    planner = RoundPlanner(settings, fleet, profile, lora_depth, list(device_samples))
    capacity = CapacityEstimator(gamma=settings.fleet.capacity_gamma)
    seconds = []
    for r in range(1, settings.federation.rounds + 1):
        planned = planner.plan(r, capacity)
        configs = planned.plan.configs
        worked = {d: planned.devices[d] for d in configs}
        deadline = round_deadline(settings, planner.ctx, planned)
        timing = time_round(profile, configs, worked, settings.local_steps, deadline)
        capacity.observe_round(len(configs), len(configs) - len(timing.late))
        for d, config in configs.items():
            device = worked[d]
            report = Report(
                device=d,
                config=config,
                step_seconds=device_step_seconds(profile, config, device),
                uplink=device.uplink,
                downlink=device.downlink,
            )
            capacity.observe(report, profile, device.composition)
        seconds.append(timing.seconds)
    return seconds


def choose_budgets(
    planned: Mapping[str, Mapping[int, Sequence[float]]],
    fractions: Sequence[Fraction | float] = BUDGET_FRACTIONS,
) -> list[float]:
    """The budgets of a comparison from each (label, seed)'s planned round times: ``fractions``
    of the shortest planned run, each rounded down to three significant figures."""
    totals = [math.fsum(rounds) for by_seed in planned.values() for rounds in by_seed.values()]
    if not totals:
        raise FedquadError("no planned runs to choose budgets from: plan at least one")
    shortest = min(totals)
    if not shortest > 0:
        raise FedquadError(
            f"the shortest planned run takes {shortest!r} virtual seconds: budgets need a run "
            "that takes time (does every round sit every device out?)"
        )
    # exact fractions: a third of 30 s is 10 s, not the 9.99 a float 1/3 would round down to
    exact = [Fraction(shortest) * Fraction(f).limit_denominator(1000) for f in fractions]
    budgets = [round_down(float(x)) for x in exact]
    if len(set(budgets)) != len(budgets) or not all(b > 0 for b in budgets):
        raise FedquadError(f"budgets {budgets} are not distinct and > 0: give other fractions")
    return budgets


def round_down(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded down to ``digits`` significant figures (123.456 -> 123.0)."""
    if not value > 0:
        raise FedquadError(f"cannot round {value!r} to significant figures: give a number > 0")
    exact = Decimal(repr(value))
    step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
    return float((exact / step).to_integral_value(rounding=ROUND_FLOOR) * step)


def check_budgets(values: object, where: str) -> list[float]:
    """A config's ``compare.budgets``: distinct virtual seconds > 0."""
    ok = isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok:
        raise FedquadError(
            f"{where}: compare.budgets = {values!r} is not allowed: use a list of virtual "
            "seconds > 0"
        )
    assert isinstance(values, list)
    if len(set(values)) != len(values):
        raise FedquadError(
            f"{where}: compare.budgets = {values!r} repeats a budget: give each once"
        )
    return [float(v) for v in values]
