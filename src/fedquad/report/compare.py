"""What a comparison of methods reports (docs/methods.md §7), computed from per-round metrics alone.

Pure functions over the records ``metrics.jsonl`` holds: time to target, speed-ups, peak memory
per tier, per-tier choices over rounds, and the table built from them (Markdown, rich, JSON).
No torch here, so reports can be rebuilt from results directories anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich import box
from rich.table import Table

from fedquad.methods_registry import baselines

Metrics = Sequence[Mapping[str, Any]]

BASELINES = baselines()
"""The methods every other method's speed-up is measured against."""
TARGET_FRACTION = 0.95
"""Default target: this fraction of the best final accuracy of any method in the comparison."""
NOT_REACHED = "not reached"
NO_VALUE = "—"
MIB = 1 << 20


@dataclass(frozen=True)
class Reached:
    """The first evaluated round whose test accuracy reaches the target."""

    round: int
    virtual_seconds: float
    host_seconds: float
    bytes: int
    """Bytes up and down over every round up to and including this one."""


@dataclass(frozen=True)
class Target:
    accuracy: float
    source: str
    """Where it came from, in words (for the report)."""


@dataclass
class Row:
    """One method's line of the comparison table; ``None`` where there is no value."""

    method: str
    run_dir: str
    rounds: int
    final_accuracy: float | None
    reached: Reached | None
    speedups: dict[str, float | None]
    """Speed-up over each baseline in the comparison: ttt(baseline) / ttt(method)."""
    speedup_over_best_baseline: float | None
    peak_memory_bytes: dict[str, int]
    memory_budget_bytes: dict[str, int]
    device_rounds: int
    device_rounds_sat_out: int
    host_seconds: float
    virtual_seconds: float
    bytes_total: int


# --------------------------------------------------------------------------- from one run's metrics


def time_to_target(metrics: Metrics, target: float) -> Reached | None:
    """Where the global model's test accuracy first reaches ``target``; ``None`` if never."""
    total = 0
    for m in metrics:
        total += m["bytes_up"] + m["bytes_down"]
        accuracy = m.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return Reached(
                round=m["round"],
                virtual_seconds=m["virtual_seconds_total"],
                host_seconds=m["host_seconds_total"],
                bytes=total,
            )
    return None


def final_accuracy(metrics: Metrics) -> float | None:
    """Test accuracy of the last evaluated round."""
    return next((m["test_accuracy"] for m in reversed(metrics) if "test_accuracy" in m), None)


def _per_tier_max(metrics: Metrics, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in metrics:
        for d in m["devices"]:
            out[d["tier"]] = max(out.get(d["tier"], 0), int(d[key]))
    return out


def peak_memory_per_tier(metrics: Metrics) -> dict[str, int]:
    """Largest predicted training memory of any trained device of each tier, over all rounds."""
    return _per_tier_max(metrics, "memory_bytes")


def budget_per_tier(metrics: Metrics) -> dict[str, int]:
    """Each tier's memory budget, as its trained devices reported it."""
    return _per_tier_max(metrics, "memory_budget_bytes")


@dataclass(frozen=True)
class TierChoice:
    round: int
    mean_depth: float
    mean_quantized: float
    devices: int


def tier_choices(metrics: Metrics) -> dict[str, list[TierChoice]]:
    """Per tier, per round where some device of the tier trained: its mean depth and mean q."""
    out: dict[str, list[TierChoice]] = {}
    for m in metrics:
        by_tier: dict[str, list[Mapping[str, Any]]] = {}
        for d in m["devices"]:
            by_tier.setdefault(d["tier"], []).append(d)
        for tier, devices in by_tier.items():
            n = len(devices)
            out.setdefault(tier, []).append(
                TierChoice(
                    round=m["round"],
                    mean_depth=sum(d["depth"] for d in devices) / n,
                    mean_quantized=sum(d["quantized"] for d in devices) / n,
                    devices=n,
                )
            )
    return out


def ordered_tiers(budgets: Iterable[Mapping[str, int]]) -> list[str]:
    """Every tier in any of the per-tier ``budgets``, smallest budget first."""
    largest: dict[str, int] = {}
    for per_tier in budgets:
        for tier, budget in per_tier.items():
            largest[tier] = max(largest.get(tier, 0), budget)
    return sorted(largest, key=lambda t: (largest[t], t))


# --------------------------------------------------------------------------- across methods


def default_target(finals: Iterable[float | None]) -> float | None:
    """95% of the best final accuracy of any method; ``None`` if no method was evaluated."""
    values = [f for f in finals if f is not None]
    return TARGET_FRACTION * max(values) if values else None


def choose_target(
    runs: Mapping[str, Metrics], given: float | None, given_source: str = "set"
) -> Target | None:
    """The given target, else the protocol's default computed from every run's final accuracy."""
    if given is not None:
        return Target(given, given_source)
    finals = {m: final_accuracy(metrics) for m, metrics in runs.items()}
    target = default_target(finals.values())
    if target is None:
        return None
    best = max((m for m in finals if finals[m] is not None), key=lambda m: finals[m] or 0.0)
    return Target(
        target, f"{TARGET_FRACTION:.0%} of the best final accuracy, {best}'s {finals[best]:.4f}"
    )


def speedup(ttt_method: float | None, ttt_baseline: float | None) -> float | None:
    """ttt(baseline) / ttt(method); ``None`` unless both reached the target (in positive time)."""
    if ttt_method is None or ttt_baseline is None or not ttt_method > 0:
        return None
    return ttt_baseline / ttt_method


def _ttt(reached: Reached | None) -> float | None:
    return None if reached is None else reached.virtual_seconds


def best_baseline(reached: Mapping[str, Reached | None]) -> str | None:
    """The baseline in the comparison that reached the target first, if any did."""
    times = {m: r.virtual_seconds for m, r in reached.items() if m in BASELINES and r is not None}
    return min(times, key=lambda m: (times[m], m)) if times else None


def comparison_rows(
    runs: Mapping[str, Metrics], target: Target | None, run_dirs: Mapping[str, str] | None = None
) -> list[Row]:
    """One row per method, in the order given."""
    dirs = run_dirs or {}
    reached = {
        m: None if target is None else time_to_target(metrics, target.accuracy)
        for m, metrics in runs.items()
    }
    baselines = [m for m in runs if m in BASELINES]
    best = best_baseline(reached)
    rows = []
    for m, metrics in runs.items():
        ttt = _ttt(reached[m])
        rows.append(
            Row(
                method=m,
                run_dir=dirs.get(m, ""),
                rounds=len(metrics),
                final_accuracy=final_accuracy(metrics),
                reached=reached[m],
                speedups={b: speedup(ttt, _ttt(reached[b])) for b in baselines},
                speedup_over_best_baseline=(
                    None if best is None else speedup(ttt, _ttt(reached[best]))
                ),
                peak_memory_bytes=peak_memory_per_tier(metrics),
                memory_budget_bytes=budget_per_tier(metrics),
                device_rounds=sum(len(r["devices"]) for r in metrics),
                device_rounds_sat_out=sum(len(r["sat_out"]) for r in metrics),
                host_seconds=metrics[-1]["host_seconds_total"] if metrics else 0.0,
                virtual_seconds=metrics[-1]["virtual_seconds_total"] if metrics else 0.0,
                bytes_total=sum(r["bytes_up"] + r["bytes_down"] for r in metrics),
            )
        )
    return rows


# --------------------------------------------------------------------------- the table


def _fmt_speedup(value: float | None) -> str:
    return NO_VALUE if value is None or not math.isfinite(value) else f"{value:.2f}×"


def table_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cell text of the comparison table ("not reached" never becomes a number)."""
    baselines = list(rows[0].speedups) if rows else []
    tiers = ordered_tiers(row.memory_budget_bytes for row in rows)
    header = [
        "method",
        "time to target (s)",
        "round",
        "MB to target",
        "final accuracy",
        *(f"vs {b}" for b in baselines),
        *(["vs best baseline"] if baselines else []),
        *(f"peak MiB {t}" for t in tiers),
        "sat out / sampled",
        "host s",
    ]
    body = []
    for row in rows:
        r = row.reached
        body.append(
            [
                row.method,
                NOT_REACHED if r is None else f"{r.virtual_seconds:.1f}",
                NO_VALUE if r is None else str(r.round),
                NOT_REACHED if r is None else f"{r.bytes / 1e6:.2f}",
                NO_VALUE if row.final_accuracy is None else f"{row.final_accuracy:.4f}",
                *(_fmt_speedup(row.speedups[b]) for b in baselines),
                *([_fmt_speedup(row.speedup_over_best_baseline)] if baselines else []),
                *(
                    f"{row.peak_memory_bytes[t] / MIB:.1f}"
                    if t in row.peak_memory_bytes
                    else NO_VALUE
                    for t in tiers
                ),
                f"{row.device_rounds_sat_out} / {row.device_rounds + row.device_rounds_sat_out}",
                f"{row.host_seconds:.1f}",
            ]
        )
    return header, body


def _target_line(target: Target | None, rows: Sequence[Row]) -> str:
    if target is None:
        return "No method was evaluated: there is no target accuracy."
    line = f"Target accuracy {target.accuracy:.4f}: {target.source}."
    best = best_baseline({row.method: row.reached for row in rows})
    if best is not None:
        line += f" Best baseline: {best}."
    elif any(row.speedups for row in rows):
        line += " No baseline reached the target."
    return line


def markdown_table(rows: Sequence[Row], target: Target | None) -> str:
    header, body = table_cells(rows)
    lines = [
        "# Comparison",
        "",
        _target_line(target, rows),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
        "",
        "Time to target is virtual (simulated devices); speed-up over Y = time to target of Y / "
        "time to target of the method; bytes are up + down; peak MiB is the largest predicted "
        "training memory of a trained device of the tier; sat out counts device-rounds "
        "(sampled devices without a feasible configuration) of all sampled; host s is this "
        "machine's wall-clock.",
        "",
    ]
    return "\n".join(lines)


def rich_tables(rows: Sequence[Row], target: Target | None) -> list[Table]:
    """The comparison table for a terminal, in three narrow parts: time and accuracy,
    speed-ups, resources (one wide table would squeeze its numbers on a narrow terminal)."""
    header, body = table_cells(rows)
    speedups = [i for i, h in enumerate(header) if h.startswith("vs ")]
    first, last = (speedups[0], speedups[-1] + 1) if speedups else (5, 5)
    parts = [
        (_target_line(target, rows), range(first)),
        ("Speed-up: time to target of the baseline / of the method", [0, *speedups]),
        ("Resources", [0, *range(last, len(header))]),
    ]
    tables = []
    for title, columns in parts:
        if len(columns) < 2:
            continue
        table = Table(title=title, box=box.SIMPLE_HEAD)
        for i in columns:
            table.add_column(header[i], justify="left" if i == 0 else "right", no_wrap=i == 0)
        for cells in body:
            table.add_row(*(cells[i] for i in columns))
        tables.append(table)
    return tables


def comparison_json(rows: Sequence[Row], target: Target | None) -> dict[str, Any]:
    """Machine-readable form: ``null`` (and ``reached: false``) where the target was not reached."""
    best = best_baseline({row.method: row.reached for row in rows})
    return {
        "target_accuracy": None if target is None else target.accuracy,
        "target_source": None if target is None else target.source,
        "baselines": list(rows[0].speedups) if rows else [],
        "best_baseline": best,
        "methods": [_row_json(row) for row in rows],
    }


def _row_json(row: Row) -> dict[str, Any]:
    r = row.reached
    out = asdict(row)
    out.pop("reached")
    out.update(
        {
            "reached": r is not None,
            "time_to_target_seconds": None if r is None else r.virtual_seconds,
            "round_to_target": None if r is None else r.round,
            "bytes_to_target": None if r is None else r.bytes,
            "host_seconds_to_target": None if r is None else r.host_seconds,
        }
    )
    return out
