"""Fleet files (docs/methods.md §6): defaults, TOML round trip, one-line errors, seeded draws."""

from __future__ import annotations

import dataclasses

import pytest

from fedquad.config import load_config
from fedquad.cost.fleet import (
    MB,
    MIB,
    TIERED_FLEETS,
    FleetSpec,
    Tier,
    decorrelated_fleet,
    default_fleet,
    devices_for_round,
    fleet_to_toml,
    load_fleet,
    papers_fleet,
    sample_available,
    sample_round,
)
from fedquad.cost.model import CostProfile, full_footprint, largest_feasible_depth
from fedquad.errors import FedquadError
from fedquad.workbench import resolve_fleet

FOOTPRINT = 7_860_000


def write(tmp_path, text: str):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


GOOD_TIER = """
[[tier]]
name = "small"
count = 3
slowdown = 2.0
memory = 0.5
uplink_mbps = [1.0, 3.0]
downlink_mbps = 15.0
"""


def test_default_fleet_matches_methods():
    spec = default_fleet()
    assert spec.num_devices == 80 and spec.per_round == 10
    assert [(t.name, t.count) for t in spec.tiers] == [("small", 30), ("medium", 40), ("large", 10)]
    assert [t.slowdown for t in spec.tiers] == [2.66, 1.44, 1.0]
    assert [t.memory for t in spec.tiers] == [0.4, 1.2, 2.0]
    assert all(t.uplink_mbps == (1.0, 3.0) and t.downlink_mbps == 15.0 for t in spec.tiers)


def sst2_like() -> CostProfile:
    """MiniLM-L6 with uniform rank 8 at batch 16, sequence 64 (the reproduction's workload):
    the measured sequence-128 profile's numbers with half its saved activations."""
    return CostProfile(
        num_blocks=6,
        frozen_weight_bytes=round(86.6 * MIB),
        lora_params=(6912 * 8,) * 6,
        head_params=770,
        saved_bytes=(round(45.2 * MIB),) * 6,
        saved_bytes_bottom=(round(44.0 * MIB),) * 6,
        quant_ratio={8: 0.258, 4: 0.133, 2: 0.070},
        head_saved_bytes=20_000,
        f=0.045,
        g=0.12,
        o=0.025,
        c=0.01,
        lora_ranks=(8,) * 6,
        saved_bytes_path=(round(30.0 * MIB),) * 6,
    )


def tier_depths(spec: FleetSpec, quantize: bool = False) -> dict[str, int | None]:
    """Each tier's largest feasible depth on the SST-2-like workload, margin κ = 0.1."""
    profile = sst2_like()
    footprint = full_footprint(profile, 8)
    return {
        t.name: largest_feasible_depth(profile, t.budget_bytes(footprint), 0.1, quantize=quantize)
        for t in spec.tiers
    }


def test_papers_fleet_has_the_default_speeds_on_the_prototype_memory_ladder():
    spec, default = papers_fleet(), default_fleet()
    assert (spec.num_devices, spec.per_round) == (80, 10)
    assert [(t.name, t.count, t.slowdown) for t in spec.tiers] == [
        (t.name, t.count, t.slowdown) for t in default.tiers
    ]
    assert [t.memory for t in spec.tiers] == [0.75, 1.15, 1.5]
    # docs/methods.md §6: depth 1 fits every tier, full depth the medium and large ones only
    assert tier_depths(spec) == {"small": tier_depths(spec)["small"], "medium": 6, "large": 6}
    assert 1 <= (tier_depths(spec)["small"] or 0) < 6
    # while the default fleet's small tier holds not even depth 1 unquantized
    assert tier_depths(default)["small"] is None


def test_decorrelated_fleet_splits_each_speed_class_into_low_and_high_memory():
    spec = decorrelated_fleet()
    assert (spec.num_devices, spec.per_round) == (80, 10)
    assert [(t.name, t.count, t.slowdown, t.memory) for t in spec.tiers] == [
        ("small-lowmem", 15, 2.66, 0.5),
        ("small-highmem", 15, 2.66, 1.15),
        ("medium-lowmem", 20, 1.44, 0.5),
        ("medium-highmem", 20, 1.44, 1.15),
        ("large-lowmem", 5, 1.0, 0.5),
        ("large-highmem", 5, 1.0, 1.15),
    ]
    plain, quantized = tier_depths(spec), tier_depths(spec, quantize=True)
    for name in plain:
        if name.endswith("highmem"):
            assert plain[name] == 6, name
        else:  # where quantization lets a device go deeper, fast ones included
            assert plain[name] is not None and plain[name] < quantized[name] == 6, name


@pytest.mark.parametrize("name", ["default", "papers", "decorrelated"])
def test_built_in_fleets_resolve_by_name_and_scale_to_the_asked_size(name):
    full = resolve_fleet(load_config(None, [f"fleet.name='{name}'"]))
    assert full == TIERED_FLEETS[name]()
    small = resolve_fleet(
        load_config(
            None,
            [f"fleet.name='{name}'", "federation.num_devices=16", "federation.devices_per_round=4"],
        )
    )
    assert (small.num_devices, small.per_round) == (16, 4)
    assert [t.count * 5 for t in small.tiers] == [t.count for t in full.tiers]


def test_an_unknown_fleet_name_lists_the_built_in_ones():
    names = "default, papers, decorrelated, default-jetson, papers-jetson, decorrelated-jetson"
    with pytest.raises(FedquadError, match=f"{names}, uniform"):
        resolve_fleet(load_config(None, ["fleet.name='paper'"]))


def test_toml_round_trip(tmp_path):
    spec = default_fleet()
    assert load_fleet(write(tmp_path, fleet_to_toml(spec))) == spec
    custom = FleetSpec(
        tiers=(
            Tier("pi", 5, slowdown=3.5, memory_mib=512.0, uplink_mbps=(0.5, 0.75)),
            Tier("jetson", 2, slowdown=1.0, memory=0.9, downlink_mbps=40.0, availability=0.25),
        ),
        per_round=4,
        base_slowdown=1.5,
    )
    assert load_fleet(write(tmp_path, fleet_to_toml(custom))) == custom
    for built_in in (papers_fleet(), decorrelated_fleet()):
        assert load_fleet(write(tmp_path, fleet_to_toml(built_in))) == built_in


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            GOOD_TIER.replace("slowdown =", "slowdwn ="),
            r"unknown .* 'slowdwn' \(did you mean 'slowdown'",
        ),
        ("per_rnd = 2\n" + GOOD_TIER, r"'per_rnd' \(did you mean 'per_round'"),
        (GOOD_TIER.replace("slowdown = 2.0", "slowdown = -2.0"), r"slowdown = -2.0 .*> 0"),
        (GOOD_TIER + "memory_mib = 256\n", r"memory = 0.5 and memory_mib = 256: give exactly one"),
        (GOOD_TIER.replace("memory = 0.5\n", ""), r"give exactly one"),
        (GOOD_TIER.replace("[1.0, 3.0]", "[3.0, 1.0]"), r"low <= high"),
        (GOOD_TIER.replace("count = 3", "count = 0"), r"count = 0"),
        ("per_round = 4\n" + GOOD_TIER, r"per_round = 4 .*fleet size 3"),
        ("", r"no \[\[tier\]\]"),
        ("[[tier]\n", r"not valid TOML"),
        (GOOD_TIER + "availability = 0\n", r"availability = 0 .*0 < a <= 1"),
        (GOOD_TIER + "availability = 1.5\n", r"availability = 1.5 .*0 < a <= 1"),
        (GOOD_TIER + 'availability = "x"\n', r"availability = 'x' .*0 < a <= 1"),
        (GOOD_TIER + "availability = true\n", r"availability = True .*0 < a <= 1"),
    ],
)
def test_bad_fleet_files_raise_one_line(tmp_path, text, match):
    with pytest.raises(FedquadError, match=match) as info:
        load_fleet(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FedquadError, match="does not exist"):
        load_fleet(tmp_path / "nope.toml")


def test_devices_ids_tiers_budgets():
    spec = default_fleet()
    devices = devices_for_round(spec, FOOTPRINT, seed=0, round_index=1)
    assert [d.id for d in devices] == list(range(80))
    assert [d.tier for d in devices] == ["small"] * 30 + ["medium"] * 40 + ["large"] * 10
    assert {d.memory_budget_bytes for d in devices[:30]} == {int(0.4 * FOOTPRINT)}
    assert {d.memory_budget_bytes for d in devices[70:]} == {int(2.0 * FOOTPRINT)}
    assert all(d.downlink == 15 * MB and d.available for d in devices)
    slowed = dataclasses.replace(spec, base_slowdown=2.0)
    assert devices_for_round(slowed, FOOTPRINT, 0, 1)[0].slowdown == pytest.approx(5.32)


def test_fractional_budgets_scale_absolute_do_not():
    spec = FleetSpec(
        tiers=(Tier("frac", 2, 1.0, memory=1.2), Tier("abs", 2, 1.0, memory_mib=100.0)),
        per_round=1,
    )
    one = devices_for_round(spec, FOOTPRINT, 0, 1)
    two = devices_for_round(spec, 3 * FOOTPRINT, 0, 1)
    assert two[0].memory_budget_bytes == int(1.2 * (3 * FOOTPRINT))
    assert one[0].memory_budget_bytes == int(1.2 * FOOTPRINT)
    assert one[2].memory_budget_bytes == two[2].memory_budget_bytes == 100 * MIB


def test_bandwidth_draws_are_seeded_per_round_and_in_range():
    spec = default_fleet()

    def uplinks(seed, r):
        return [d.uplink for d in devices_for_round(spec, FOOTPRINT, seed, r)]

    assert uplinks(7, 3) == uplinks(7, 3)
    assert uplinks(7, 3) != uplinks(7, 4)
    assert uplinks(7, 3) != uplinks(8, 3)
    for r in range(1, 6):
        values = uplinks(7, r)
        assert all(1 * MB <= v <= 3 * MB for v in values)
        assert len(set(values)) == len(values)  # drawn per device, not per tier
    narrow = FleetSpec(tiers=(Tier("t", 50, 1.0, memory=1.0, uplink_mbps=(0.5, 0.6)),), per_round=5)
    assert all(0.5 * MB <= d.uplink <= 0.6 * MB for d in devices_for_round(narrow, 10, 1, 1))


def test_sample_round_is_uniform_per_round():
    for r in (1, 2, 3):
        ids = sample_round(80, 10, seed=5, round_index=r)
        assert ids == sorted(ids) and ids == sample_round(80, 10, 5, r)
        assert len(set(ids)) == 10 and all(0 <= i < 80 for i in ids)
    assert sample_round(80, 10, 5, 1) != sample_round(80, 10, 5, 2)
    assert sample_round(80, 10, 5, 1) != sample_round(80, 10, 6, 1)
    with pytest.raises(FedquadError, match="per_round = 81"):
        sample_round(80, 81, 0, 1)


# --------------------------------------------------------------------------- availability


def with_availability(count: int, availability: float) -> FleetSpec:
    return FleetSpec(
        tiers=(Tier("t", count, 1.0, memory=1.0, availability=availability),), per_round=10
    )


def test_availability_one_changes_nothing():
    spec = default_fleet()
    assert all(t.availability == 1.0 for t in spec.tiers)
    for r in (1, 2, 3):
        devices = devices_for_round(spec, FOOTPRINT, seed=4, round_index=r)
        assert all(d.available for d in devices)
        assert sample_available(devices, 10, seed=4, round_index=r) == sample_round(80, 10, 4, r)


def test_availability_has_its_own_stream():
    # Bandwidths must not move when a tier becomes unreliable.
    full = devices_for_round(with_availability(200, 1.0), FOOTPRINT, 3, 2)
    half = devices_for_round(with_availability(200, 0.5), FOOTPRINT, 3, 2)
    assert [d.uplink for d in full] == [d.uplink for d in half]


def test_availability_half_is_seeded_and_about_half():
    spec = with_availability(2000, 0.5)

    def online(seed, r):
        return [d.available for d in devices_for_round(spec, FOOTPRINT, seed, r)]

    assert online(1, 1) == online(1, 1)
    assert online(1, 1) != online(1, 2)
    assert online(1, 1) != online(2, 1)
    for r in (1, 2, 3):
        assert 900 <= sum(online(1, r)) <= 1100  # 2000·0.5 ± 4.5σ


def test_availability_per_tier():
    spec = FleetSpec(
        tiers=(
            Tier("always", 500, 1.0, memory=1.0),
            Tier("rare", 500, 1.0, memory=1.0, availability=0.1),
        ),
        per_round=10,
    )
    devices = devices_for_round(spec, FOOTPRINT, 0, 1)
    assert all(d.available for d in devices[:500])
    assert 20 <= sum(d.available for d in devices[500:]) <= 80  # 500·0.1 ± 4.5σ


def test_unavailable_devices_are_never_sampled():
    spec = with_availability(40, 0.3)
    for r in range(1, 30):
        devices = devices_for_round(spec, FOOTPRINT, 9, r)
        online = {d.id for d in devices if d.available}
        ids = sample_available(devices, 10, 9, r)
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert set(ids) <= online
        assert len(ids) == min(10, len(online))  # fewer only when fewer are online
        assert ids == sample_available(devices, 10, 9, r)


def test_sample_available_with_few_or_none_online():
    devices = devices_for_round(with_availability(12, 1.0), FOOTPRINT, 0, 1)
    some = [dataclasses.replace(d, available=d.id in (3, 7)) for d in devices]
    assert sample_available(some, 10, 0, 1) == [3, 7]
    none = [dataclasses.replace(d, available=False) for d in devices]
    assert sample_available(none, 10, 0, 1) == []
    with pytest.raises(FedquadError, match="per_round = 13 .*fleet size 12") as info:
        sample_available(devices, 13, 0, 1)
    assert "\n" not in str(info.value)
