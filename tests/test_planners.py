"""Planners (docs/methods.md §4) on hand-made profiles and fleets: properties that hold for every
plan, checked over many random rounds. Pure: no model is loaded."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedquad.config import PlannerConfig, QuantConfig
from fedquad.cost.fleet import Device, default_fleet, devices_for_round, sample_available
from fedquad.cost.model import CostProfile, full_footprint
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.planners import METHODS, PlanContext, global_ranks, plan_round, rank_distribution
from fedquad.planners.greedy import efficient_options

MIB = 1 << 20


def minilm_like(ranks: tuple[int, ...] = (8,) * 6) -> CostProfile:
    """Numbers of the measured MiniLM profile at batch 16, sequence 128 (``fedquad profile``)."""
    per_rank = 6912  # LoRA parameters of one block per unit of rank
    lora = tuple(per_rank * r for r in ranks)
    return CostProfile(
        num_blocks=6,
        frozen_weight_bytes=round(86.6 * MIB),
        lora_params=(0,) * (6 - len(ranks)) + lora[::-1],
        head_params=770,
        saved_bytes=(round(90.4 * MIB),) * 6,
        saved_bytes_bottom=(round(88.0 * MIB),) * 6,
        quant_ratio={8: 0.258, 4: 0.133, 2: 0.070},
        head_saved_bytes=40_000,
        f=0.09,
        g=0.24,
        o=0.05,
        c=0.02,
        lora_ranks=(0,) * (6 - len(ranks)) + ranks[::-1],
        saved_bytes_path=(round(60.0 * MIB),) * 6,
    )


def context(profile: CostProfile | None = None, depth: int = 6, **options) -> PlanContext:
    profile = profile or minilm_like()
    return PlanContext(
        profile=profile,
        lora_depth=depth,
        quant=QuantConfig(),
        kappa=0.1,
        local_steps=10,
        options=PlannerConfig(**options),
        num_samples={i: 50 + i % 7 for i in range(80)},
    )


def round_devices(seed: int, r: int, ctx: PlanContext) -> list[Device]:
    fleet = default_fleet()
    devices = devices_for_round(fleet, full_footprint(ctx.profile, 8), seed, r)
    return [devices[i] for i in sample_available(devices, fleet.per_round, seed, r)]


ROUNDS = [(seed, r) for seed in range(3) for r in range(1, 11)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_config_fits_its_device_and_every_device_is_accounted_for(name):
    ctx = context()
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        plan = plan_round(name, devices, ctx, np.random.default_rng([seed, r]))
        assert set(plan.configs) | set(plan.sat_out) == {d.id for d in devices}
        assert not set(plan.configs) & set(plan.sat_out)
        by_id = {d.id: d for d in devices}
        for i, config in plan.configs.items():
            assert ctx.fits(by_id[i], config), (name, i, config)
            assert 1 <= config.depth <= ctx.lora_depth
        assert all(reason.startswith("memory:") for reason in plan.sat_out.values())


def test_fedquad_uses_the_fewest_quantized_blocks_that_fit():
    ctx = context()
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        plan = plan_round("fedquad", devices, ctx)
        by_id = {d.id: d for d in devices}
        for i, config in plan.configs.items():
            if config.quantized:
                fewer = dataclasses.replace(config, quantized=config.quantized - 1)
                assert not ctx.fits(by_id[i], fewer)


def test_fedquad_gives_every_default_fleet_device_a_config_and_fedlora_does_not():
    ctx = context()
    fedquad_out = fedlora_out = 0
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        fedquad_out += len(plan_round("fedquad", devices, ctx).sat_out)
        fedlora_out += len(plan_round("fedlora", devices, ctx).sat_out)
    assert fedquad_out == 0
    assert fedlora_out > 0  # the small tier cannot hold full depth unquantized


def test_fedquad_rounds_are_no_longer_than_fedlora_rounds_on_the_default_fleet():
    ctx = context()
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        by_id = {d.id: d for d in devices}

        fedquad, fedlora = plan_round("fedquad", devices, ctx), plan_round("fedlora", devices, ctx)
        longest = [
            max(ctx.round_seconds(by_id[i], c) for i, c in plan.configs.items())
            for plan in (fedquad, fedlora)
        ]
        assert longest[0] <= longest[1], (seed, r)


def test_anchored_round_is_no_longer_than_the_slowest_cheapest_option():
    ctx = context()
    eps = ctx.options.epsilon
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        by_id = {d.id: d for d in devices}
        plan = plan_round("fedquad", devices, ctx)
        cheapest = []
        for i in plan.configs:
            options = [
                DeviceConfig(1, q) for q in range(2) if ctx.fits(by_id[i], DeviceConfig(1, q))
            ]
            cheapest.append(ctx.round_seconds(by_id[i], options[0]))
        bound = (1 + eps) * max(cheapest)
        assert plan.deadline == pytest.approx(bound)
        longest = max(ctx.round_seconds(by_id[i], c) for i, c in plan.configs.items())
        assert longest <= bound + 1e-9


def test_anchored_greedy_fills_waiting_time_with_depth():
    """A fast device with memory to spare goes deeper than the straggler's cheapest option."""
    ctx = context()
    slow = Device(0, "small", 2.66, 10**10, 2e6, 15e6)
    fast = Device(1, "large", 1.0, 10**10, 2e6, 15e6)
    plan = plan_round("fedquad", [slow, fast], ctx)
    assert plan.configs[0].depth == 1
    assert plan.configs[1].depth > 1
    # no device could go one option deeper without passing the deadline
    for i, device in [(0, slow), (1, fast)]:
        config = plan.configs[i]
        if config.depth < ctx.lora_depth:
            deeper = DeviceConfig(config.depth + 1)
            assert ctx.round_seconds(device, deeper) > plan.deadline


def score(plan, devices, ctx):
    """The deadline search's ``progress / T`` of a plan."""
    by_id = {d.id: d for d in devices}
    progress = sum(
        ctx.num_samples[i] * (c.depth - ctx.options.progress_lambda * c.quantized)
        for i, c in plan.configs.items()
    )
    return progress / max(ctx.round_seconds(by_id[i], c) for i, c in plan.configs.items())


def test_deadline_search_never_scores_below_the_anchored_plan():
    anchored, search = context(), context(deadline="search")
    deeper = 0
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, anchored)
        a, s = plan_round("fedquad", devices, anchored), plan_round("fedquad", devices, search)
        assert score(s, devices, search) >= score(a, devices, anchored) - 1e-9
        assert s.deadline >= a.deadline
        deeper += sum(s.configs[i].depth > a.configs[i].depth for i in a.configs)
    assert deeper > 0  # the search does let the straggler slow the round for depth


def test_a_device_with_no_feasible_option_sits_out_with_its_reason():
    ctx = context()
    tiny = Device(3, "tiny", 1.0, 50 * MIB, 2e6, 15e6)  # less than the frozen weights
    ok = Device(4, "large", 1.0, 10**10, 2e6, 15e6)
    for name in METHODS:
        plan = plan_round(name, [tiny, ok], ctx, np.random.default_rng(0))
        assert 3 in plan.sat_out and 4 in plan.configs, name
        assert "MiB" in plan.sat_out[3]


def test_legend_never_quantizes_and_plans_over_its_rank_distribution():
    ranks = tuple(rank_distribution(48, 3))
    ctx = context(minilm_like(ranks), depth=3)
    for seed, r in ROUNDS:
        plan = plan_round("legend", round_devices(seed, r, ctx), ctx)
        assert all(c.quantized == 0 and c.depth <= 3 for c in plan.configs.values())
    assert global_ranks("legend", PlannerConfig(), 12, 8, None) == [48, 24, 12, 6, 3, 3]
    assert global_ranks("joint", PlannerConfig(legend_depth=6), 6, 32, None) == [
        96,
        48,
        24,
        12,
        6,
        6,
    ]
    assert global_ranks("hetlora", PlannerConfig(), 6, 8, None) == [16] * 6
    assert global_ranks("fedquad", PlannerConfig(), 6, 8, 4) == [8] * 4


def test_rank_distributions_sum_to_the_total_and_never_increase():
    for total in range(6, 200, 7):
        for kind in ("halving", "uniform", "linear"):
            ranks = rank_distribution(total, 6, kind)
            assert sum(ranks) == total and len(ranks) == 6
            assert all(a >= b >= 1 for a, b in zip(ranks, ranks[1:], strict=False))
    assert rank_distribution(192, 6) == [96, 48, 24, 12, 6, 6]
    with pytest.raises(FedquadError, match="R = 4"):
        rank_distribution(4, 6)


def test_hetlora_gives_faster_devices_no_smaller_ranks():
    ctx = context(minilm_like((16,) * 6))
    devices = [Device(i, "x", s, 10**10, 2e6, 15e6) for i, s in enumerate([1.0, 1.44, 2.66, 5])]
    plan = plan_round("hetlora", devices, ctx)
    ranks = [plan.configs[i].rank for i in range(4)]
    assert ranks == sorted(ranks, reverse=True)
    assert ranks[0] == 16 and set(ranks) <= {2, 4, 8, 16}
    assert all(c.depth == 6 for c in plan.configs.values())


def test_fedra_draws_as_many_blocks_as_memory_holds_and_is_seeded():
    ctx = context()
    devices = round_devices(0, 1, ctx)
    a = plan_round("fedra", devices, ctx, np.random.default_rng(5))
    b = plan_round("fedra", devices, ctx, np.random.default_rng(5))
    assert a.configs == b.configs
    by_id = {d.id: d for d in devices}
    for i, config in a.configs.items():
        blocks = config.trained_blocks(6)
        assert blocks == sorted(set(blocks)) and config.depth == 6 - blocks[0]
        count = max(d for d in range(1, 7) if ctx.fits(by_id[i], DeviceConfig(d)))
        assert len(blocks) == count
    # memory for two trained blocks and one gap block: subsets other than the top two fit
    from fedquad.cost.model import memory_bytes

    budget = (memory_bytes(ctx.profile, DeviceConfig(2)) + 70 * MIB) / 0.9
    roomy = Device(99, "x", 1.0, int(budget), 2e6, 15e6)
    draws = {
        plan_round("fedra", [roomy], ctx, np.random.default_rng(s)).configs[99] for s in range(12)
    }
    assert len(draws) > 1 and all(len(c.trained_blocks(6)) == 2 for c in draws)
    assert all(ctx.fits(roomy, c) for c in draws)


def test_planning_is_deterministic_and_unknown_methods_are_refused():
    ctx = context(deadline="search")
    devices = round_devices(1, 4, ctx)
    for name in METHODS:
        first = plan_round(name, devices, ctx, np.random.default_rng(9))
        again = plan_round(name, devices, ctx, np.random.default_rng(9))
        assert first.configs == again.configs and first.sat_out == again.sat_out
    with pytest.raises(FedquadError, match="fedquad, legend"):
        plan_round("nope", devices, ctx)


def test_ten_thousand_devices_plan_with_every_device_accounted_for():
    rng = np.random.default_rng(0)
    ctx = context()
    footprint = full_footprint(ctx.profile, 8)
    devices = [
        Device(i, "x", float(s), int(m * footprint), float(u), 15e6)
        for i, (s, m, u) in enumerate(
            zip(
                rng.choice([1.0, 1.44, 2.66], 10_000),
                rng.choice([0.4, 1.2, 2.0], 10_000),
                rng.uniform(1e6, 3e6, 10_000),
                strict=True,
            )
        )
    ]
    plan = plan_round("fedquad", devices, ctx)
    assert len(plan.configs) + len(plan.sat_out) == 10_000
    assert not plan.sat_out
    assert math.isfinite(plan.deadline or math.nan)


def test_adaptive_deadline_scores_at_least_search_and_leaves_out_only_the_slowest():
    # fixed costs dominate (as measured at sequence 64): a slow device is slow at any depth
    profile = dataclasses.replace(minilm_like(), f=0.07, g=0.05, c=0.3)
    search = context(profile, deadline="search")
    adaptive = context(profile, deadline="adaptive")
    left_out = 0
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, adaptive)
        by_id = {d.id: d for d in devices}
        s, a = plan_round("joint", devices, search), plan_round("joint", devices, adaptive)
        assert score(a, devices, adaptive) >= score(s, devices, search) - 1e-9
        assert a.deadline <= s.deadline or set(a.configs) == set(s.configs)
        able = set(s.configs)
        assert set(a.configs) <= able and len(a.configs) >= math.ceil(0.5 * len(able))
        for i, c in a.configs.items():
            assert adaptive.round_seconds(by_id[i], c) <= a.deadline + 1e-9
        out = able - set(a.configs)
        left_out += len(out)
        if out:  # the ones left out are slower than everyone kept, and say why
            cheapest = {i: efficient_options(by_id[i], adaptive, True)[0] for i in able}
            quickest = {i: adaptive.round_seconds(by_id[i], cheapest[i]) for i in able}
            assert min(quickest[i] for i in out) >= max(quickest[i] for i in a.configs) - 1e-9
            assert all("adaptive deadline" in a.sat_out[i] for i in out)
    assert left_out > 0  # on the default fleet the small tier is worth leaving out sometimes


def test_adaptive_deadline_keeps_everyone_when_min_participation_is_one():
    ctx, search = context(deadline="adaptive", min_participation=1.0), context(deadline="search")
    for seed, r in ROUNDS:
        devices = round_devices(seed, r, ctx)
        assert (
            plan_round("joint", devices, ctx).configs
            == plan_round("joint", devices, search).configs
        )
