"""The claims of docs/methods.md §8 against their thresholds, from canned paired times: which rows
an arm's entries allow, the rival each is measured over, and the verdict read from the interval."""

from __future__ import annotations

import pytest

from fedquad.report.claims import (
    FEDQUAD,
    JOINT,
    LEGEND_BYTES,
    MET,
    MISSED,
    NO_INTERVAL,
    QUANTIZATION,
    UNDECIDED,
    bytes_claims,
    memory_claims,
    time_claims,
    verdict,
)
from fedquad.report.stats import paired_speedup


@pytest.mark.parametrize(
    ("interval", "expected"),
    [((1.5, 2.0), MET), ((1.4, 1.4), MET), ((1.2, 1.39), MISSED), ((1.3, 1.6), UNDECIDED)],
)
def test_a_speedup_claim_is_met_only_when_its_whole_interval_clears_the_threshold(
    interval, expected
):
    assert verdict(interval, FEDQUAD) == expected


@pytest.mark.parametrize(
    ("interval", "expected"), [((0.4, 0.58), MET), ((0.6, 0.9), MISSED), ((0.5, 0.7), UNDECIDED)]
)
def test_a_bytes_claim_is_met_when_its_whole_interval_is_at_or_below_the_ratio(interval, expected):
    assert verdict(interval, LEGEND_BYTES) == expected


def test_no_interval_and_no_threshold_are_said_as_such():
    assert verdict(None, FEDQUAD) == NO_INTERVAL
    assert verdict((0.5, 3.0), QUANTIZATION) == "—"


METHODS = {
    "fedquad": "fedquad",
    "noquant": "fedquad-noquant",
    "legend": "legend",
    "joint": "joint",
    "fedlora-a": "fedlora",
    "fedlora-b": "fedlora",
    "fedra": "fedra",
}
TIMES = {  # per seed; fedra is the best baseline, legend beats fedquad, joint is 1.2x legend
    "fedquad": {0: 100.0, 1: 110.0, 2: 90.0},
    "noquant": {0: 150.0, 1: None, 2: 120.0},
    "legend": {0: 60.0, 1: 66.0, 2: 54.0},
    "joint": {0: 50.0, 1: 55.0, 2: 45.0},
    "fedlora-a": {0: 300.0, 1: 330.0, 2: 270.0},
    "fedlora-b": {0: 200.0, 1: 220.0, 2: None},
    "fedra": {0: 130.0, 1: 143.0, 2: 117.0},
}
BASELINES = ["fedlora-a", "fedlora-b", "fedra"]


def test_each_claim_is_measured_over_the_rivals_it_names():
    rows = time_claims(METHODS, BASELINES, TIMES)
    got = [(r["label"], r["over"]) for r in rows]
    assert got == [
        ("fedquad", "the best baseline (fedra)"),
        ("fedquad", "fedlora-a"),
        ("fedquad", "fedlora-b"),
        ("fedquad", "fedra"),
        ("fedquad", "noquant"),
        ("legend", "fedlora-a"),
        ("legend", "fedlora-b"),
        ("joint", "legend"),  # legend is the faster of the two
    ]
    by = {(r["label"], r["over"]): r for r in rows}
    best = by[("fedquad", "the best baseline (fedra)")]
    assert best["value"] == pytest.approx(1.3)
    assert (best["verdict"], best["threshold"], best["seeds"]) == (MISSED, 1.4, 3)
    assert by[("joint", "legend")]["value"] == pytest.approx(1.2)
    assert by[("joint", "legend")]["threshold"] == JOINT.threshold
    assert by[("legend", "fedlora-a")]["verdict"] == MET  # 5x in every seed
    # a seed that one side did not reach is left out of the mean and counted
    fedlora_b = by[("legend", "fedlora-b")]
    assert (fedlora_b["seeds"], fedlora_b["of_seeds"]) == (2, 3)
    expected = paired_speedup(TIMES["fedquad"], TIMES["noquant"])
    assert by[("fedquad", "noquant")]["value"] == expected.geometric_mean
    assert by[("fedquad", "noquant")]["verdict"] == "—"


def test_an_arm_without_legend_has_no_legend_or_joint_rows():
    methods = {k: v for k, v in METHODS.items() if v not in ("legend", "joint")}
    rows = time_claims(methods, BASELINES, TIMES)
    assert {r["label"] for r in rows} == {"fedquad"}
    assert bytes_claims(methods, TIMES) == []


def test_legend_bytes_are_compared_with_every_fedlora_entry():
    nbytes = {
        k: {s: None if v is None else v * 1e6 for s, v in t.items()} for k, t in TIMES.items()
    }
    rows = bytes_claims(METHODS, nbytes)
    assert [r["over"] for r in rows] == ["fedlora-a", "fedlora-b"]
    assert rows[0]["value"] == pytest.approx(0.2) and rows[0]["verdict"] == MET


def test_memory_claims_take_each_ratio_that_was_measured():
    rows = memory_claims(
        {"total_ratio": 0.48, "measured_peak_ratio": 0.73, "measured_above_baseline_ratio": None}
    )
    assert [(r["value"], r["verdict"]) for r in rows] == [(0.48, MET), (0.73, MISSED)]
    assert memory_claims(None) == []
