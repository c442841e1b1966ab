"""``planner.infeasible`` (docs/methods.md §4.4) without a model: the option's checks, which blocks
a config checkpoints, what the cost model charges for them and what the baselines' planners do
with a device that cannot hold their config."""

from __future__ import annotations

import dataclasses

import pytest

from fedquad.config import PlannerConfig, QuantConfig, load_config
from fedquad.cost.fleet import Device
from fedquad.cost.model import (
    COMPOSITIONS,
    CostProfile,
    memory_bytes,
    saved_bytes,
    step_seconds,
)
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.methods_registry import METHODS
from fedquad.planners import PlanContext, plan_round

MIB = 1 << 20
PROFILE = CostProfile(
    num_blocks=4,
    frozen_weight_bytes=100 * MIB,
    lora_params=(1000,) * 4,
    head_params=10,
    saved_bytes=(40 * MIB,) * 4,
    saved_bytes_bottom=(38 * MIB,) * 4,
    quant_ratio={8: 0.25},
    head_saved_bytes=MIB,
    f=0.1,
    g=0.2,
    o=0.05,
    c=0.3,
    lora_ranks=(8,) * 4,
    saved_bytes_checkpointed=(4 * MIB,) * 4,
    saved_bytes_bottom_checkpointed=(5 * MIB,) * 4,
)


def device(i: int, memory_mib: float, slowdown: float = 1.0) -> Device:
    return Device(
        id=i,
        tier="t",
        slowdown=slowdown,
        memory_budget_bytes=int(memory_mib * MIB),
        uplink=1e6,
        downlink=1e7,
    )


def context(mode: str, blocks: int = 0) -> PlanContext:
    return PlanContext(
        profile=PROFILE,
        lora_depth=4,
        quant=QuantConfig(blocks=blocks),
        options=PlannerConfig(infeasible=mode),
    )


# --------------------------------------------------------------------------- the option


def test_the_option_defaults_to_sit_out_and_names_what_is_allowed():
    assert PlannerConfig().infeasible == "sit-out"
    with pytest.raises(FedquadError, match="planner.infeasible = 'skip' is not allowed: use one"):
        load_config(None, ["method='fedlora'", "planner.infeasible='skip'"])
    for method in ("fedlora", "hetlora", "flexlora"):
        for mode in ("ignore", "checkpoint", "sit-out"):
            config = load_config(None, [f"method='{method}'", f"planner.infeasible='{mode}'"])
            assert config.planner.infeasible == mode


@pytest.mark.parametrize("name", [m.name for m in METHODS.values() if m.adaptive])
def test_an_adaptive_method_refuses_any_other_mode_than_sit_out(name):
    load_config(None, [f"method='{name}'", "planner.infeasible='sit-out'"])
    with pytest.raises(FedquadError) as raised:
        load_config(None, [f"method='{name}'", "planner.infeasible='ignore'"])
    message = str(raised.value)
    assert f"does not apply to {name}" in message and "fedlora, hetlora, flexlora" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- which blocks


def test_checkpointed_blocks_are_the_lowest_of_the_span_never_a_quantized_one():
    assert DeviceConfig(4, checkpointed=2).checkpointed_blocks(6) == [2, 3]
    bottom = DeviceConfig(4, quantized=1, checkpointed=2)
    assert bottom.quantized_blocks(6) == [2] and bottom.checkpointed_blocks(6) == [3, 4]
    top = DeviceConfig(4, quantized=1, quant_position="top", checkpointed=3)
    assert top.quantized_blocks(6) == [5] and top.checkpointed_blocks(6) == [2, 3, 4]
    for config in (bottom, top):
        assert not set(config.checkpointed_blocks(6)) & set(config.quantized_blocks(6))
    assert "checkpointed" not in DeviceConfig(4).as_dict()
    assert DeviceConfig(4, checkpointed=1).as_dict()["checkpointed"] == 1


# --------------------------------------------------------------------------- the cost model


def test_a_checkpointed_block_is_charged_its_kept_bytes_and_one_more_forward():
    full, one, two = (DeviceConfig(4, checkpointed=k) for k in (0, 1, 2))
    # the bottom block keeps its bottom bytes, the next its inner ones
    assert saved_bytes(PROFILE, full) - saved_bytes(PROFILE, one) == 38 * MIB - 5 * MIB
    assert saved_bytes(PROFILE, one) - saved_bytes(PROFILE, two) == 40 * MIB - 4 * MIB
    assert memory_bytes(PROFILE, full) - memory_bytes(PROFILE, two) == 69 * MIB
    assert step_seconds(PROFILE, two) == pytest.approx(step_seconds(PROFILE, full) + 2 * PROFILE.f)
    # on a tier's composition a block's forward is its share F/L of the full-depth step
    jetson = COMPOSITIONS["jetson"]
    extra = step_seconds(PROFILE, two, 2.0, jetson) - step_seconds(PROFILE, full, 2.0, jetson)
    assert extra == pytest.approx(2 * step_seconds(PROFILE, full, 2.0, jetson) * 0.65 / 4)
    # quantized and checkpointed blocks never overlap: one block of each at depth 2; the lowest
    # checkpointed block keeps the inputs every block is given (its bottom bytes), even above a
    # quantized one
    mixed = DeviceConfig(2, quantized=1, checkpointed=1)
    assert saved_bytes(PROFILE, mixed) == MIB + round(0.25 * 38 * MIB) + 5 * MIB


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (DeviceConfig(2, checkpointed=3), "use 0 to the 2 trained blocks"),
        (DeviceConfig(3, quantized=2, checkpointed=2), "use 0 to the 1 trained blocks"),
        (DeviceConfig(2, checkpointed=-1), "k = -1 is not allowed"),
    ],
)
def test_impossible_checkpointed_counts_are_refused(config, match):
    with pytest.raises(FedquadError, match=match):
        memory_bytes(PROFILE, config)


def test_a_profile_without_checkpointed_bytes_cannot_price_them_and_round_trips():
    old = dataclasses.replace(
        PROFILE, saved_bytes_checkpointed=(), saved_bytes_bottom_checkpointed=()
    )
    with pytest.raises(FedquadError, match="no checkpointed bytes"):
        saved_bytes(old, DeviceConfig(4, checkpointed=1))
    assert saved_bytes(old, DeviceConfig(4)) == saved_bytes(PROFILE, DeviceConfig(4))
    assert CostProfile.from_dict(PROFILE.to_dict()) == PROFILE
    written = old.to_dict()
    del written["saved_bytes_checkpointed"], written["saved_bytes_bottom_checkpointed"]
    assert CostProfile.from_dict(written) == old  # profiles written before the option read


# --------------------------------------------------------------------------- the planners

# Full depth needs 100 + 1 + 38 + 3·40 MiB (+ LoRA); the limit is 0.9 × the budget.
LADDER = [device(0, 300), device(1, 270), device(2, 150), device(3, 100, slowdown=3.0)]


def test_fedlora_in_each_mode():
    full = DeviceConfig(4)
    plan = plan_round("fedlora", LADDER, context("sit-out"))
    assert plan.configs == {0: full} and sorted(plan.sat_out) == [1, 2, 3]
    assert not plan.over_budget
    plan = plan_round("fedlora", LADDER, context("ignore"))
    assert plan.configs == dict.fromkeys(range(4), full) and plan.sat_out == {}
    assert plan.over_budget == {1, 2, 3}
    ctx = context("checkpoint")
    plan = plan_round("fedlora", LADDER, ctx)
    assert sorted(plan.configs) == [0, 1, 2] and not plan.over_budget
    assert [plan.configs[d].checkpointed for d in (0, 1, 2)] == [0, 1, 4]
    for d, config in plan.configs.items():  # the fewest that fit
        assert ctx.fits(LADDER[d], config)
        if config.checkpointed:
            fewer = dataclasses.replace(config, checkpointed=config.checkpointed - 1)
            assert not ctx.fits(LADDER[d], fewer)
    assert "with 4 checkpointed blocks" in plan.sat_out[3]


def test_fedlora_checkpoints_only_blocks_quant_blocks_leaves_unquantized():
    ctx = context("checkpoint", blocks=1)
    plan = plan_round("fedlora", [device(0, 140)], ctx)
    (config,) = plan.configs.values()
    assert config.quantized == 1 and config.checkpointed == 3  # every unquantized block
    plan = plan_round("fedlora", [device(0, 110)], ctx)
    assert "depth 4 with 1 quantized and 3 checkpointed blocks needs" in plan.sat_out[0]


@pytest.mark.parametrize("name", ["hetlora", "flexlora"])
def test_rank_by_speed_in_each_mode(name):
    # ranks {2, 4, 8, 16}; the device three times slower may take only the two smallest
    plan = plan_round(name, LADDER, context("ignore"))
    assert {d: c.rank for d, c in plan.configs.items()} == {0: 16, 1: 16, 2: 16, 3: 4}
    assert plan.over_budget == {1, 2, 3} and plan.sat_out == {}
    sit_out = plan_round(name, LADDER, context("sit-out"))
    plan = plan_round(name, LADDER, context("checkpoint"))
    # the devices that would sit out train the smallest rank, checkpointing
    for d, config in sit_out.configs.items():
        assert plan.configs[d] == config
    for d in set(sit_out.sat_out) - set(plan.sat_out):
        assert plan.configs[d].rank == 2 and plan.configs[d].checkpointed > 0
    assert set(plan.sat_out) == {3} and not plan.over_budget
