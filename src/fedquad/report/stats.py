"""Statistics of a comparison over paired seeds (docs/methods.md §8), from per-round metrics alone.

The comparison report (``fedquad compare`` over several seeds, and ``fedquad report`` rebuilding
it from a results directory) calls these: the trailing-mean crossing of each target per run, the
paired speed-ups with their bootstrap intervals, the best baseline per target, and the seed band
of the accuracy plot. Pure functions, no I/O; the bootstrap has a fixed seed, so a report built
twice from the same runs is byte-identical.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedquad.errors import FedquadError

Metrics = Sequence[Mapping[str, Any]]
Seed = int

WINDOW = 3
"""Evaluations in the trailing mean that decides a crossing."""
TOLERANCE = 1e-9
"""A trailing mean this close below the target counts as reaching it: the mean of three
accuracies is not exact in floating point (0.78, 0.80, 0.82 average to 0.7999…), and any real
difference of accuracies on a test set is far larger (1/872 on SST-2)."""
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
INTERVAL_DIGITS = 12
"""Significant digits an interval's ends keep (far below any difference a report shows)."""


# --------------------------------------------------------------------------- crossing a target


@dataclass(frozen=True)
class Crossing:
    """Where a run's trailing-mean accuracy first reaches a target."""

    round: int
    virtual_seconds: float
    """The run's virtual clock at the end of that round."""
    bytes: int
    """Bytes up and down over every round up to and including that one."""
    trailing_mean: float


def trailing_mean_crossing(
    metrics: Metrics, target: float, window: int = WINDOW
) -> Crossing | None:
    """The first round whose mean over the last ``window`` evaluations reaches ``target``.

    Evaluations are the rounds with a ``test_accuracy`` (every round with ``eval_every = 1``);
    a round needs ``window`` evaluations up to it to count, so a single lucky evaluation never
    crosses. ``None`` when no round does.
    """
    if window < 1:
        raise FedquadError(f"trailing-mean window = {window} is not allowed: use 1 or more")
    recent: deque[float] = deque(maxlen=window)
    total = 0
    for m in metrics:
        total += m["bytes_up"] + m["bytes_down"]
        accuracy = m.get("test_accuracy")
        if accuracy is None:
            continue
        recent.append(accuracy)
        if len(recent) < window:
            continue
        mean = math.fsum(recent) / window
        if mean >= target - TOLERANCE:
            return Crossing(
                round=m["round"],
                virtual_seconds=m["virtual_seconds_total"],
                bytes=total,
                trailing_mean=mean,
            )
    return None


# --------------------------------------------------------------------------- paired speed-ups


@dataclass(frozen=True)
class SeedRatio:
    """One seed of a paired comparison: both times to target and their ratio."""

    seed: Seed
    time_x: float | None
    time_y: float | None
    ratio: float | None
    """``time_y / time_x`` where both reached the target, else ``None`` ("not reached");
    ``x / y`` of bytes from :func:`paired_bytes`."""


@dataclass(frozen=True)
class PairedSpeedup:
    """Speed-up of X over Y over paired seeds: ``T(Y) / T(X)`` per seed, summarised."""

    per_seed: tuple[SeedRatio, ...]
    """Every seed, in seed order, reached or not."""
    both: int
    x_only: int
    y_only: int
    neither: int
    geometric_mean: float | None
    """Over the ``both`` seeds; ``None`` when there are none."""
    interval: tuple[float, float] | None
    """Bootstrap 95% percentile interval of the geometric mean over the ``both`` seeds."""

    @property
    def seeds(self) -> int:
        """The seed count behind the mean and interval (print it beside every interval)."""
        return self.both


def paired_speedup(
    times_x: Mapping[Seed, float | None],
    times_y: Mapping[Seed, float | None],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
) -> PairedSpeedup:
    """Speed-up of X over Y from each seed's time to target (``None``: not reached).

    The two mappings must hold the same seeds: one seed fixes the partition, the fleet draws and
    the sampling for both methods, so only a seed's two runs are comparable. The mean is the
    geometric mean of the ratios over the seeds where both reached; the interval resamples those
    seeds with replacement ``resamples`` times from a generator seeded with ``rng_seed``.
    """
    return _paired(
        times_x, times_y, lambda x, y: y / x, "time to target", "seconds", resamples, rng_seed
    )


def paired_bytes(
    bytes_x: Mapping[Seed, float | None],
    bytes_y: Mapping[Seed, float | None],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
) -> PairedSpeedup:
    """Bytes to target of X against Y over paired seeds: ``B(X) / B(Y)`` per seed, below 1 where
    X sent fewer bytes (the papers' "−42%" is 0.58), summarised as :func:`paired_speedup` does
    (the ``time_*`` fields hold bytes)."""
    return _paired(
        bytes_x, bytes_y, lambda x, y: x / y, "bytes to target", "bytes", resamples, rng_seed
    )


def _paired(
    values_x: Mapping[Seed, float | None],
    values_y: Mapping[Seed, float | None],
    ratio_of: Callable[[float, float], float],
    what: str,
    unit: str,
    resamples: int,
    rng_seed: int,
) -> PairedSpeedup:
    if set(values_x) != set(values_y):
        raise FedquadError(
            f"paired seeds differ: {sorted(values_x)} against {sorted(values_y)}; "
            "compare runs of the same seeds"
        )
    if resamples < 1:
        raise FedquadError(f"bootstrap resamples = {resamples} is not allowed: use 1 or more")
    per_seed = []
    for seed in sorted(values_x):
        x, y = values_x[seed], values_y[seed]
        for t in (x, y):
            if t is not None and not (math.isfinite(t) and t > 0):
                raise FedquadError(
                    f"{what} {t!r} of seed {seed} is not allowed: use {unit} > 0 "
                    "or None for not reached"
                )
        ratio = ratio_of(x, y) if x is not None and y is not None else None
        per_seed.append(SeedRatio(seed=seed, time_x=x, time_y=y, ratio=ratio))
    ratios = [s.ratio for s in per_seed if s.ratio is not None]
    return PairedSpeedup(
        per_seed=tuple(per_seed),
        both=len(ratios),
        x_only=sum(s.time_x is not None and s.time_y is None for s in per_seed),
        y_only=sum(s.time_x is None and s.time_y is not None for s in per_seed),
        neither=sum(s.time_x is None and s.time_y is None for s in per_seed),
        geometric_mean=geometric_mean(ratios) if ratios else None,
        # one seed resamples to itself: a point, not an interval, and no verdict can rest on it
        interval=bootstrap_interval(ratios, resamples, rng_seed) if len(ratios) > 1 else None,
    )


def geometric_mean(values: Sequence[float]) -> float:
    if not values:
        raise FedquadError("geometric mean of no values: give at least one")
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def bootstrap_interval(
    ratios: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng_seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile interval of the geometric mean of ``ratios`` resampled with replacement.

    With few seeds (5) a percentile bootstrap under-covers: report the seed count beside it.
    """
    logs = np.log(np.asarray(ratios, dtype=np.float64))
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, len(logs), size=(resamples, len(logs)))
    means = np.exp(logs[picks].mean(axis=1))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return _host_free(float(low)), _host_free(float(high))


def _host_free(value: float) -> float:
    """``value`` to INTERVAL_DIGITS significant digits: numpy's vectorised log and exp differ in
    the last bit between CPU instruction sets, and a report must rebuild byte-identically on any
    host."""
    return float(f"{value:.{INTERVAL_DIGITS}g}")


# --------------------------------------------------------------------------- best baseline

BEST = "best baseline"
"""How a comparison names the best baseline of a target, before the label it stands for."""


def best_baseline(times: Mapping[str, Mapping[Seed, float | None]]) -> str | None:
    """The baseline with the smallest geometric-mean time to target over its seeds.

    ``times`` holds only the baselines (an ablation such as ``fedquad-noquant`` is not one), by
    label, each seed's time to target or ``None``. A seed that did not reach is slower than any
    that did, so a baseline that reached in more seeds ranks first; among those that reached in
    equally many, the smallest geometric mean over the reached seeds wins (ties: the first
    label). ``None`` when no baseline reached in any seed.
    """
    best: tuple[int, float] | None = None
    chosen = None
    for label, by_seed in times.items():
        reached = [t for t in by_seed.values() if t is not None]
        if not reached:
            continue
        rank = (-len(reached), geometric_mean(reached))
        if best is None or rank < best:
            best, chosen = rank, label
    return chosen


# --------------------------------------------------------------------------- seed band


Curve = Sequence[tuple[float, float]]
"""A run's evaluations as ``(virtual seconds, test accuracy)``, in time order."""


@dataclass(frozen=True)
class SeedBand:
    """Accuracy over seeds on a common virtual-time grid (NaN where no seed has a value)."""

    grid: tuple[float, ...]
    median: tuple[float, ...]
    low: tuple[float, ...]
    """Minimum over the seeds."""
    high: tuple[float, ...]
    """Maximum over the seeds."""
    seeds: tuple[int, ...]
    """How many seeds have a value at each grid point."""


def accuracy_curve(metrics: Metrics) -> list[tuple[float, float]]:
    """The evaluated rounds of one run as ``(virtual_seconds_total, test_accuracy)``."""
    return [
        (m["virtual_seconds_total"], m["test_accuracy"])
        for m in metrics
        if m.get("test_accuracy") is not None
    ]


def accuracy_by_round(metrics: Metrics) -> list[float | None]:
    """A run's test accuracy after each of its rounds: the last evaluation at or before that
    round (held until the next one), ``None`` before its first evaluation."""
    out: list[float | None] = []
    last: float | None = None
    for record in metrics:
        if record.get("test_accuracy") is not None:
            last = float(record["test_accuracy"])
        out.append(last)
    return out


def common_grid(curves: Iterable[Curve], points: int = 200) -> tuple[float, ...]:
    """``points`` evenly spaced virtual times from 0 to the latest evaluation of any seed."""
    if points < 2:
        raise FedquadError(f"grid points = {points} is not allowed: use 2 or more")
    end = max((t for curve in curves for t, _ in curve), default=0.0)
    return tuple(float(t) for t in np.linspace(0.0, end, points))


def step_values(curve: Curve, grid: Sequence[float]) -> np.ndarray:
    """The curve held constant from each evaluation to the next, read at ``grid``.

    NaN before the run's first evaluation and after its last (its run ended there).
    """
    times = np.asarray([t for t, _ in curve], dtype=np.float64)
    values = np.asarray([a for _, a in curve], dtype=np.float64)
    if np.any(np.diff(times) < 0):
        raise FedquadError("an accuracy curve's virtual times go backwards: give them in order")
    at = np.asarray(grid, dtype=np.float64)
    out = np.full(at.shape, np.nan)
    if not len(times):
        return out
    index = np.searchsorted(times, at, side="right") - 1
    inside = (index >= 0) & (at <= times[-1])
    out[inside] = values[index[inside]]
    return out


@dataclass(frozen=True)
class BudgetAccuracy:
    """A run's test accuracy at a fixed virtual-time budget."""

    accuracy: float | None
    """The last evaluation at or before the budget (held until the next one); ``None`` when the
    run had not evaluated by then."""
    ended: bool
    """The run's last evaluation came before the budget: ``accuracy`` is its final one (the
    model does not change after the run)."""


def accuracy_at(curve: Curve, budget: float) -> BudgetAccuracy:
    """The step-interpolated accuracy of ``curve`` at ``budget`` virtual seconds."""
    if not (math.isfinite(budget) and budget > 0):
        raise FedquadError(f"budget {budget!r} is not allowed: use virtual seconds > 0")
    times = [t for t, _ in curve]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise FedquadError("an accuracy curve's virtual times go backwards: give them in order")
    before = [a for t, a in curve if t <= budget]
    return BudgetAccuracy(
        accuracy=before[-1] if before else None,
        ended=bool(times) and times[-1] < budget,
    )


def seed_band(curves: Sequence[Curve], grid: Sequence[float]) -> SeedBand:
    """Median and min–max band over the seeds' step-interpolated curves at each grid time."""
    if not curves:
        raise FedquadError("seed band of no runs: give at least one curve")
    stacked = np.vstack([step_values(curve, grid) for curve in curves])
    present = ~np.isnan(stacked)
    count = present.sum(axis=0)
    median = np.full(len(grid), np.nan)
    low = np.full(len(grid), np.nan)
    high = np.full(len(grid), np.nan)
    some = count > 0
    median[some] = np.nanmedian(stacked[:, some], axis=0)
    low[some] = np.nanmin(stacked[:, some], axis=0)
    high[some] = np.nanmax(stacked[:, some], axis=0)
    return SeedBand(
        grid=tuple(float(t) for t in grid),
        median=tuple(float(v) for v in median),
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
        seeds=tuple(int(c) for c in count),
    )
