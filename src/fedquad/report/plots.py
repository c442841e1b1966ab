"""PNG plots of one run and of a comparison, drawn from per-round metrics.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas: no pyplot
state, no GUI backend, safe in any process. Each file is written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedquad.report.compare import (
    MIB,
    Metrics,
    budget_per_tier,
    ordered_tiers,
    peak_memory_per_tier,
    tier_choices,
)
from fedquad.report.results import atomic_write_bytes
from fedquad.report.stats import accuracy_curve, common_grid, seed_band

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _evaluated(metrics: Metrics, clock: str) -> tuple[list[float], list[float]]:
    points = [(m[clock], m["test_accuracy"]) for m in metrics if "test_accuracy" in m]
    return [p[0] for p in points], [p[1] for p in points]


def _cumulative_bytes(metrics: Metrics) -> tuple[list[float], list[float]]:
    times, totals, total = [0.0], [0.0], 0
    for m in metrics:
        total += m["bytes_up"] + m["bytes_down"]
        times.append(m["virtual_seconds_total"])
        totals.append(total / 1e6)
    return times, totals


def plot_run(metrics: Metrics, path: Path, title: str = "") -> Path:
    """One run's test accuracy against virtual time and against host time, side by side."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, clock, label in [
        (axes[0], "virtual_seconds_total", "virtual time (s, simulated devices)"),
        (axes[1], "host_seconds_total", "host time (s)"),
    ]:
        x, y = _evaluated(metrics, clock)
        ax.plot(x, y, marker="o", markersize=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy(runs: Mapping[str, Metrics], target: float | None, path: Path) -> Path:
    """Every method's test accuracy against virtual time, with the target as a line."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for method, metrics in runs.items():
        x, y = _evaluated(metrics, "virtual_seconds_total")
        ax.plot(x, y, marker="o", markersize=3, label=method)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_bytes(runs: Mapping[str, Metrics], path: Path) -> Path:
    """Every method's cumulative bytes (up + down) against virtual time."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for method, metrics in runs.items():
        x, y = _cumulative_bytes(metrics)
        ax.plot(x, y, label=method)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("MB exchanged (up + down, cumulative)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _tier_colors(tiers: Sequence[str]) -> dict[str, str]:
    return {t: f"C{i % 10}" for i, t in enumerate(tiers)}


def plot_tier_choices(runs: Mapping[str, Metrics], path: Path) -> Path:
    """One panel per method: mean depth (solid) and mean quantized blocks q (dashed) per tier."""
    tiers = ordered_tiers(budget_per_tier(m) for m in runs.values())
    colors = _tier_colors(tiers)
    cols = min(len(runs), 2) or 1
    rows = max(1, -(-len(runs) // cols))
    fig = Figure(figsize=(6 * cols, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (method, metrics) in zip(axes, runs.items(), strict=False):
        choices = tier_choices(metrics)
        for tier in tiers:
            points = choices.get(tier, [])
            rounds = [c.round for c in points]
            ax.plot(rounds, [c.mean_depth for c in points], color=colors[tier], marker=".")
            ax.plot(rounds, [c.mean_quantized for c in points], color=colors[tier], linestyle="--")
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols :]:
        ax.set_xlabel("round")
    for ax in axes[::cols]:
        ax.set_ylabel("blocks")
    handles = [
        *(Line2D([], [], color=colors[t], label=t) for t in tiers),
        Line2D([], [], color="gray", marker=".", label="mean depth"),
        Line2D([], [], color="gray", linestyle="--", label="mean quantized blocks q"),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    return _save(fig, path)


def plot_memory(runs: Mapping[str, Metrics], path: Path) -> Path:
    """Peak predicted training memory per tier, one bar per method, against the tier's budget."""
    budgets = {m: budget_per_tier(metrics) for m, metrics in runs.items()}
    tiers = ordered_tiers(budgets.values())
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for i, (method, metrics) in enumerate(runs.items()):
        peaks = peak_memory_per_tier(metrics)
        xs = [t + (i - (len(runs) - 1) / 2) * width for t in range(len(tiers))]
        ax.bar(xs, [peaks.get(t, 0) / MIB for t in tiers], width, label=method)
    for x, tier in enumerate(tiers):
        budget = max(b.get(tier, 0) for b in budgets.values()) / MIB
        ax.hlines(budget, x - 0.45, x + 0.45, colors="black", linestyles="--")
    ax.set_xticks(range(len(tiers)), tiers)
    ax.set_ylabel("peak predicted memory (MiB)")
    ax.grid(axis="y", alpha=0.3)
    budget_handle = Line2D([], [], color="black", linestyle="--", label="tier budget")
    # outside the axes: the budget lines reach the top of the plot
    fig.legend(
        handles=[*ax.get_legend_handles_labels()[0], budget_handle], loc="outside right upper"
    )
    return _save(fig, path)


def write_run_plots(run_dir: Path, metrics: Metrics, title: str = "") -> list[Path]:
    """The plots of one run's results directory."""
    return [plot_run(metrics, Path(run_dir) / "accuracy.png", title)]


def write_comparison_plots(
    runs: Mapping[str, Metrics], target: float | None, out_dir: Path
) -> list[Path]:
    """The plots of a comparison directory."""
    out = Path(out_dir)
    return [
        plot_accuracy(runs, target, out / "accuracy.png"),
        plot_bytes(runs, out / "bytes.png"),
        plot_tier_choices(runs, out / "tier_choices.png"),
        plot_memory(runs, out / "memory.png"),
    ]


def plot_seed_bands(
    runs: Mapping[str, Mapping[int, Metrics]], targets: Sequence[float], path: Path
) -> Path:
    """Each label's test accuracy against virtual time over its seeds: the median, step-wise
    between evaluations, with a min–max band, on one grid for every label; targets as lines."""
    curves = {
        label: [accuracy_curve(m) for m in by_seed.values()] for label, by_seed in runs.items()
    }
    grid = common_grid(c for per_label in curves.values() for c in per_label)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, (label, per_label) in enumerate(curves.items()):
        band = seed_band(per_label, grid)
        color = f"C{i % 10}"
        ax.plot(band.grid, band.median, color=color, label=f"{label} ({len(per_label)} seeds)")
        ax.fill_between(band.grid, band.low, band.high, color=color, alpha=0.2, linewidth=0)
    for target in targets:
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy (median, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
