"""The round loop's accounting, driven by a fake executor of canned replies on a hand-made cost
profile and a small fleet: no model is loaded, so every rule is checked on exact numbers."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import pytest
import torch

from fedquad.api import summarize
from fedquad.config import FaultConfig, FederationConfig, PlannerConfig, load_config
from fedquad.cost.fleet import FleetSpec, Tier, devices_for_round
from fedquad.cost.model import (
    CostProfile,
    full_footprint,
    memory_bytes,
    saved_bytes,
    step_seconds,
)
from fedquad.device_config import DeviceConfig
from fedquad.server.checkpoint import Checkpoint
from fedquad.server.configure import RoundSettings, assigned_names
from fedquad.server.messages import TrainInstruction, TrainReply
from fedquad.server.records import DeviceRecord, RoundRecord
from fedquad.server.rounds import run_rounds
from fedquad.workbench import resolve_fleet

RANK, WIDTH, BLOCKS = 2, 3, 2
PROFILE = CostProfile(
    num_blocks=BLOCKS,
    frozen_weight_bytes=10_000,
    lora_params=(2 * RANK * WIDTH,) * BLOCKS,
    head_params=2 * WIDTH,
    saved_bytes=(3000, 4000),
    saved_bytes_bottom=(2500, 3500),
    quant_ratio={8: 0.25},
    head_saved_bytes=500,
    f=0.01,
    g=0.2,
    o=0.05,
    c=0.1,
    lora_ranks=(RANK,) * BLOCKS,
)
STEPS = 2


def samples(device: int) -> int:
    return 10 * (device + 1)


def global_state() -> dict[str, torch.Tensor]:
    state = {}
    for b in range(BLOCKS):
        state[f"blocks.{b}.lora_A.weight"] = torch.zeros(RANK, WIDTH)
        state[f"blocks.{b}.lora_B.weight"] = torch.zeros(WIDTH, RANK)
    state["head.weight"] = torch.zeros(2, WIDTH)
    return state


def fleet(memory: float = 2.0, count: int = 4, per_round: int = 4, **tier) -> FleetSpec:
    return FleetSpec(tiers=(Tier("t", count, 1.0, memory=memory, **tier),), per_round=per_round)


def settings(method: str = "fedlora", **federation) -> RoundSettings:
    fed = FederationConfig(**{"rounds": 1, "checkpoint_every": 0, **federation})
    return RoundSettings(method=method, federation=fed, local_steps=STEPS, base_rank=RANK)


def trained(ins: TrainInstruction, shift: float | None = None, **measured) -> TrainReply:
    """A device's honest update: every assigned tensor moved by ``shift`` (default: its id)."""
    delta = ins.device_id + 1.0 if shift is None else shift
    names = assigned_names(ins.tensors, ins.config, BLOCKS)
    tensors = {n: ins.tensors[n] + delta for n in sorted(names)}
    measured = {"loss": 1.0 + ins.device_id, "step_seconds": [0.5] * STEPS, **measured}
    measured.setdefault("median_step_seconds", 0.5)
    return TrainReply(ins.device_id, tensors, samples(ins.device_id), measured)


class FakeExecutor:
    """Canned replies: ``respond`` answers each instruction (default: an honest update)."""

    def __init__(
        self, respond: Callable[[TrainInstruction], TrainReply] = trained, num_devices: int = 4
    ) -> None:
        self.respond, self.num_devices = respond, num_devices
        self.sent: list[list[TrainInstruction]] = []
        self.evaluated: list[dict[str, torch.Tensor]] = []

    def device_samples(self) -> list[int]:
        return [samples(d) for d in range(self.num_devices)]

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]:
        self.sent.append(instructions)
        return [self.respond(ins) for ins in instructions]

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.evaluated.append(state)
        return {"accuracy": 0.5, "loss": 0.25}


def run(executor: FakeExecutor, spec: FleetSpec | None = None, method="fedlora", **federation):
    return run_rounds(
        settings(method, **federation), spec or fleet(), PROFILE, BLOCKS, executor, global_state()
    )


def devices_of(record: dict) -> dict[int, dict]:
    return {d["device"]: d for d in record["devices"]}


# --------------------------------------------------------------------------- a plain round


def test_every_planned_device_is_aggregated_timed_and_recorded():
    executor = FakeExecutor()
    outcome = run(executor)
    (m,) = outcome.metrics
    assert m["sampled"] == [0, 1, 2, 3] and m["over_selected"] == 0 and m["offline"] == 0
    assert m["dropped"] == m["rejected"] == m["sat_out"] == m["out_of_memory"] == {}
    full = DeviceConfig(depth=BLOCKS)
    assert all(ins.config == full for ins in executor.sent[0])
    # sample-weighted mean of the shifts 1..4, on every tensor
    mean = sum(samples(d) * (d + 1) for d in range(4)) / sum(samples(d) for d in range(4))
    assert all(torch.allclose(t, torch.full_like(t, mean)) for t in outcome.state.values())
    assert m["train_loss"] == pytest.approx(mean)  # loss 1 + id: the same weights
    compute = STEPS * step_seconds(PROFILE, full, 1.0)
    for d, record in devices_of(m).items():
        assert record["compute_seconds"] == pytest.approx(compute)
        assert record["memory_bytes"] == memory_bytes(PROFILE, full)
        assert record["num_samples"] == samples(d) and record["loss"] == 1.0 + d
        total = record["compute_seconds"] + record["download_seconds"] + record["upload_seconds"]
        assert record["waiting_seconds"] == pytest.approx(m["virtual_seconds"] - total)
    assert m["virtual_seconds"] == pytest.approx(
        max(r["compute_seconds"] + r["download_seconds"] + r["upload_seconds"]
            for r in m["devices"])
    )  # fmt: skip
    assert m["virtual_seconds_total"] == outcome.clock.now == m["virtual_seconds"]
    assert m["bytes_up"] == sum(r["bytes_up"] for r in m["devices"]) > 0
    assert outcome.capacity.failure_rate == 0.0


def test_the_clock_adds_up_over_rounds_and_eval_every_skips_rounds():
    executor = FakeExecutor()
    outcome = run(executor, rounds=5, eval_every=2)
    evaluated = [m["round"] for m in outcome.metrics if "test_accuracy" in m]
    assert evaluated == [2, 4, 5] and len(executor.evaluated) == 3  # and always the last
    assert all(("test_loss" in m) == (m["round"] in evaluated) for m in outcome.metrics)
    totals = [m["virtual_seconds_total"] for m in outcome.metrics]
    assert totals == pytest.approx(
        [sum(m["virtual_seconds"] for m in outcome.metrics[: i + 1]) for i in range(5)]
    )
    seconds = [m["host_seconds"] for m in outcome.metrics]
    assert outcome.metrics[-1]["host_seconds_total"] == pytest.approx(sum(seconds))


def test_a_device_without_memory_for_the_plan_sits_out_and_gets_nothing():
    spec = FleetSpec(
        tiers=(Tier("big", 3, 1.0, memory=2.0), Tier("small", 1, 1.0, memory=0.5)), per_round=4
    )
    executor = FakeExecutor()
    (m,) = run(executor, spec).metrics
    assert list(m["sat_out"]) == ["3"] and "memory" in m["sat_out"]["3"]
    assert [ins.device_id for ins in executor.sent[0]] == [0, 1, 2]
    assert sorted(devices_of(m)) == [0, 1, 2]


def test_on_the_default_fleet_exactly_the_devices_without_memory_sit_out():
    config = load_config(None, ["federation.num_devices=8", "federation.devices_per_round=4"])
    spec = resolve_fleet(config)
    assert [t.count for t in spec.tiers] == [3, 4, 1]  # 30/40/10 scaled to 8 devices
    outcome = run(FakeExecutor(num_devices=8), spec, rounds=3)
    full = DeviceConfig(depth=BLOCKS)
    trained = sat_out = 0
    for m in outcome.metrics:
        devices = devices_for_round(spec, full_footprint(PROFILE, RANK), 0, m["round"])
        fits = {d: memory_bytes(PROFILE, full) <= 0.9 * devices[d].memory_budget_bytes
                for d in m["sampled"]}  # fmt: skip
        assert set(devices_of(m)) == {d for d, ok in fits.items() if ok}
        assert {int(d) for d in m["sat_out"]} == {d for d, ok in fits.items() if not ok}
        for d, record in devices_of(m).items():
            slowdown, uplink = devices[d].slowdown, devices[d].uplink
            assert record["compute_seconds"] == pytest.approx(
                STEPS * step_seconds(PROFILE, full, slowdown)
            )
            assert record["upload_seconds"] == pytest.approx(record["bytes_up"] / uplink)
        trained, sat_out = trained + len(m["devices"]), sat_out + len(m["sat_out"])
    assert trained > 0 and sat_out > 0  # the small tier cannot hold full depth; the others can
    summary = summarize(config, outcome.metrics, [], BLOCKS)
    assert summary["virtual_seconds"] == outcome.clock.now
    assert (summary["device_rounds"], summary["device_rounds_sat_out"]) == (trained, sat_out)


def test_offline_devices_are_counted_and_not_sampled():
    executor = FakeExecutor()
    outcome = run(executor, fleet(availability=0.5), rounds=4)
    for r, m in enumerate(outcome.metrics, start=1):
        online = [d.id for d in devices_for_round(fleet(availability=0.5), 1, 0, r) if d.available]
        assert m["sampled"] == online and m["offline"] == 4 - len(online)
    assert any(m["offline"] for m in outcome.metrics)


# --------------------------------------------------------------------------- planner.infeasible

CHECKPOINTED = dataclasses.replace(
    PROFILE, saved_bytes_checkpointed=(300, 400), saved_bytes_bottom_checkpointed=(350, 450)
)
"""PROFILE with the bytes a checkpointed block keeps: M(L, 0) needs 1.0 of the footprint, one
checkpointed block about 0.88 of it, both about 0.67."""


def memory_ladder() -> FleetSpec:
    """Devices 0-3 with room for full depth with no, one, two and not even two checkpointed
    blocks (after the margin κ = 0.1); device 3 is also three times slower."""
    tiers = (
        Tier("k0", 1, 1.0, memory=1.2),
        Tier("k1", 1, 1.0, memory=1.0),
        Tier("k2", 1, 1.0, memory=0.8),
        Tier("none", 1, 3.0, memory=0.5),
    )
    return FleetSpec(tiers=tiers, per_round=4)


def run_infeasible(mode: str, executor: FakeExecutor, method: str = "fedlora", rounds: int = 1):
    spec = dataclasses.replace(
        settings(method, rounds=rounds), planner=PlannerConfig(infeasible=mode)
    )
    return run_rounds(spec, memory_ladder(), CHECKPOINTED, BLOCKS, executor, global_state())


def test_the_memory_ladder_is_what_the_infeasible_tests_assume():
    footprint = full_footprint(CHECKPOINTED, RANK)
    budgets = [d.memory_budget_bytes for d in devices_for_round(memory_ladder(), footprint, 0, 1)]
    needs = [memory_bytes(CHECKPOINTED, DeviceConfig(BLOCKS, checkpointed=k)) for k in (0, 1, 2)]
    fits = [[need <= 0.9 * budget for need in needs] for budget in budgets]
    assert fits == [[True] * 3, [False, True, True], [False, False, True], [False] * 3]


def test_checkpoint_gives_each_device_the_fewest_checkpointed_blocks_that_fit():
    executor = FakeExecutor()
    (m,) = run_infeasible("checkpoint", executor).metrics
    sent = {ins.device_id: ins.config for ins in executor.sent[0]}
    assert sent == {d: DeviceConfig(BLOCKS, checkpointed=d) for d in (0, 1, 2)}
    assert list(m["sat_out"]) == ["3"]
    assert "with 2 checkpointed blocks" in m["sat_out"]["3"] and "memory" in m["sat_out"]["3"]
    records = devices_of(m)
    assert "checkpointed" not in records[0]
    assert [records[d]["checkpointed"] for d in (1, 2)] == [1, 2]
    for d, record in records.items():
        assert "over_budget" not in record
        assert record["memory_bytes"] == memory_bytes(CHECKPOINTED, sent[d])
        # one more forward per checkpointed block
        compute = STEPS * step_seconds(CHECKPOINTED, sent[d], 1.0)
        assert compute == pytest.approx(STEPS * (step_seconds(PROFILE, sent[0]) + d * PROFILE.f))
        assert record["compute_seconds"] == pytest.approx(compute)
    totals = [r["compute_seconds"] + r["download_seconds"] + r["upload_seconds"]
              for r in records.values()]  # fmt: skip
    assert m["virtual_seconds"] == pytest.approx(max(totals))  # nobody waits for device 3


def test_ignore_trains_and_waits_for_every_device_and_marks_who_is_over_budget():
    executor = FakeExecutor()
    (m,) = run_infeasible("ignore", executor).metrics
    assert {ins.device_id: ins.config for ins in executor.sent[0]} == {
        d: DeviceConfig(BLOCKS) for d in range(4)
    }
    assert m["sat_out"] == {} and sorted(devices_of(m)) == [0, 1, 2, 3]
    assert {d: r.get("over_budget", False) for d, r in devices_of(m).items()} == {
        0: False,
        1: True,
        2: True,
        3: True,
    }
    # the slowest device, which cannot hold the config, is waited for
    assert m["straggler"] == 3
    slow = devices_of(m)[3]
    total = slow["compute_seconds"] + slow["download_seconds"] + slow["upload_seconds"]
    assert m["virtual_seconds"] == pytest.approx(total)
    assert slow["compute_seconds"] == pytest.approx(
        STEPS * step_seconds(CHECKPOINTED, DeviceConfig(BLOCKS), 3.0)
    )


def test_sit_out_trains_only_the_devices_that_fit():
    executor = FakeExecutor()
    (m,) = run_infeasible("sit-out", executor).metrics
    assert [ins.device_id for ins in executor.sent[0]] == [0]
    assert sorted(m["sat_out"]) == ["1", "2", "3"] and sorted(devices_of(m)) == [0]
    assert all("checkpointed" not in reason for reason in m["sat_out"].values())


def test_ignore_consults_no_memory_factor_but_sit_out_does():
    # device 0 reports three times the saved bytes predicted: the server then plans it as if
    # its budget were that much smaller, except where memory is not enforced
    predicted = saved_bytes(CHECKPOINTED, DeviceConfig(BLOCKS))

    def respond(ins):
        more = {"peak_saved_bytes": 3 * predicted} if ins.device_id == 0 else {}
        return trained(ins, **more)

    second = {}
    for mode in ("sit-out", "ignore"):
        outcome = run_infeasible(mode, FakeExecutor(respond), rounds=2)
        assert outcome.capacity.memory_factor(0) == pytest.approx(3.0)
        second[mode] = outcome.metrics[1]
    assert "0" in second["sit-out"]["sat_out"]
    assert "over_budget" not in devices_of(second["ignore"])[0]  # its declared budget holds it


def test_ignore_consults_no_memory_ceiling():
    first = run_infeasible("ignore", FakeExecutor())
    first.capacity.observe_out_of_memory(0, 1.0)  # below any config
    resume = Checkpoint(1, first.state, first.clock, first.capacity, 0.0)
    spec = dataclasses.replace(
        settings("fedlora", rounds=2), planner=PlannerConfig(infeasible="ignore")
    )
    executor = FakeExecutor()
    outcome = run_rounds(
        spec, memory_ladder(), CHECKPOINTED, BLOCKS, executor, global_state(), resume=resume
    )
    (m,) = outcome.metrics
    assert 0 in devices_of(m) and "over_budget" not in devices_of(m)[0]


def test_hetlora_ranks_by_speed_alone_when_memory_is_ignored_and_checkpoints_who_would_sit_out():
    by_mode = {}
    for mode in ("ignore", "checkpoint", "sit-out"):
        executor = FakeExecutor()
        (m,) = run_infeasible(mode, executor, "hetlora").metrics
        sent = {ins.device_id: ins.config for ins in executor.sent[0]}
        by_mode[mode] = (sent, m)
    # ranks {1, 2, 4} (r = 2); device 3 is three times slower: the smallest rank by speed
    sent, m = by_mode["ignore"]
    assert {d: (c.rank, c.checkpointed) for d, c in sent.items()} == {
        0: (4, 0),
        1: (4, 0),
        2: (4, 0),
        3: (1, 0),
    }
    assert m["sat_out"] == {} and [d for d, r in devices_of(m).items() if "over_budget" in r] == [
        1,
        2,
        3,
    ]
    sent, m = by_mode["checkpoint"]  # who no rank fits trains the smallest, checkpointing
    assert {d: (c.rank, c.checkpointed) for d, c in sent.items()} == {
        0: (4, 0),
        1: (1, 1),
        2: (1, 2),
    }
    assert list(m["sat_out"]) == ["3"] and "at rank 1" in m["sat_out"]["3"]
    sent, m = by_mode["sit-out"]
    assert {d: c.rank for d, c in sent.items()} == {0: 4} and sorted(m["sat_out"]) == [
        "1",
        "2",
        "3",
    ]


# --------------------------------------------------------------------------- drops and deadlines


def test_an_error_reply_is_dropped_with_its_reason_and_counts_as_a_failure():
    def respond(ins):
        if ins.device_id == 1:
            return TrainReply(1, {}, 0, error="crashed (injected fault)")
        return trained(ins, shift=1.0)

    outcome = run(FakeExecutor(respond))
    (m,) = outcome.metrics
    assert m["dropped"] == {"1": "crashed (injected fault)"}
    assert sorted(devices_of(m)) == [0, 2, 3]
    assert all(torch.allclose(t, torch.ones_like(t)) for t in outcome.state.values())
    gamma = 0.7  # one of four failed, blended into a rate of 0
    assert outcome.capacity.failure_rate == pytest.approx((1 - gamma) * 0.25)


def test_a_device_past_the_deadline_is_dropped_and_the_round_ends_at_the_deadline():
    def respond(ins):
        return trained(ins, delay_factor=50.0) if ins.device_id == 2 else trained(ins, shift=1.0)

    outcome = run(FakeExecutor(respond), deadline_slack=0.5)
    (m,) = outcome.metrics
    assert set(m["dropped"]) == {"2"} and m["dropped"]["2"].startswith("missed the deadline")
    planned = STEPS * step_seconds(PROFILE, DeviceConfig(depth=BLOCKS), 1.0)
    assert m["round_deadline"] > 1.5 * planned  # the planner's round time, 50 % slack
    assert m["virtual_seconds"] == m["round_deadline"]
    assert all(torch.allclose(t, torch.ones_like(t)) for t in outcome.state.values())
    # the late device still reported: the server now knows it as 50 times slower
    late = devices_for_round(fleet(), full_footprint(PROFILE, RANK), 0, 1)[2]
    assert outcome.capacity.estimate(late).slowdown == pytest.approx(50.0)


def test_a_fixed_round_deadline_overrides_the_planned_one():
    (m,) = run(FakeExecutor(), round_deadline=1e-3).metrics
    assert m["round_deadline"] == m["virtual_seconds"] == 1e-3
    assert m["devices"] == [] and len(m["dropped"]) == 4 and "train_loss" not in m


# --------------------------------------------------------------------------- out of memory


def oom_replies(after_retry: bool) -> Callable[[TrainInstruction], TrainReply]:
    """Device 0 runs out of memory on its plan in round 1: it retries with the fallback (and,
    with ``after_retry``, fails that too)."""

    def respond(ins):
        if ins.device_id != 0 or ins.round != 1:
            return trained(ins)
        assert ins.fallback is not None
        retry = {"failed_config": ins.config.as_dict()}
        if after_retry:
            retry["retry_failed_config"] = ins.fallback.as_dict()
            measured = {"oom_retry": retry}
            return TrainReply(0, {}, 0, measured, error="out of memory (after retry)")
        retry["used_config"] = ins.fallback.as_dict()
        return trained(dataclasses.replace(ins, config=ins.fallback), oom_retry=retry)

    return respond


def test_an_oom_retry_is_charged_the_failed_step_and_recorded_as_the_fallback():
    executor = FakeExecutor(oom_replies(after_retry=False))
    outcome = run(executor, method="fedquad", rounds=2, deadline_slack=10)  # the retry is on time
    ins = {i.device_id: i for i in executor.sent[0]}[0]
    planned, used = ins.config, ins.fallback
    assert memory_bytes(PROFILE, used) < memory_bytes(PROFILE, planned)
    m = outcome.metrics[0]
    record = devices_of(m)[0]
    assert (record["depth"], record["quantized"]) == (used.depth, used.quantized)
    assert m["out_of_memory"]["0"] == record["oom_retry"]
    assert record["oom_retry"]["used_config"] == used.as_dict()
    # the failed attempt's first step, then the retry's own steps
    steps = step_seconds(PROFILE, planned, 1.0) + STEPS * step_seconds(PROFILE, used, 1.0)
    assert record["compute_seconds"] == pytest.approx(steps)
    # the ceiling: never planned as much as the failed config again
    assert outcome.capacity.memory_ceiling(0) == memory_bytes(PROFILE, planned)
    again = {i.device_id: i for i in executor.sent[1]}[0]
    assert memory_bytes(PROFILE, again.config) < memory_bytes(PROFILE, planned)
    assert outcome.capacity.failure_rate == 0.0  # the retry's update was aggregated


@pytest.mark.parametrize("method", ["fedquad", "fedquad-noquant"])
def test_the_fallback_is_more_quantized_blocks_else_a_smaller_depth(method):
    deep = dataclasses.replace(settings(method), planner=PlannerConfig(epsilon=20))
    executor = FakeExecutor()
    run_rounds(deep, fleet(), PROFILE, BLOCKS, executor, global_state())
    assert {ins.config.depth for ins in executor.sent[0]} == {BLOCKS}
    for ins in executor.sent[0]:
        planned, used = ins.config, ins.fallback
        assert used is not None and memory_bytes(PROFILE, used) < memory_bytes(PROFILE, planned)
        if method == "fedquad":
            assert (used.depth, used.quantized) == (planned.depth, planned.quantized + 1)
        else:
            assert used.depth < planned.depth and used.quantized == 0


def test_an_oom_retry_that_fails_too_is_dropped_and_both_configs_lower_the_ceiling():
    executor = FakeExecutor(oom_replies(after_retry=True))
    outcome = run(executor, method="fedquad")
    ins = {i.device_id: i for i in executor.sent[0]}[0]
    (m,) = outcome.metrics
    assert m["dropped"] == {"0": "out of memory (after retry)"}
    assert set(m["out_of_memory"]) == {"0"} and 0 not in devices_of(m)
    smallest = min(memory_bytes(PROFILE, ins.config), memory_bytes(PROFILE, ins.fallback))
    assert outcome.capacity.memory_ceiling(0) == smallest


def test_a_device_under_its_ceiling_with_nothing_smaller_sits_out():
    # depth 1 with both of its blocks quantized is fedquad's cheapest; a ceiling below it
    # leaves the device nothing
    capacity_run = run(FakeExecutor(), method="fedquad")
    cheapest = memory_bytes(PROFILE, DeviceConfig(depth=1, quantized=1))
    capacity_run.capacity.observe_out_of_memory(1, cheapest)
    resume = Checkpoint(1, capacity_run.state, capacity_run.clock, capacity_run.capacity, 0.0)
    executor = FakeExecutor()
    outcome = run_rounds(
        settings("fedquad", rounds=2, checkpoint_every=0),
        fleet(),
        PROFILE,
        BLOCKS,
        executor,
        global_state(),
        resume=resume,
    )
    (m,) = outcome.metrics
    assert "1" in m["sat_out"] and 1 not in {i.device_id for i in executor.sent[0]}


# --------------------------------------------------------------------------- rejected updates


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        (lambda t: {**t, "head.weight": torch.full((2, WIDTH), math.nan)}, "NaN"),
        (lambda t: {**t, "blocks.7.lora_A.weight": torch.zeros(RANK, WIDTH)}, "not part of"),
        (lambda t: {"head.weight": torch.zeros(3, 3)}, "shape"),
        (lambda t: {}, "empty"),
    ],
)
def test_a_bad_update_is_rejected_with_its_reason_and_the_rest_aggregated(tensors, reason):
    def respond(ins):
        reply = trained(ins, shift=1.0)
        if ins.device_id == 3:
            reply = dataclasses.replace(reply, tensors=tensors(reply.tensors))
        return reply

    outcome = run(FakeExecutor(respond))
    (m,) = outcome.metrics
    assert list(m["rejected"]) == ["3"] and reason in m["rejected"]["3"]
    assert sorted(devices_of(m)) == [0, 1, 2]
    assert all(torch.allclose(t, torch.ones_like(t)) for t in outcome.state.values())
    assert outcome.capacity.failure_rate > 0


def test_an_update_a_device_was_not_assigned_is_rejected():
    def respond(ins):
        reply = trained(ins)
        if ins.device_id == 0:  # depth 1 trains block 1 only: block 0 is not its to send
            reply.tensors["blocks.0.lora_A.weight"] = torch.ones(RANK, WIDTH)
        return reply

    spec = fleet(memory=0.95)  # room for depth 1 only
    executor = FakeExecutor(respond)
    (m,) = run(executor, spec, method="fedquad-noquant").metrics
    assert {i.config.depth for i in executor.sent[0]} == {1}
    assert "was not assigned" in m["rejected"]["0"]


def test_a_norm_outlier_is_rejected_only_with_a_norm_bound():
    def respond(ins):
        return trained(ins, shift=1000.0 if ins.device_id == 1 else 1.0)

    (m,) = run(FakeExecutor(respond), norm_bound=10.0).metrics
    assert list(m["rejected"]) == ["1"] and "median" in m["rejected"]["1"]
    (m,) = run(FakeExecutor(respond), norm_bound=0.0).metrics
    assert m["rejected"] == {} and len(m["devices"]) == 4


# --------------------------------------------------------------------------- over-selection


def test_over_selection_samples_more_after_failures_within_its_cap():
    def respond(ins):
        if ins.device_id in (0, 1, 2):
            return TrainReply(ins.device_id, {}, 0, error="crashed")
        return trained(ins)

    spec = FleetSpec(tiers=(Tier("t", 8, 1.0, memory=2.0),), per_round=4)
    outcome = run(FakeExecutor(respond, num_devices=8), spec, rounds=3, over_selection=0.5)
    first, *later = outcome.metrics
    assert first["over_selected"] == 0 and len(first["sampled"]) == 4
    assert all(len(m["sampled"]) == 4 + m["over_selected"] for m in later)
    assert any(m["over_selected"] > 0 for m in later)
    assert all(m["over_selected"] <= 2 for m in later)  # ⌊0.5 · 4⌋


def test_over_selection_without_failures_samples_no_more():
    spec = FleetSpec(tiers=(Tier("t", 8, 1.0, memory=2.0),), per_round=4)
    plain = run(FakeExecutor(num_devices=8), spec, rounds=3)
    over = run(FakeExecutor(num_devices=8), spec, rounds=3, over_selection=0.5)
    assert [m["sampled"] for m in over.metrics] == [m["sampled"] for m in plain.metrics]
    assert all(m["over_selected"] == 0 for m in over.metrics)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_every_k_rounds_and_after_the_last_resume_to_the_same_rounds():
    saved: list[Checkpoint] = []
    whole = run_rounds(
        settings(rounds=5, checkpoint_every=2),
        fleet(),
        PROFILE,
        BLOCKS,
        FakeExecutor(),
        global_state(),
        on_checkpoint=lambda c: saved.append(copy.deepcopy(c)),  # as written to disk
    )
    assert [c.round for c in saved] == [2, 4, 5]
    assert saved[-1].clock.now == whole.clock.now
    assert all(torch.equal(saved[-1].state[k], v) for k, v in whole.state.items())
    resumed = run_rounds(
        settings(rounds=5),
        fleet(),
        PROFILE,
        BLOCKS,
        FakeExecutor(),
        global_state(),
        resume=saved[0],
    )
    assert [m["round"] for m in resumed.metrics] == [3, 4, 5]
    for a, b in zip(resumed.metrics, whole.metrics[2:], strict=True):
        keep = ("virtual_seconds_total", "sampled", "devices", "dropped", "train_loss")
        assert {k: a[k] for k in keep} == {k: b[k] for k in keep}


def test_faults_are_sent_with_the_instructions():
    faults = FaultConfig(crash_probability=0.5, delay_factor=7.0)
    executor = FakeExecutor()
    spec = settings(rounds=3)
    run_rounds(
        dataclasses.replace(spec, faults=faults),
        fleet(),
        PROFILE,
        BLOCKS,
        executor,
        global_state(),
    )
    sent = [i for round_ in executor.sent for i in round_]
    assert {i.fault for i in sent} == {None, "crash"} and {i.delay_factor for i in sent} == {7.0}
    assert len({i.seed for i in sent}) == len(sent)  # one seed per (round, device)


# --------------------------------------------------------------------------- records


def test_records_serialise_to_the_metrics_keys_in_order():
    config = DeviceConfig(depth=2, quantized=1, bits=4, rank=2, blocks=(0, 1))
    device = DeviceRecord(1, "t", config, 10, 5, 6, 7, 8, 0.1, 0.2, 0.3, 0.4, loss=0.5, node={})
    assert list(device.to_dict()) == [
        "device", "tier", "depth", "quantized", "bits", "rank", "blocks", "num_samples",
        "bytes_down", "bytes_up", "memory_bytes", "memory_budget_bytes", "compute_seconds",
        "download_seconds", "upload_seconds", "waiting_seconds", "loss", "node",
    ]  # fmt: skip
    assert device.to_dict()["blocks"] == [0, 1]
    record = RoundRecord(
        3, [1], 0, 0, {}, {}, [device], {2: "x"}, {}, 1.0, 1.0, 1, None, train_loss=0.5
    )
    record.test = {"accuracy": 0.9}
    out = record.to_dict()
    assert list(out) == [
        "round", "sampled", "over_selected", "offline", "sat_out", "rejected", "devices",
        "dropped", "out_of_memory", "round_deadline", "virtual_seconds", "virtual_seconds_total",
        "straggler", "deadline", "train_loss", "bytes_up", "bytes_down", "test_accuracy",
        "host_seconds", "host_seconds_total",
    ]  # fmt: skip
    assert out["dropped"] == {"2": "x"} and out["bytes_up"] == 6 and out["bytes_down"] == 5
    measured = DeviceRecord.measured(
        {"loss": 0.5, "step_seconds": [1.0, 2.0], "saved_bytes": {"per_block": [3]}, "x": 1}
    )
    assert measured == {"loss": 0.5, "host_seconds": 3.0, "saved_bytes_per_block": [3]}
