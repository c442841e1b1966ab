"""The configure step of a round: sample the fleet's devices, plan from the server's capacity
estimates, and write each planned device's instruction (docs/methods.md §4, §6).

:class:`RoundPlanner` is also what ``fedquad plan`` shows on its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from fedquad.config import (
    ExperimentConfig,
    FaultConfig,
    FederationConfig,
    FleetConfig,
    PlannerConfig,
    QuantConfig,
)
from fedquad.cost.fleet import Device, FleetSpec, devices_for_round, sample_available
from fedquad.cost.model import CostProfile, full_footprint
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import State, rank_slice
from fedquad.planners import Plan, PlanContext, fallback_config, plan_round
from fedquad.server.capacity import CapacityEstimator
from fedquad.server.faults import fault_of
from fedquad.server.messages import TrainInstruction

_PLANNER_STREAM = 3
"""Extra seed word of the planner's generator (FedRA's draws): its own stream."""


@dataclass(frozen=True)
class RoundSettings:
    """What the round loop needs of an experiment's config: its sections, not copies."""

    method: str
    federation: FederationConfig
    seed: int = 0
    quant: QuantConfig = field(default_factory=QuantConfig)
    local_steps: int = 10
    fleet: FleetConfig = field(default_factory=FleetConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    base_rank: int = 8
    """``r``: the reference rank (budgets' footprint, HetLoRA's rank set)."""
    faults: FaultConfig = field(default_factory=FaultConfig)


def settings_for(config: ExperimentConfig) -> RoundSettings:
    return RoundSettings(
        method=config.method,
        federation=config.federation,
        seed=config.seed,
        quant=config.quant,
        local_steps=config.train.local_steps,
        fleet=config.fleet,
        planner=config.planner,
        base_rank=config.lora.rank,
        faults=config.faults,
    )


def device_seed(seed: int, round_index: int, device: int) -> int:
    """The training seed of one device in one round: distinct for every (round, device)."""
    return int(np.random.SeedSequence([seed, round_index, device]).generate_state(1)[0])


@dataclass(frozen=True)
class RoundPlan:
    devices: list[Device]
    """Every device of the fleet as it is this round (true bandwidth and availability)."""
    sampled: list[int]
    estimates: dict[int, Device]
    """The server's view of each sampled device, which the planner planned from."""
    plan: Plan


class RoundPlanner:
    """Sample and plan one round: the part of the loop ``fedquad plan`` shows on its own."""

    def __init__(
        self,
        settings: RoundSettings,
        fleet: FleetSpec,
        profile: CostProfile,
        lora_depth: int,
        device_samples: list[int],
    ) -> None:
        if len(device_samples) != fleet.num_devices:
            raise FedquadError(
                f"there is data for {len(device_samples)} devices but the fleet has "
                f"{fleet.num_devices}: partition the data for the fleet"
            )
        self.settings, self.fleet = settings, fleet
        self.footprint = full_footprint(profile, settings.base_rank)
        self.ctx = PlanContext(
            profile=profile,
            lora_depth=lora_depth,
            quant=settings.quant,
            kappa=settings.fleet.kappa,
            local_steps=settings.local_steps,
            options=settings.planner,
            num_samples=dict(enumerate(device_samples)),
            base_rank=settings.base_rank,
        )

    def plan(self, r: int, capacity: CapacityEstimator) -> RoundPlan:
        seed = self.settings.seed
        devices = devices_for_round(self.fleet, self.footprint, seed, r)
        wanted = self.fleet.per_round + extra_devices(
            self.fleet.per_round, capacity.failure_rate, self.settings.federation.over_selection
        )
        sampled = sample_available(devices, min(wanted, len(devices)), seed, r)
        # memory not enforced: the planner needs no memory corrections
        corrected = self.settings.planner.infeasible != "ignore"
        estimates = {d: _estimate(capacity, devices[d], self.ctx, corrected) for d in sampled}
        rng = np.random.default_rng([seed, r, _PLANNER_STREAM])
        plan = plan_round(self.settings.method, list(estimates.values()), self.ctx, rng)
        return RoundPlan(devices=devices, sampled=sampled, estimates=estimates, plan=plan)


def extra_devices(per_round: int, failure_rate: float, over_selection: float) -> int:
    """Over-selection: ``⌈k·p/(1-p)⌉`` more devices, so that ``k`` updates are expected to
    arrive when a share ``p`` fails; at most ``over_selection·k`` (rounded down)."""
    if over_selection <= 0 or failure_rate <= 0:
        return 0
    cap = math.floor(over_selection * per_round)
    if failure_rate >= 1:
        return cap
    return min(cap, math.ceil(per_round * failure_rate / (1 - failure_rate) - 1e-9))


@dataclass(frozen=True)
class ConfiguredRound:
    """The configure step's result: the plan, and the instruction sent to each planned device."""

    round: int
    planned: RoundPlan
    sent: dict[int, TrainInstruction]
    deadline: float | None
    """When the server stops waiting for this round's replies (None: it waits for all)."""


def configure_round(
    planner: RoundPlanner, r: int, state: State, capacity: CapacityEstimator
) -> ConfiguredRound:
    """Sample and plan round ``r`` from the server's capacity estimates; one instruction per
    planned device: its config, its slice of the global state, its seed, fault and fallback."""
    settings = planner.settings
    planned = planner.plan(r, capacity)
    sent = {
        d: TrainInstruction(
            device_id=d,
            round=r,
            config=cfg,
            tensors=device_tensors(state, cfg, planner.ctx.profile.num_blocks),
            seed=device_seed(settings.seed, r, d),
            fault=fault_of(settings.faults, settings.seed, r, d),
            delay_factor=settings.faults.delay_factor,
            fallback=fallback_config(settings.method, planned.estimates[d], planner.ctx, cfg),
        )
        for d, cfg in planned.plan.configs.items()
    }
    return ConfiguredRound(r, planned, sent, round_deadline(settings, planner.ctx, planned))


def round_deadline(settings: RoundSettings, ctx: PlanContext, planned: RoundPlan) -> float | None:
    """When the server stops waiting: ``federation.round_deadline``, else the planner's predicted
    round time (from its estimates) times ``1 + deadline_slack``."""
    if settings.federation.round_deadline is not None:
        return settings.federation.round_deadline
    predicted = [
        ctx.round_seconds(planned.estimates[d], c) for d, c in planned.plan.configs.items()
    ]
    return (1 + settings.federation.deadline_slack) * max(predicted) if predicted else None


def assigned_names(state: State, config: DeviceConfig, num_blocks: int) -> set[str]:
    """The global tensors a device with ``config`` may send: its trained blocks' LoRA and the
    head. A federated tensor's only integer path component is its block index."""
    trained = set(config.trained_blocks(num_blocks))
    names = set()
    for name in state:
        blocks = [int(p) for p in name.split(".") if p.isdigit()]
        if not blocks or blocks[0] in trained:
            names.add(name)
    return names


def device_tensors(state: State, config: DeviceConfig, num_blocks: int) -> State:
    """What the server sends a device: the whole global state (frozen LoRA below its cut runs in
    its forward), with the LoRA it trains cut to its rank when it has one — the rest it would
    zero anyway, and ``download_bytes`` counts exactly this."""
    if config.rank is None:
        return state
    trained = assigned_names(state, config, num_blocks)
    return {n: rank_slice(n, t, config.rank) if n in trained else t for n, t in state.items()}


def _estimate(
    capacity: CapacityEstimator, declared: Device, ctx: PlanContext, memory: bool = True
) -> Device:
    """The server's view of a device: its declared profile corrected by what it reported.

    A device whose saved activations turned out larger than predicted (``memory_factor > 1``)
    is planned as if its budget were that much smaller; one that ran out of memory, with a
    budget that holds only configs predicted to need less than the one that failed. Without
    ``memory`` the budget is the declared one (``planner.infeasible = "ignore"``).
    """
    estimate = capacity.estimate(declared)
    if not memory:
        return estimate
    budget = estimate.memory_budget_bytes
    factor = capacity.memory_factor(declared.id)
    if factor > 1:
        budget = int(budget / factor)
    ceiling = capacity.memory_ceiling(declared.id)
    if ceiling is not None:
        budget = min(budget, ctx.budget_below(ceiling))
    if budget != estimate.memory_budget_bytes:
        estimate = dataclasses.replace(estimate, memory_budget_bytes=budget)
    return estimate
