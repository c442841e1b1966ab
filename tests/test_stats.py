"""Comparison statistics over paired seeds (docs/methods.md §8) on hand-made curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedquad.errors import FedquadError
from fedquad.report.stats import (
    BudgetAccuracy,
    Crossing,
    accuracy_at,
    accuracy_by_round,
    accuracy_curve,
    best_baseline,
    bootstrap_interval,
    common_grid,
    paired_bytes,
    paired_speedup,
    seed_band,
    step_values,
    trailing_mean_crossing,
)


def run(accuracies, seconds=10.0, up=100, down=1000):
    """Metrics of a run with one evaluation per round, each round ``seconds`` long."""
    return [
        {
            "round": r,
            "test_accuracy": a,
            "virtual_seconds_total": seconds * r,
            "bytes_up": up,
            "bytes_down": down,
        }
        for r, a in enumerate(accuracies, start=1)
    ]


# --------------------------------------------------------------------------- crossing


def test_the_crossing_is_the_first_round_whose_last_three_evaluations_average_to_the_target():
    metrics = run([0.70, 0.85, 0.76, 0.77, 0.79, 0.84, 0.60])
    # trailing means: -, -, 0.770, 0.7933, 0.7733, 0.80, 0.7433
    assert trailing_mean_crossing(metrics, 0.80) == Crossing(
        round=6, virtual_seconds=60.0, bytes=6 * 1100, trailing_mean=pytest.approx(0.80)
    )
    assert trailing_mean_crossing(metrics, 0.78).round == 4
    # a single evaluation above the target (0.85 in round 2) does not cross
    assert trailing_mean_crossing(metrics, 0.81) is None


def test_a_mean_that_is_the_target_up_to_rounding_crosses():
    assert math.fsum([0.78, 0.80, 0.82]) / 3 < 0.80  # the floating-point trap
    assert trailing_mean_crossing(run([0.78, 0.80, 0.82]), 0.80).round == 3
    assert trailing_mean_crossing(run([0.78, 0.80, 0.8199]), 0.80) is None


def test_rounds_without_an_evaluation_count_bytes_but_not_evaluations():
    metrics = run([0.9, 0.9, 0.9, 0.9])
    del metrics[1]["test_accuracy"]
    crossing = trailing_mean_crossing(metrics, 0.9)
    assert (crossing.round, crossing.bytes, crossing.virtual_seconds) == (4, 4400, 40.0)


def test_a_run_too_short_for_the_window_never_crosses():
    assert trailing_mean_crossing(run([0.99, 0.99]), 0.5) is None
    assert trailing_mean_crossing(run([0.99]), 0.5, window=1).round == 1


# --------------------------------------------------------------------------- paired speed-ups


def test_paired_speedup_counts_every_case_and_keeps_every_seed():
    x = {0: 10.0, 1: 20.0, 2: None, 3: 5.0, 4: None}
    y = {0: 20.0, 1: 80.0, 2: 30.0, 3: None, 4: None}
    result = paired_speedup(x, y)
    assert (result.both, result.x_only, result.y_only, result.neither) == (2, 1, 1, 1)
    assert [s.seed for s in result.per_seed] == [0, 1, 2, 3, 4]
    assert [s.ratio for s in result.per_seed] == [2.0, 4.0, None, None, None]
    assert result.geometric_mean == pytest.approx(math.sqrt(8.0))
    low, high = result.interval
    # resamples of two ratios: (2, 2), (2, 4) or (4, 4): the geometric means 2, √8 and 4
    assert 2.0 <= low <= high <= 4.0 and low < high
    assert result.seeds == 2


def test_the_bootstrap_is_reproducible_and_brackets_the_mean():
    ratios = [1.1, 1.6, 0.9, 2.3, 1.4]
    first = bootstrap_interval(ratios)
    assert first == bootstrap_interval(ratios)  # byte-identical rebuilds
    # the resampling's seed matters (with 5 ratios two seeds can give the same percentiles)
    spread = [*ratios, 1.25, 0.8, 1.9]
    assert bootstrap_interval(spread, rng_seed=1) != bootstrap_interval(spread)
    mean = paired_speedup(dict(enumerate([1.0] * 5)), dict(enumerate(ratios))).geometric_mean
    assert first[0] < mean < first[1]
    assert min(ratios) <= first[0] and first[1] <= max(ratios)
    # the interval is the percentile of 10,000 resampled geometric means
    rng = np.random.default_rng(0)
    logs = np.log(ratios)
    means = np.exp(logs[rng.integers(0, 5, size=(10_000, 5))].mean(axis=1))
    assert first == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-11)


def test_the_bootstrap_does_not_move_with_the_last_bit_of_exp(monkeypatch):
    """numpy's vectorised exp rounds the last bit differently on other CPUs: the interval a
    report prints and stores must not follow it."""
    ratios = [1.1, 1.6, 0.9, 2.3, 1.4]
    here = bootstrap_interval(ratios)
    exact = np.exp

    def off_by_one_ulp(x):
        return np.nextafter(exact(x), np.inf)

    monkeypatch.setattr(np, "exp", off_by_one_ulp)
    elsewhere = bootstrap_interval(ratios)
    monkeypatch.undo()
    assert elsewhere == here
    # without the rounding the two would differ: the raw percentiles follow the last bit
    logs = np.log(ratios)
    means = logs[np.random.default_rng(0).integers(0, 5, size=(10_000, 5))].mean(axis=1)
    raw = np.percentile(exact(means), [2.5, 97.5])
    assert tuple(np.percentile(off_by_one_ulp(means), [2.5, 97.5])) != tuple(raw)


def test_accuracy_by_round_holds_the_last_evaluation():
    records = [{"test_accuracy": None}, {"test_accuracy": 0.6}, {}, {"test_accuracy": 0.7}]
    assert accuracy_by_round(records) == [None, 0.6, 0.6, 0.7]
    assert accuracy_by_round([]) == []


def test_one_seed_gives_a_number_but_no_interval_and_no_seed_no_number():
    single = paired_speedup({0: 10.0}, {0: 15.0})
    assert single.geometric_mean == pytest.approx(1.5)
    assert single.interval is None  # it would resample to the one ratio: a point, no interval
    # one seed that reached beside one that did not: still a single ratio
    assert paired_speedup({0: 10.0, 1: None}, {0: 15.0, 1: 9.0}).interval is None
    assert paired_speedup({0: 10.0, 1: 10.0}, {0: 15.0, 1: 20.0}).interval is not None
    nobody = paired_speedup({0: None, 1: None}, {0: None, 1: None})
    assert (nobody.geometric_mean, nobody.interval, nobody.neither) == (None, None, 2)
    assert all(s.ratio is None for s in nobody.per_seed)


def test_unpaired_seeds_and_bad_times_are_one_line_errors():
    with pytest.raises(FedquadError, match=r"paired seeds differ: \[0, 1\] against \[0\]"):
        paired_speedup({0: 1.0, 1: 2.0}, {0: 1.0})
    with pytest.raises(FedquadError, match="time to target -1.0 of seed 0"):
        paired_speedup({0: -1.0}, {0: 1.0})


def test_paired_bytes_is_the_label_over_the_baseline_with_the_same_counts():
    x = {0: 50.0, 1: 30.0, 2: None}
    y = {0: 100.0, 1: 60.0, 2: 80.0}
    result = paired_bytes(x, y)
    assert [s.ratio for s in result.per_seed] == [0.5, 0.5, None]
    assert (result.both, result.x_only, result.y_only, result.neither) == (2, 0, 1, 0)
    assert result.geometric_mean == pytest.approx(0.5) and result.interval == pytest.approx(
        (0.5, 0.5)
    )
    # the reciprocal of the speed-up's convention: fewer bytes is below 1
    assert paired_speedup(x, y).geometric_mean == pytest.approx(2.0)
    with pytest.raises(FedquadError, match="bytes to target 0.0 of seed 0 is not allowed"):
        paired_bytes({0: 0.0}, {0: 1.0})


# --------------------------------------------------------------------------- best baseline


def test_best_baseline_is_the_smallest_geometric_mean_time():
    times = {
        "fedlora": {0: 10.0, 1: 40.0},  # geometric mean 20
        "hetlora": {0: 18.0, 1: 18.0},  # 18
        "fedra": {0: 30.0, 1: 30.0},
    }
    assert best_baseline(times) == "hetlora"


def test_a_baseline_that_misses_a_seed_loses_to_one_that_reaches_in_every_seed():
    times = {"fedlora": {0: 1.0, 1: None}, "fedra": {0: 50.0, 1: 60.0}}
    assert best_baseline(times) == "fedra"
    assert best_baseline({"fedlora": {0: None}, "fedra": {0: None}}) is None


# --------------------------------------------------------------------------- seed band


def test_step_interpolation_holds_each_evaluation_until_the_next():
    curve = [(10.0, 0.5), (20.0, 0.7), (30.0, 0.6)]
    values = step_values(curve, [0.0, 10.0, 15.0, 20.0, 29.9, 30.0, 31.0])
    assert np.isnan(values[0]) and np.isnan(values[-1])  # before the first, after the run
    assert values[1:-1].tolist() == [0.5, 0.5, 0.7, 0.7, 0.6]


def test_accuracy_at_a_budget_is_the_last_evaluation_by_then():
    curve = [(10.0, 0.5), (20.0, 0.7), (30.0, 0.6)]
    assert accuracy_at(curve, 5.0) == BudgetAccuracy(None, False)  # nothing evaluated yet
    assert accuracy_at(curve, 10.0) == BudgetAccuracy(0.5, False)
    assert accuracy_at(curve, 29.9) == BudgetAccuracy(0.7, False)
    assert accuracy_at(curve, 30.0) == BudgetAccuracy(0.6, False)
    assert accuracy_at(curve, 45.0) == BudgetAccuracy(0.6, True)  # the run was over
    assert accuracy_at([], 1.0) == BudgetAccuracy(None, False)
    with pytest.raises(FedquadError, match="budget 0.0 is not allowed"):
        accuracy_at(curve, 0.0)
    with pytest.raises(FedquadError, match="go backwards"):
        accuracy_at([(2.0, 0.5), (1.0, 0.6)], 3.0)


def test_the_seed_band_is_the_median_with_the_min_max_over_seeds():
    curves = [
        accuracy_curve(run([0.5, 0.7, 0.8])),
        accuracy_curve(run([0.6, 0.6, 0.9])),
        accuracy_curve(run([0.4, 0.8], seconds=12.0)),  # ends at 24 s
    ]
    grid = common_grid(curves, points=7)
    assert grid == (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)
    band = seed_band(curves, grid)
    assert band.seeds == (0, 0, 2, 3, 3, 2, 2)
    assert math.isnan(band.median[0]) and math.isnan(band.low[1])
    # at 20 s: 0.7, 0.6 and the third seed's 0.4 of 12 s, held until its 24 s evaluation
    assert band.median[2:] == pytest.approx((0.55, 0.5, 0.6, 0.65, 0.85))
    assert band.low[2:] == pytest.approx((0.5, 0.4, 0.4, 0.6, 0.8))
    assert band.high[2:] == pytest.approx((0.6, 0.6, 0.7, 0.7, 0.9))
