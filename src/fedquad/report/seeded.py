"""The report of a comparison over paired seeds (docs/methods.md §8), from its directory alone.

Reads ``plan.json`` (entries, seeds, targets) and every run's ``metrics.jsonl`` under
``<label>/seed-<s>/``, and writes ``comparison.md``, ``comparison.json`` and ``accuracy.png``.
Nothing here depends on the host or on time: the same runs give byte-identical tables, so
``fedquad report DIR`` rebuilds them anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedquad.errors import FedquadError
from fedquad.report.compare import (
    BASELINES,
    MIB,
    Metrics,
    budget_per_tier,
    final_accuracy,
    ordered_tiers,
    peak_memory_per_tier,
)
from fedquad.report.results import atomic_write_text, read_metrics
from fedquad.report.stats import (
    PairedSpeedup,
    best_baseline,
    geometric_mean,
    paired_speedup,
    trailing_mean_crossing,
)

REPORT_SCHEMA = 1
PLAN_FILE = "plan.json"
PLAN_SCHEMA = 1
NOT_REACHED = "not reached"
NO_VALUE = "—"
BEST = "best baseline"


@dataclass(frozen=True)
class Arm:
    label: str
    method: str
    overrides: tuple[str, ...]

    @property
    def baseline(self) -> bool:
        return self.method in BASELINES


@dataclass
class SeededRuns:
    arms: list[Arm]
    seeds: list[int]
    targets: list[float]
    metrics: dict[str, dict[int, list[dict[str, Any]]]]
    """By label, by seed."""


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / label / f"seed-{seed}"


def read_plan(out: Path) -> dict[str, Any]:
    path = out / PLAN_FILE
    if not path.is_file():
        raise FedquadError(f"'{out}' is not a comparison directory (no {PLAN_FILE})")
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("schema") != PLAN_SCHEMA:
        raise FedquadError(f"{path}: schema {data.get('schema')!r} is not {PLAN_SCHEMA}")
    return data


def read_runs(out: str | Path) -> SeededRuns:
    """The plan and every run's metrics of a comparison directory."""
    out = Path(out)
    plan = read_plan(out)
    arms = [Arm(e["label"], e["method"], tuple(e["set"])) for e in plan["entries"]]
    seeds = [int(s) for s in plan["seeds"]]
    metrics: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for arm in arms:
        for seed in seeds:
            path = run_dir(out, arm.label, seed)
            if not (path / "metrics.jsonl").is_file():
                raise FedquadError(
                    f"'{path}' has no metrics.jsonl: finish the comparison before its report"
                )
            metrics.setdefault(arm.label, {})[seed] = read_metrics(path)
    return SeededRuns(arms, seeds, [float(t) for t in plan["targets"]], metrics)


# --------------------------------------------------------------------------- the numbers


def _times(runs: Mapping[int, Metrics], target: float) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for seed, metrics in runs.items():
        c = trailing_mean_crossing(metrics, target)
        out[seed] = None if c is None else c.virtual_seconds
    return out


def _bytes(runs: Mapping[int, Metrics], target: float) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for seed, metrics in runs.items():
        c = trailing_mean_crossing(metrics, target)
        out[seed] = None if c is None else float(c.bytes)
    return out


def _summary(values: Mapping[int, float | None]) -> dict[str, Any]:
    reached = [v for v in values.values() if v is not None]
    return {
        "reached": len(reached),
        "seeds": len(values),
        "geometric_mean": geometric_mean(reached) if reached else None,
        "per_seed": [values[s] for s in sorted(values)],
    }


def _speedup_json(over: str, s: PairedSpeedup) -> dict[str, Any]:
    return {
        "over": over,
        "geometric_mean": s.geometric_mean,
        "interval_95": None if s.interval is None else list(s.interval),
        "seeds": s.seeds,
        "both": s.both,
        "only_this": s.x_only,
        "only_other": s.y_only,
        "neither": s.neither,
        "per_seed": [r.ratio for r in s.per_seed],
    }


def report_data(runs: SeededRuns) -> dict[str, Any]:
    """Everything the tables show, as JSON-ready data (``null``: not reached)."""
    baselines = [a.label for a in runs.arms if a.baseline]
    targets = []
    for target in runs.targets:
        times = {a.label: _times(runs.metrics[a.label], target) for a in runs.arms}
        best = best_baseline({b: times[b] for b in baselines})
        labels = []
        for arm in runs.arms:
            speedups = [
                _speedup_json(b, paired_speedup(times[arm.label], times[b]))
                for b in baselines
                if b != arm.label
            ]
            if best is not None and best != arm.label:
                speedups.append(
                    _speedup_json(f"{BEST} ({best})", paired_speedup(times[arm.label], times[best]))
                )
            labels.append(
                {
                    "label": arm.label,
                    "time_to_target_seconds": _summary(times[arm.label]),
                    "bytes_to_target": _summary(_bytes(runs.metrics[arm.label], target)),
                    "speedups": speedups,
                }
            )
        targets.append({"target_accuracy": target, "best_baseline": best, "labels": labels})
    return {
        "schema": REPORT_SCHEMA,
        "seeds": runs.seeds,
        "targets": runs.targets,
        "entries": [
            {"label": a.label, "method": a.method, "set": list(a.overrides), "baseline": a.baseline}
            for a in runs.arms
        ],
        "baselines": baselines,
        "per_target": targets,
        "runs": [_runs_json(a.label, runs.metrics[a.label]) for a in runs.arms],
    }


def _runs_json(label: str, by_seed: Mapping[int, Metrics]) -> dict[str, Any]:
    seeds = sorted(by_seed)
    peaks: dict[str, int] = {}
    tiers = ordered_tiers(budget_per_tier(by_seed[s]) for s in seeds)
    for s in seeds:
        for tier, peak in peak_memory_per_tier(by_seed[s]).items():
            peaks[tier] = max(peaks.get(tier, 0), peak)
    return {
        "label": label,
        "rounds": [len(by_seed[s]) for s in seeds],
        "final_accuracy": [final_accuracy(by_seed[s]) for s in seeds],
        "device_rounds_trained": [sum(len(r["devices"]) for r in by_seed[s]) for s in seeds],
        "device_rounds_sat_out": [sum(len(r["sat_out"]) for r in by_seed[s]) for s in seeds],
        "bytes_total": [sum(r["bytes_up"] + r["bytes_down"] for r in by_seed[s]) for s in seeds],
        "peak_memory_bytes": {t: peaks[t] for t in tiers if t in peaks},
    }


# --------------------------------------------------------------------------- the tables


def _num(value: float | None, fmt: str) -> str:
    return NOT_REACHED if value is None else format(value, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _reached_table(
    data: Mapping[str, Any], key: str, scale: float, fmt: str, unit: str, seeds: Sequence[int]
) -> list[str]:
    header = ["label", "reached", f"geometric mean ({unit})", *(f"seed {s}" for s in seeds)]
    rows = []
    for item in data["labels"]:
        v = item[key]
        gm = v["geometric_mean"]
        rows.append(
            [
                item["label"],
                f"{v['reached']} of {v['seeds']}",
                NOT_REACHED if gm is None else format(gm / scale, fmt),
                *(NOT_REACHED if x is None else format(x / scale, fmt) for x in v["per_seed"]),
            ]
        )
    return _table(header, rows)


def _speedup_table(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    header = [
        "label",
        "over",
        "speed-up",
        "95% interval",
        "seeds",
        "both / label only / other only / neither",
        *(f"seed {s}" for s in seeds),
    ]
    rows = []
    for item in data["labels"]:
        for s in item["speedups"]:
            interval = s["interval_95"]
            rows.append(
                [
                    item["label"],
                    s["over"],
                    NO_VALUE if s["geometric_mean"] is None else f"{s['geometric_mean']:.2f}×",
                    NO_VALUE if interval is None else f"{interval[0]:.2f}–{interval[1]:.2f}×",
                    str(s["seeds"]),
                    f"{s['both']} / {s['only_this']} / {s['only_other']} / {s['neither']}",
                    *(NOT_REACHED if r is None else f"{r:.2f}×" for r in s["per_seed"]),
                ]
            )
    return _table(header, rows) if rows else ["No baseline to compare with.", ""]


def markdown(data: Mapping[str, Any]) -> str:
    seeds = data["seeds"]
    lines = [
        "# Comparison over paired seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))}; targets "
        f"{', '.join(f'{t:.4f}' for t in data['targets'])}; baselines "
        f"{', '.join(data['baselines']) or 'none'}.",
        "",
        "A run reaches a target at the first round whose mean test accuracy over its last 3 "
        "evaluations reaches it, at that round's virtual time (simulated devices). Speed-up over "
        "Y = time to target of Y / of the label, per seed; the geometric mean and its bootstrap "
        "95% interval (10,000 resamples, fixed seed) are over the seeds where both reached, "
        "whose number is in the seeds column: with few seeds the interval under-covers.",
        "",
        "| label | method | overrides |",
        "|---|---|---|",
        *(
            f"| {e['label']} | {e['method']} | {'; '.join(e['set']) or NO_VALUE} |"
            for e in data["entries"]
        ),
        "",
    ]
    for block in data["per_target"]:
        best = block["best_baseline"]
        lines += [
            f"## Target {block['target_accuracy']:.4f}",
            "",
            f"Best baseline: {best}." if best else "No baseline reached the target.",
            "",
            "### Time to target (virtual s)",
            "",
            *_reached_table(block, "time_to_target_seconds", 1.0, ".1f", "s", seeds),
            "### Speed-up",
            "",
            *_speedup_table(block, seeds),
            "### Bytes to target (MB, up + down)",
            "",
            *_reached_table(block, "bytes_to_target", 1e6, ".2f", "MB", seeds),
        ]
    tiers = list(dict.fromkeys(t for r in data["runs"] for t in r["peak_memory_bytes"]))
    lines += ["## Every run", ""]
    header = [
        "label",
        *(f"final accuracy seed {s}" for s in seeds),
        "device-rounds trained",
        "sat out",
        *(f"peak MiB {t}" for t in tiers),
    ]
    rows = []
    for r in data["runs"]:
        rows.append(
            [
                r["label"],
                *(NO_VALUE if a is None else f"{a:.4f}" for a in r["final_accuracy"]),
                " / ".join(map(str, r["device_rounds_trained"])),
                " / ".join(map(str, r["device_rounds_sat_out"])),
                *(
                    f"{r['peak_memory_bytes'][t] / MIB:.1f}"
                    if t in r["peak_memory_bytes"]
                    else NO_VALUE
                    for t in tiers
                ),
            ]
        )
    lines += _table(header, rows)
    lines += [
        "Device-rounds are per seed, in seed order; peak MiB is the largest predicted training "
        "memory of a trained device of the tier over every seed.",
        "",
    ]
    return "\n".join(lines)


def write_report(out: str | Path) -> dict[str, Any]:
    """Write ``comparison.md``, ``comparison.json`` and ``accuracy.png`` into ``out``."""
    from fedquad.report.plots import plot_seed_bands
    from fedquad.report.run_info import read_run_info

    out = Path(out)
    runs = read_runs(out)
    data = report_data(runs)
    atomic_write_text(out / "comparison.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", markdown(data))
    infos = [read_run_info(run_dir(out, a.label, s)) for a in runs.arms for s in runs.seeds]
    plot_seed_bands(runs.metrics, runs.targets, out / "accuracy.png", infos)
    return data
