"""The server's round loop, split as a federated strategy is: configure, train, aggregate.

The configure step (:mod:`fedquad.server.configure`) samples the fleet's devices for the round
(bandwidth, availability), has the method's planner plan from the server's capacity estimates
and writes each planned device's instruction. The executor trains. :func:`aggregate_round`
accounts for the replies (error replies, deadline misses, out-of-memory retries, rejected
updates), aggregates the rest, advances the virtual clock by the round time ``T^h``
(docs/methods.md §3, §6: from the measured host cost profile and each device's true slowdown
and bandwidth) and updates the capacity estimates; it returns the round's
:class:`~fedquad.server.records.RoundRecord`. :func:`run_rounds` only calls them, evaluates,
records host wall-clock time and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedquad.aggregate import Update, aggregate, aggregate_robust
from fedquad.cost.fleet import Device, FleetSpec
from fedquad.cost.model import CostProfile, device_step_seconds, memory_bytes
from fedquad.device_config import DeviceConfig
from fedquad.models.lora import State
from fedquad.planners import method
from fedquad.server.capacity import CapacityEstimator, Report
from fedquad.server.checkpoint import Checkpoint
from fedquad.server.clock import RoundTiming, VirtualClock, time_round
from fedquad.server.configure import (
    ConfiguredRound,
    RoundPlanner,
    RoundSettings,
    assigned_names,
    configure_round,
)
from fedquad.server.messages import Executor, TrainInstruction, TrainReply
from fedquad.server.records import DeviceRecord, RoundRecord
from fedquad.server.validate import norm_outliers, update_distance, update_problem


def tensor_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class RoundsOutcome:
    """The server's state as the rounds go (the global model, clock and capacity estimates),
    and the metrics of every round run."""

    state: State
    metrics: list[dict[str, Any]] = field(default_factory=list)
    clock: VirtualClock = field(default_factory=VirtualClock)
    capacity: CapacityEstimator = field(default_factory=CapacityEstimator)


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
    host_total, first = 0.0, 1
    if resume is not None:
        outcome.state, outcome.clock, outcome.capacity = resume.state, resume.clock, resume.capacity
        host_total, first = resume.host_seconds, resume.round + 1
    fed = settings.federation
    for r in range(first, fed.rounds + 1):
        start = time.perf_counter()
        configured = configure_round(planner, r, outcome.state, outcome.capacity)
        received = executor.train(list(configured.sent.values()))
        record = aggregate_round(planner, configured, received, outcome)
        if _due(r, fed.eval_every, fed.rounds):
            record.test = executor.evaluate(outcome.state)
        record.host_seconds = time.perf_counter() - start
        host_total += record.host_seconds
        record.host_seconds_total = host_total
        metrics = record.to_dict()
        outcome.metrics.append(metrics)
        on_round(metrics)
        if on_checkpoint is not None and _due(r, fed.checkpoint_every, fed.rounds):
            on_checkpoint(Checkpoint(r, outcome.state, outcome.clock, outcome.capacity, host_total))
    return outcome


def _due(r: int, every: int, rounds: int) -> bool:
    """Every ``every`` rounds and after the last; never when ``every`` is 0."""
    return bool(every) and (r % every == 0 or r == rounds)


def aggregate_round(
    planner: RoundPlanner,
    configured: ConfiguredRound,
    received: list[TrainReply],
    server: RoundsOutcome,
) -> RoundRecord:
    """Account for the round's replies and advance the server: drop error replies and late
    devices, charge out-of-memory retries, reject bad updates, aggregate the rest into
    ``server.state``, advance ``server.clock`` and update ``server.capacity``."""
    settings, profile = planner.settings, planner.ctx.profile
    devices, sent = configured.planned.devices, configured.sent
    dropped = {r.device_id: r.error for r in received if r.error is not None}
    arrived = [r for r in received if r.error is None]
    configs = {r.device_id: trained_config(r, sent[r.device_id]) for r in arrived}
    timing = _time_round(profile, settings, configured, arrived, configs)
    for d in timing.late:
        total = timing.devices[d].total
        dropped[d] = f"missed the deadline: {total:.1f} s > {configured.deadline or 0:.1f} s"
    on_time = [r for r in arrived if r.device_id not in timing.late]
    replies, rejected = _accepted(on_time, configs, server.state, settings, profile.num_blocks)
    server.state = _aggregate(settings, server.state, replies)
    server.clock.advance(timing)
    out_of_memory = {r.device_id: r for r in received if "oom_retry" in r.measurements}
    _observe(planner, configured, server.capacity, arrived, configs, out_of_memory, len(replies))
    plan, sampled = configured.planned.plan, configured.planned.sampled
    return RoundRecord(
        round=configured.round,
        sampled=sampled,
        over_selected=len(sampled) - min(planner.fleet.per_round, len(sampled)),
        offline=sum(not d.available for d in devices),
        sat_out=plan.sat_out,
        rejected=rejected,
        devices=[
            _device_record(r, devices, configs, timing, profile, r.device_id in plan.over_budget)
            for r in replies
        ],
        dropped=dropped,
        out_of_memory={d: r.measurements["oom_retry"] for d, r in out_of_memory.items()},
        round_deadline=configured.deadline,
        virtual_seconds=timing.seconds,
        virtual_seconds_total=server.clock.now,
        straggler=timing.straggler,
        deadline=plan.deadline,
        train_loss=_train_loss(replies),
    )


def _time_round(
    profile: CostProfile,
    settings: RoundSettings,
    configured: ConfiguredRound,
    arrived: list[TrainReply],
    configs: dict[int, DeviceConfig],
) -> RoundTiming:
    """The round on the virtual clock: each arrived device's true slowdown and links, its
    straggling delay, and the failed attempt of an out-of-memory retry."""
    worked = {r.device_id: configured.planned.devices[r.device_id] for r in arrived}
    sent = configured.sent
    delays = {r.device_id: _delay(r) for r in arrived if _delay(r) != 1.0}
    # An out-of-memory retry is charged the failed attempt's first local step (where the
    # error surfaces: saved activations peak in the first step) on top of the retry's own
    # round; the global model was downloaded once.
    failed = {
        d: device_step_seconds(profile, sent[d].config, worked[d]) * delays.get(d, 1.0)
        for d in worked
        if configs[d] != sent[d].config
    }
    return time_round(
        profile, configs, worked, settings.local_steps, configured.deadline, delays, failed
    )


def _aggregate(settings: RoundSettings, state: State, replies: list[TrainReply]) -> State:
    fed = settings.federation
    updates = [Update(reply.tensors, reply.num_samples) for reply in replies]
    if fed.robust != "none":
        return aggregate_robust(state, updates, fed.robust, fed.trim_fraction)
    return aggregate(method(settings.method).aggregation, state, updates, fed.weighting)


def _observe(
    planner: RoundPlanner,
    configured: ConfiguredRound,
    capacity: CapacityEstimator,
    arrived: list[TrainReply],
    configs: dict[int, DeviceConfig],
    out_of_memory: dict[int, TrainReply],
    aggregated: int,
) -> None:
    """What the round tells the capacity estimator: the share that failed, every arrived
    device's report (late ones too), and the memory each out-of-memory device failed at."""
    profile, devices = planner.ctx.profile, configured.planned.devices
    capacity.observe_round(len(configured.sent), aggregated)
    worked = {r.device_id: devices[r.device_id] for r in arrived}
    for reply in arrived:
        device = worked[reply.device_id]
        capacity.observe(_report(profile, configs, worked, reply), profile, device.composition)
    for d, reply in out_of_memory.items():
        failed = _failed_configs(reply, configured.sent[d])
        capacity.observe_out_of_memory(d, min(planner.ctx.cost(c).memory for c in failed))


def _train_loss(replies: list[TrainReply]) -> float | None:
    if not replies:
        return None
    total = sum(reply.num_samples for reply in replies)
    return sum(rep.measurements["loss"] * rep.num_samples for rep in replies) / total


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
        step_seconds=device_step_seconds(profile, config, device) * _delay(reply),
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
    configs: dict[int, DeviceConfig],
    timing: RoundTiming,
    profile: CostProfile,
    over_budget: bool = False,
) -> DeviceRecord:
    device, config, t = devices[reply.device_id], configs[reply.device_id], timing.devices
    times = t[reply.device_id]
    return DeviceRecord(
        device=reply.device_id,
        tier=device.tier,
        config=config,
        num_samples=reply.num_samples,
        bytes_down=times.bytes_down,
        bytes_up=tensor_bytes(reply.tensors),
        memory_bytes=memory_bytes(profile, config),
        memory_budget_bytes=device.memory_budget_bytes,
        compute_seconds=times.compute,
        download_seconds=times.download,
        upload_seconds=times.upload,
        waiting_seconds=times.waiting,
        over_budget=over_budget,
        **DeviceRecord.measured(reply.measurements),
    )
