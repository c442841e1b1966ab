"""The server's round logic: sample → plan → send → receive → aggregate → evaluate → record.

Each round the fleet's devices are drawn for the round (bandwidth, availability), the planner
plans from the server's capacity estimates, the executor trains, and the virtual clock advances
by the slowest trained device's round time ``T^h`` (METHODS.md §3, §6), computed from the
measured host cost profile and each device's true slowdown and bandwidth. Host wall-clock time
is recorded beside it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedquad.aggregate import Update, aggregate, aggregate_robust
from fedquad.config import (
    ExperimentConfig,
    FaultConfig,
    FederationConfig,
    FleetConfig,
    PlannerConfig,
    QuantConfig,
)
from fedquad.cost.fleet import Device, FleetSpec, devices_for_round, sample_available
from fedquad.cost.model import CostProfile, full_footprint, memory_bytes, step_seconds
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import State, rank_slice
from fedquad.planners import Plan, PlanContext, fallback_config, method, plan_round
from fedquad.server.capacity import CapacityEstimator, Report
from fedquad.server.checkpoint import Checkpoint
from fedquad.server.clock import RoundTiming, VirtualClock, time_round
from fedquad.server.faults import fault_of
from fedquad.server.messages import Executor, TrainInstruction, TrainReply
from fedquad.server.validate import norm_outliers, update_distance, update_problem

_PLANNER_STREAM = 3
"""Extra seed word of the planner's generator (FedRA's draws): its own stream."""


def tensor_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


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


@dataclass
class RoundsOutcome:
    state: State
    metrics: list[dict[str, Any]] = field(default_factory=list)
    clock: VirtualClock = field(default_factory=VirtualClock)
    capacity: CapacityEstimator = field(default_factory=CapacityEstimator)


def sample_devices(num_devices: int, per_round: int, seed: int, round_index: int) -> list[int]:
    """Uniform sample without replacement, seeded per round (independent of method)."""
    rng = np.random.default_rng([seed, round_index])
    return sorted(int(i) for i in rng.choice(num_devices, size=per_round, replace=False))


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
        estimates = {d: _estimate(capacity, devices[d], self.ctx) for d in sampled}
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


def run_rounds(
    settings: RoundSettings,
    fleet: FleetSpec,
    profile: CostProfile,
    lora_depth: int,
    executor: Executor,
    state: State,
    on_round: Callable[[dict[str, Any]], None] = lambda _: None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> RoundsOutcome:
    """Run every round from the initial global ``state`` (or from ``resume``'s round onwards);
    ``on_round`` gets each metrics record, ``on_checkpoint`` a checkpoint every
    ``settings.federation.checkpoint_every`` rounds and after the last."""
    outcome = RoundsOutcome(
        state=state, capacity=CapacityEstimator(gamma=settings.fleet.capacity_gamma)
    )
    planner = RoundPlanner(settings, fleet, profile, lora_depth, executor.device_samples())
    rule = method(settings.method).aggregation
    host_total, first = 0.0, 1
    if resume is not None:
        outcome.state, outcome.clock, outcome.capacity = resume.state, resume.clock, resume.capacity
        host_total, first = resume.host_seconds, resume.round + 1
    for r in range(first, settings.federation.rounds + 1):
        start = time.perf_counter()
        planned = planner.plan(r, outcome.capacity)
        devices, sampled, plan = planned.devices, planned.sampled, planned.plan
        instructions = [
            TrainInstruction(
                device_id=d,
                round=r,
                config=cfg,
                tensors=device_tensors(outcome.state, cfg, profile.num_blocks),
                seed=device_seed(settings.seed, r, d),
                fault=fault_of(settings.faults, settings.seed, r, d),
                delay_factor=settings.faults.delay_factor,
                fallback=fallback_config(settings.method, planned.estimates[d], planner.ctx, cfg),
            )
            for d, cfg in plan.configs.items()
        ]
        sent = {ins.device_id: ins for ins in instructions}
        received = executor.train(instructions)
        dropped = {r.device_id: r.error for r in received if r.error is not None}
        arrived = [r for r in received if r.error is None]
        worked = {r.device_id: devices[r.device_id] for r in arrived}
        configs = {r.device_id: trained_config(r, sent[r.device_id]) for r in arrived}
        deadline = round_deadline(settings, planner.ctx, planned)
        delays = {r.device_id: _delay(r) for r in arrived if _delay(r) != 1.0}
        # An out-of-memory retry is charged the failed attempt's first local step (where the
        # error surfaces: saved activations peak in the first step) on top of the retry's own
        # round; the global model was downloaded once.
        failed = {
            d: step_seconds(profile, sent[d].config, worked[d].slowdown) * delays.get(d, 1.0)
            for d in worked
            if configs[d] != sent[d].config
        }
        timing = time_round(
            profile, configs, worked, settings.local_steps, deadline, delays, failed
        )
        for d in timing.late:
            dropped[d] = (
                f"missed the deadline: {timing.devices[d].total:.1f} s > {deadline or 0:.1f} s"
            )
        on_time = [r for r in arrived if r.device_id not in timing.late]
        replies, rejected = _accepted(on_time, configs, outcome.state, settings, profile.num_blocks)
        updates = [Update(reply.tensors, reply.num_samples) for reply in replies]
        if settings.federation.robust != "none":
            outcome.state = aggregate_robust(
                outcome.state,
                updates,
                settings.federation.robust,
                settings.federation.trim_fraction,
            )
        else:
            outcome.state = aggregate(rule, outcome.state, updates, settings.federation.weighting)
        outcome.clock.advance(timing)
        outcome.capacity.observe_round(len(plan.configs), len(replies))
        for reply in arrived:
            outcome.capacity.observe(_report(profile, configs, worked, reply), profile)
        out_of_memory = {r.device_id: r for r in received if "oom_retry" in r.measurements}
        for d, reply in out_of_memory.items():
            failed_memory = min(planner.ctx.cost(c).memory for c in _failed_configs(reply, sent[d]))
            outcome.capacity.observe_out_of_memory(d, failed_memory)
        record: dict[str, Any] = {
            "round": r,
            "sampled": sampled,
            "over_selected": len(sampled) - min(planner.fleet.per_round, len(sampled)),
            "offline": sum(not d.available for d in devices),
            "sat_out": {str(k): v for k, v in plan.sat_out.items()},
            "rejected": {str(k): v for k, v in rejected.items()},
            "devices": [
                _device_record(reply, devices, configs, timing, profile) for reply in replies
            ],
            "dropped": {str(k): v for k, v in dropped.items()},
            "out_of_memory": {
                str(d): r.measurements["oom_retry"] for d, r in out_of_memory.items()
            },
            "round_deadline": deadline,
            "virtual_seconds": timing.seconds,
            "virtual_seconds_total": outcome.clock.now,
            "straggler": timing.straggler,
            "deadline": plan.deadline,
        }
        if replies:
            total = sum(u.num_samples for u in updates)
            record["train_loss"] = (
                sum(rep.measurements["loss"] * rep.num_samples for rep in replies) / total
            )
        record["bytes_up"] = sum(d["bytes_up"] for d in record["devices"])
        record["bytes_down"] = sum(d["bytes_down"] for d in record["devices"])
        if r % settings.federation.eval_every == 0 or r == settings.federation.rounds:
            record.update({f"test_{k}": v for k, v in executor.evaluate(outcome.state).items()})
        round_seconds = time.perf_counter() - start
        host_total += round_seconds
        record["host_seconds"] = round_seconds
        record["host_seconds_total"] = host_total
        outcome.metrics.append(record)
        on_round(record)
        every = settings.federation.checkpoint_every
        if (
            on_checkpoint is not None
            and every
            and (r % every == 0 or r == settings.federation.rounds)
        ):
            on_checkpoint(Checkpoint(r, outcome.state, outcome.clock, outcome.capacity, host_total))
    return outcome


def round_deadline(settings: RoundSettings, ctx: PlanContext, planned: RoundPlan) -> float | None:
    """When the server stops waiting: ``federation.round_deadline``, else the planner's predicted
    round time (from its estimates) times ``1 + deadline_slack``."""
    if settings.federation.round_deadline is not None:
        return settings.federation.round_deadline
    predicted = [
        ctx.round_seconds(planned.estimates[d], c) for d, c in planned.plan.configs.items()
    ]
    return (1 + settings.federation.deadline_slack) * max(predicted) if predicted else None


def _delay(reply: TrainReply) -> float:
    """How many times slower than its profile the device ran (1.0 unless it straggled)."""
    return float(reply.measurements.get("delay_factor", 1.0))


def trained_config(reply: TrainReply, sent: TrainInstruction) -> DeviceConfig:
    """The config a device's update was trained with: the server's fallback if the device ran
    out of memory and retried (its ``oom_retry`` names it), else the planned one."""
    if sent.fallback is not None and "used_config" in reply.measurements.get("oom_retry", {}):
        return sent.fallback
    return sent.config


def _failed_configs(reply: TrainReply, sent: TrainInstruction) -> list[DeviceConfig]:
    """The configs a device ran out of memory on: the planned one, and the fallback if the
    retry failed too (an error reply after a retry)."""
    if reply.error is not None and sent.fallback is not None:
        return [sent.config, sent.fallback]
    return [sent.config]


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


def _accepted(
    replies: list[TrainReply],
    configs: dict[int, DeviceConfig],
    state: State,
    settings: RoundSettings,
    num_blocks: int,
) -> tuple[list[TrainReply], dict[int, str]]:
    """The replies fit to aggregate, and the reason each other one was rejected."""
    rejected: dict[int, str] = {}
    good: list[TrainReply] = []
    for reply in replies:
        assigned = assigned_names(state, configs[reply.device_id], num_blocks)
        problem = update_problem(reply.tensors, state, assigned)
        if problem is None:
            good.append(reply)
        else:
            rejected[reply.device_id] = problem
    distances = {r.device_id: update_distance(r.tensors, state) for r in good}
    outliers = norm_outliers(distances, settings.federation.norm_bound)
    rejected.update(outliers)
    return [r for r in good if r.device_id not in outliers], rejected


def _estimate(capacity: CapacityEstimator, declared: Device, ctx: PlanContext) -> Device:
    """The server's view of a device: its declared profile corrected by what it reported.

    A device whose saved activations turned out larger than predicted (``memory_factor > 1``)
    is planned as if its budget were that much smaller; one that ran out of memory, with a
    budget that holds only configs predicted to need less than the one that failed.
    """
    estimate = capacity.estimate(declared)
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


def _report(
    profile: CostProfile,
    configs: dict[int, Any],
    devices: dict[int, Device],
    reply: TrainReply,
) -> Report:
    """What a simulated device reports: its step time is the cost model's for its true slowdown
    (deterministic for a seed), its bandwidth this round's draw, its saved bytes the trainer's
    exact measurement. A real device reports its own measured values instead."""
    device, config = devices[reply.device_id], configs[reply.device_id]
    return Report(
        device=device.id,
        config=config,
        step_seconds=step_seconds(profile, config, device.slowdown) * _delay(reply),
        uplink=device.uplink,
        downlink=device.downlink,
        # trimmed batches save less than the configured sequence length, which the profile describes
        saved_bytes=None
        if reply.measurements.get("trimmed")
        else reply.measurements.get("peak_saved_bytes"),
    )


def _device_record(
    reply: TrainReply,
    devices: list[Device],
    configs: dict[int, Any],
    timing: RoundTiming,
    profile: CostProfile,
) -> dict[str, Any]:
    device, config, times = devices[reply.device_id], configs[reply.device_id], timing.devices
    t = times[reply.device_id]
    return {
        "device": reply.device_id,
        "tier": device.tier,
        "depth": config.depth,
        "quantized": config.quantized,
        "bits": config.bits,
        **({"rank": config.rank} if config.rank is not None else {}),
        **({"blocks": list(config.blocks)} if config.blocks is not None else {}),
        "num_samples": reply.num_samples,
        # what the protocol sends the device (the local executor shares memory instead)
        "bytes_down": t.bytes_down,
        "bytes_up": tensor_bytes(reply.tensors),
        "memory_bytes": memory_bytes(profile, config),
        "memory_budget_bytes": device.memory_budget_bytes,
        "compute_seconds": t.compute,
        "download_seconds": t.download,
        "upload_seconds": t.upload,
        "waiting_seconds": t.waiting,
        **_device_measurements(reply.measurements),
    }


def _device_measurements(measurements: dict[str, Any]) -> dict[str, Any]:
    # sent/received_bytes: counted by a Flower executor; node: measured by a deployed device
    keep = (
        "loss",
        "median_step_seconds",
        "peak_saved_bytes",
        "sent_bytes",
        "received_bytes",
        "oom_retry",
    )
    out = {k: measurements[k] for k in keep if k in measurements}
    if "step_seconds" in measurements:
        out["host_seconds"] = float(sum(measurements["step_seconds"]))
    if "saved_bytes" in measurements:
        out["saved_bytes_per_block"] = measurements["saved_bytes"]["per_block"]
    if "node" in measurements:
        out["node"] = measurements["node"]
    return out


def best_accuracy(metrics: list[dict[str, Any]]) -> float | None:
    values = [m["test_accuracy"] for m in metrics if "test_accuracy" in m]
    return max(values) if values else None


def median_step_seconds(metrics: list[dict[str, Any]]) -> float | None:
    values = [d["median_step_seconds"] for m in metrics for d in m["devices"]]
    return statistics.median(values) if values else None
