"""Board step compositions (docs/methods.md §6): a tier's own mix of forward, backward, quantization
and fixed cost, anchored at its full-depth step, used alike by the planner, the clock, the
out-of-memory charge, the simulated reports and the capacity estimator."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console
from test_rounds import PROFILE, STEPS, FakeExecutor, devices_of, fleet, oom_replies, run

from fedquad.config import load_config
from fedquad.cost.fleet import devices_for_round, fleet_from_dict, fleet_to_toml, load_fleet
from fedquad.cost.model import COMPOSITIONS, CostProfile, StepComposition, step_seconds
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.planners.base import PlanContext
from fedquad.workbench import resolve_fleet

JETSON = COMPOSITIONS["jetson"]


def profile(blocks: int, f: float = 0.01, g: float = 0.03, o: float = 0.004, c: float = 0.02):
    return CostProfile(
        num_blocks=blocks,
        frozen_weight_bytes=1000,
        lora_params=(10,) * blocks,
        head_params=4,
        saved_bytes=(100,) * blocks,
        saved_bytes_bottom=(80,) * blocks,
        quant_ratio={8: 0.3},
        head_saved_bytes=10,
        f=f,
        g=g,
        o=o,
        c=c,
    )


@pytest.mark.parametrize(("blocks", "share"), [(6, 0.71), (12, 0.68)])
def test_jetson_depth_one_costs_its_share_of_full_depth(blocks, share):
    p = profile(blocks)
    one, full = DeviceConfig(depth=1), DeviceConfig(depth=blocks)
    assert step_seconds(p, one, 1.0, JETSON) / step_seconds(p, full, 1.0, JETSON) == (
        pytest.approx(share, abs=0.005)
    )
    # the host's own mix saves more by depth here; the full-depth step is the anchor
    assert step_seconds(p, one) / step_seconds(p, full) < share
    assert step_seconds(p, full, 2.5, JETSON) == pytest.approx(step_seconds(p, full, 2.5))


def test_quantization_costs_a_quarter_of_a_blocks_backward():
    p = profile(6)
    full = step_seconds(p, DeviceConfig(depth=6), 1.0, JETSON)
    backward = full * (1 - JETSON.forward - JETSON.fixed) / 6
    plain = step_seconds(p, DeviceConfig(depth=4), 1.0, JETSON)
    quantized = step_seconds(p, DeviceConfig(depth=4, quantized=3), 1.0, JETSON)
    assert quantized - plain == pytest.approx(3 * 0.25 * backward)
    fixed = StepComposition(forward=0.5, fixed=0.2)
    assert step_seconds(p, DeviceConfig(depth=1), 1.0, fixed) == pytest.approx(
        full * (0.7 + 0.3 / 6)
    )


def test_compositions_are_checked():
    with pytest.raises(FedquadError, match="forward \\+ fixed = 1"):
        StepComposition(forward=0.7, fixed=0.3)
    with pytest.raises(FedquadError, match="fixed = -0.1 is not allowed"):
        StepComposition(forward=0.5, fixed=-0.1)


def test_a_fleet_file_names_a_composition_or_gives_one(tmp_path):
    data = {
        "tier": [
            {"name": "board", "count": 2, "slowdown": 2.0, "memory": 1.0, "composition": "jetson"},
            {"name": "own", "count": 1, "slowdown": 1.0, "memory": 1.0, "composition": {
                "forward": 0.5, "fixed": 0.1}},
            {"name": "host", "count": 1, "slowdown": 1.0, "memory": 1.0},
        ],
        "per_round": 2,
    }  # fmt: skip
    spec = fleet_from_dict(data)
    assert [t.composition for t in spec.tiers] == [
        JETSON,
        StepComposition(forward=0.5, fixed=0.1),
        None,
    ]
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_to_toml(spec))
    assert load_fleet(path) == spec
    assert 'composition = "jetson"' in path.read_text()
    devices = devices_for_round(spec, 1000, 0, 1)
    assert [d.composition for d in devices] == [JETSON, JETSON, spec.tiers[1].composition, None]
    bad = {"tier": [{**data["tier"][0], "composition": "tx3"}]}
    with pytest.raises(FedquadError, match="composition = 'tx3' is not allowed: use one of jetson"):
        fleet_from_dict(bad)
    bad = {"tier": [{**data["tier"][0], "composition": {"forwrd": 0.5}}]}
    with pytest.raises(FedquadError, match="forwrd"):
        fleet_from_dict(bad)


def test_default_jetson_is_the_default_fleet_on_the_board_clock():
    board = resolve_fleet(load_config(None, ["fleet.name='default-jetson'"]))
    host = resolve_fleet(load_config(None, []))
    assert all(t.composition == JETSON for t in board.tiers)
    assert [dataclasses.replace(t, composition=None) for t in board.tiers] == list(host.tiers)


def test_fleet_show_prints_each_tiers_composition():
    from fedquad.report.tables import fleet_table

    spec = resolve_fleet(load_config(None, ["fleet.name='default-jetson'"]))
    spec = dataclasses.replace(spec, tiers=(*spec.tiers[:2], dataclasses.replace(
        spec.tiers[2], composition=None)))  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=200).print(fleet_table(spec, profile(6), 0.1, 8, 6, None))
    text = out.getvalue()
    assert text.count("jetson (F 0.65, C 0)") == 2 and "host" in text


def test_the_planner_the_clock_the_oom_charge_and_the_estimator_use_the_tiers_composition():
    spec = fleet(composition=JETSON)
    ctx = PlanContext(profile=PROFILE, lora_depth=2, local_steps=STEPS)
    (device, *_) = devices_for_round(spec, 100_000, 0, 1)
    one = DeviceConfig(depth=1)
    assert ctx.round_seconds(device, one) == pytest.approx(
        STEPS * step_seconds(PROFILE, one, 1.0, JETSON)
        + ctx.cost(one).down / device.downlink
        + ctx.cost(one).up / device.uplink
    )
    assert step_seconds(PROFILE, one, 1.0, JETSON) != pytest.approx(step_seconds(PROFILE, one))

    executor = FakeExecutor(oom_replies(after_retry=False))
    outcome = run(executor, spec, method="fedquad", rounds=2, deadline_slack=10)
    ins = {i.device_id: i for i in executor.sent[0]}[0]
    record = devices_of(outcome.metrics[0])[0]
    charged = step_seconds(PROFILE, ins.config, 1.0, JETSON) + STEPS * step_seconds(
        PROFILE, ins.fallback, 1.0, JETSON
    )
    assert record["compute_seconds"] == pytest.approx(charged)
    # simulated reports are timed on the composition, so the estimated slowdown stays σ
    for d in range(4):
        assert outcome.capacity.estimate(devices_for_round(spec, 1, 0, 1)[d]).slowdown == (
            pytest.approx(1.0)
        )
