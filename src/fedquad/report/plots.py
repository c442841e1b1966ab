"""PNG plots of one run and of a comparison, drawn from per-round metrics.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas: no pyplot
state, no GUI backend, safe in any process. Each file is written atomically. Each plot explains
itself: its title names the dataset, model, fleet and seeds (from the runs' directories, see
:mod:`fedquad.report.run_info`), accuracy plots draw the majority-class accuracy, curves that
coincide get distinct line styles and a legend note, and tier lines break where a tier did not
train.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
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
)
from fedquad.report.plot_series import (
    Curve,
    device_tiers,
    identical_groups,
    identical_note,
    tier_series,
)
from fedquad.report.results import atomic_write_bytes
from fedquad.report.run_info import RunInfo, describe, majority_line
from fedquad.report.stats import accuracy_curve, common_grid, seed_band

DPI = 120
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
SAT_OUT_MARKER = "x"
MAJORITY_STYLE: dict[str, Any] = {"color": "dimgray", "linestyle": "-.", "linewidth": 1.2}


def save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to a PNG at ``path`` (atomically)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _title(what: str, context: str) -> str:
    return f"{what}\n{context}" if context else what


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


def distinct_styles(curves: Mapping[str, Curve]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Line style keywords per label (empty: the plot's own) and the legend notes: each member
    of a group of coinciding curves gets its own line style and marker, the later ones hollow
    and thinner over the first, so every one of them stays visible."""
    styles: dict[str, dict[str, Any]] = {label: {} for label in curves}
    groups = identical_groups(curves)
    for group in groups:
        for k, label in enumerate(group):
            styles[label] = {
                "linestyle": LINESTYLES[k % len(LINESTYLES)],
                "marker": MARKERS[k % len(MARKERS)],
                "linewidth": 2.6 if k == 0 else 1.4,
                "markersize": 4 if k == 0 else 6,
                "fillstyle": "full" if k == 0 else "none",
            }
    return styles, [identical_note(g) for g in groups]


def _note_handles(notes: Iterable[str]) -> list[Line2D]:
    return [Line2D([], [], linestyle="none", label=note) for note in notes]


def _majority(ax: Axes, infos: Iterable[RunInfo]) -> None:
    line = majority_line(infos)
    if line is not None:
        ax.axhline(line.accuracy, label=line.label, **MAJORITY_STYLE)


def _legend(ax: Axes, notes: Sequence[str] = ()) -> None:
    handles = [*ax.get_legend_handles_labels()[0], *_note_handles(notes)]
    if handles:
        ax.legend(handles=handles)


def figure_run(metrics: Metrics, title: str = "", info: RunInfo | None = None) -> Figure:
    """One run's test accuracy against virtual time and against host time, side by side."""
    infos = [] if info is None else [info]
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, clock, label in [
        (axes[0], "virtual_seconds_total", "virtual time (s, simulated devices)"),
        (axes[1], "host_seconds_total", "host time (s)"),
    ]:
        x, y = _evaluated(metrics, clock)
        ax.plot(x, y, marker="o", markersize=3, label="test accuracy")
        _majority(ax, infos)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    _legend(axes[0])
    what = f"{title}: test accuracy" if title else "Test accuracy"
    fig.suptitle(_title(what, describe(infos)))
    return fig


def plot_run(metrics: Metrics, path: Path, title: str = "", info: RunInfo | None = None) -> Path:
    return save(figure_run(metrics, title, info), path)


def _context(info: Mapping[str, RunInfo] | None) -> str:
    return describe(info.values()) if info else ""


def figure_accuracy(
    runs: Mapping[str, Metrics], target: float | None, info: Mapping[str, RunInfo] | None = None
) -> Figure:
    """Every method's test accuracy against virtual time, with the target and the majority
    class as lines."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    points = {m: _evaluated(metrics, "virtual_seconds_total") for m, metrics in runs.items()}
    styles, notes = distinct_styles(points)
    for method, (x, y) in points.items():
        style: dict[str, Any] = {"marker": "o", "markersize": 3, **styles[method]}
        ax.plot(x, y, label=method, **style)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    _majority(ax, (info or {}).values())
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(_title("Test accuracy against virtual time", _context(info)))
    ax.grid(alpha=0.3)
    _legend(ax, notes)
    return fig


def plot_accuracy(
    runs: Mapping[str, Metrics],
    target: float | None,
    path: Path,
    info: Mapping[str, RunInfo] | None = None,
) -> Path:
    return save(figure_accuracy(runs, target, info), path)


def figure_bytes(runs: Mapping[str, Metrics], info: Mapping[str, RunInfo] | None = None) -> Figure:
    """Every method's cumulative bytes (up + down) against virtual time."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    points = {m: _cumulative_bytes(metrics) for m, metrics in runs.items()}
    styles, notes = distinct_styles(points)
    for method, (x, y) in points.items():
        ax.plot(x, y, **styles[method], label=method)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("MB exchanged (up + down, cumulative)")
    ax.set_title(_title("Bytes exchanged against virtual time", _context(info)))
    ax.grid(alpha=0.3)
    _legend(ax, notes)
    return fig


def plot_bytes(
    runs: Mapping[str, Metrics], path: Path, info: Mapping[str, RunInfo] | None = None
) -> Path:
    return save(figure_bytes(runs, info), path)


def _tier_colors(tiers: Sequence[str]) -> dict[str, str]:
    return {t: f"C{i % 10}" for i, t in enumerate(tiers)}


def figure_tier_choices(
    runs: Mapping[str, Metrics], info: Mapping[str, RunInfo] | None = None
) -> Figure:
    """One panel per method: mean depth (solid) and mean quantized blocks q (dashed) per tier
    and round, broken where the tier did not train; an x at 0 where a sampled device of the
    tier sat out."""
    info = info or {}
    tiers = ordered_tiers(budget_per_tier(m) for m in runs.values())
    colors = _tier_colors(tiers)
    cols = min(len(runs), 2) or 1
    rows = max(1, -(-len(runs) // cols))
    fig = Figure(figsize=(6 * cols, 3 * rows + 1.2), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (method, metrics) in zip(axes, runs.items(), strict=False):
        fleet = info[method].tiers if method in info else ()
        series = tier_series(metrics, tiers, device_tiers(metrics, fleet))
        for tier, s in series.items():
            color = colors[tier]
            ax.plot(s.rounds, s.mean_depth, color=color, marker=".")
            ax.plot(s.rounds, s.mean_quantized, color=color, linestyle="--", marker=".")
            if s.sat_out_rounds:
                ax.plot(
                    s.sat_out_rounds,
                    [0] * len(s.sat_out_rounds),
                    color=color,
                    linestyle="none",
                    marker=SAT_OUT_MARKER,
                    markersize=9,
                    markeredgewidth=2,
                    zorder=3,  # over a q line at 0
                )
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    # the lowest panel of each column carries the round axis (above an empty slot too)
    for ax in axes[max(len(runs) - cols, 0) : len(runs)]:
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("round")
    for ax in axes[::cols]:
        ax.set_ylabel("blocks")
    handles = [
        *(Line2D([], [], color=colors[t], label=t) for t in tiers),
        Line2D([], [], color="gray", marker=".", label="mean depth"),
        Line2D([], [], color="gray", linestyle="--", marker=".", label="mean quantized blocks q"),
        Line2D(
            [], [], color="gray", linestyle="none", marker=SAT_OUT_MARKER, label="sat out (at 0)"
        ),
        Line2D([], [], linestyle="none", label="gap: the tier did not train that round"),
    ]
    # below the panels: an outside legend at the top would run into the suptitle
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
    fig.suptitle(_title("Mean depth and quantized blocks per tier and round", _context(info)))
    return fig


def plot_tier_choices(
    runs: Mapping[str, Metrics], path: Path, info: Mapping[str, RunInfo] | None = None
) -> Path:
    return save(figure_tier_choices(runs, info), path)


def figure_memory(runs: Mapping[str, Metrics], info: Mapping[str, RunInfo] | None = None) -> Figure:
    """Peak predicted training memory per tier, one bar per method, against the tier's budget."""
    budgets = {m: budget_per_tier(metrics) for m, metrics in runs.items()}
    tiers = ordered_tiers(budgets.values())
    fig = Figure(figsize=(8, 5.5), layout="constrained")
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
    ax.set_title(_title("Peak predicted training memory per tier", _context(info)))
    ax.grid(axis="y", alpha=0.3)
    budget_handle = Line2D([], [], color="black", linestyle="--", label="tier budget")
    # outside the axes: the budget lines reach the top of the plot
    fig.legend(
        handles=[*ax.get_legend_handles_labels()[0], budget_handle], loc="outside right upper"
    )
    return fig


def plot_memory(
    runs: Mapping[str, Metrics], path: Path, info: Mapping[str, RunInfo] | None = None
) -> Path:
    return save(figure_memory(runs, info), path)


def write_run_plots(
    run_dir: Path, metrics: Metrics, title: str = "", info: RunInfo | None = None
) -> list[Path]:
    """The plots of one run's results directory (``info``: what its directory says of it)."""
    return [plot_run(metrics, Path(run_dir) / "accuracy.png", title, info)]


def write_comparison_plots(
    runs: Mapping[str, Metrics],
    target: float | None,
    out_dir: Path,
    info: Mapping[str, RunInfo] | None = None,
) -> list[Path]:
    """The plots of a comparison directory (``info``: each method's run, by method)."""
    out = Path(out_dir)
    return [
        plot_accuracy(runs, target, out / "accuracy.png", info),
        plot_bytes(runs, out / "bytes.png", info),
        plot_tier_choices(runs, out / "tier_choices.png", info),
        plot_memory(runs, out / "memory.png", info),
    ]


def _seed_curve(by_seed: Mapping[int, Metrics]) -> list[list[float]]:
    """A label's runs as one curve for comparing labels: its seeds, then each seed's times and
    accuracies."""
    out: list[list[float]] = [[float(s) for s in sorted(by_seed)]]
    for seed in sorted(by_seed):
        points = accuracy_curve(by_seed[seed])
        out += [[t for t, _ in points], [a for _, a in points]]
    return out


def figure_seed_bands(
    runs: Mapping[str, Mapping[int, Metrics]],
    targets: Sequence[float],
    infos: Iterable[RunInfo] = (),
    clock: str = "",
) -> Figure:
    """Each label's test accuracy against virtual time over its seeds: the median, step-wise
    between evaluations, with a min–max band, on one grid for every label; targets and the
    majority class as lines. Labels whose runs coincide seed by seed get distinct line styles.
    ``clock`` names another clock than the runs' own (``"board"``: runs re-timed)."""
    infos = list(infos)
    curves = {
        label: [accuracy_curve(m) for m in by_seed.values()] for label, by_seed in runs.items()
    }
    grid = common_grid(c for per_label in curves.values() for c in per_label)
    styles, notes = distinct_styles(
        {label: _seed_curve(by_seed) for label, by_seed in runs.items()}
    )
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    every = max(1, len(grid) // 10)
    for i, (label, per_label) in enumerate(curves.items()):
        band = seed_band(per_label, grid)
        color = f"C{i % 10}"
        style = dict(styles[label])
        if style:  # markers spread along the grid, each label's shifted, not at every point
            k = LINESTYLES.index(style["linestyle"])
            style["markevery"] = (k * every // 4, every)
        ax.plot(
            band.grid,
            band.median,
            color=color,
            label=f"{label} ({len(per_label)} seeds)",
            **style,
        )
        ax.fill_between(band.grid, band.low, band.high, color=color, alpha=0.2, linewidth=0)
    listed = f"target{'s' if len(targets) > 1 else ''} {', '.join(f'{t:.3f}' for t in targets)}"
    for i, target in enumerate(targets):
        label = listed if i == 0 else "_target"  # one legend entry for all of them
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8, label=label)
    _majority(ax, infos)
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    time = f"{clock} virtual time" if clock else "virtual time"
    ax.set_xlabel(f"{time} (s)")
    ax.set_ylabel("test accuracy (median, min–max over seeds)")
    ax.set_title(_title(f"Test accuracy against {time} over seeds", describe(infos, seeds)))
    ax.grid(alpha=0.3)
    _legend(ax, notes)
    return fig


def plot_seed_bands(
    runs: Mapping[str, Mapping[int, Metrics]],
    targets: Sequence[float],
    path: Path,
    infos: Iterable[RunInfo] = (),
    clock: str = "",
) -> Path:
    return save(figure_seed_bands(runs, targets, infos, clock), path)
