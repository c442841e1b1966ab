"""The report of a comparison over paired seeds (docs/methods.md §8), from its directory alone.

Reads ``plan.json`` (entries, seeds, targets, budgets), every run's ``metrics.jsonl`` under
``<label>/seed-<s>/`` with, where they are kept, its ``cost_profile.json``, ``fleet.toml`` and
``config.toml`` (the board clock and the memory claim need them), and ``memory_measured.json``
if present; writes ``comparison.md``, ``comparison.json`` and ``accuracy.png``. Nothing here
depends on the host or on time: the same runs give byte-identical tables, so ``fedquad report
DIR`` rebuilds them anywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedquad.errors import FedquadError
from fedquad.report import claims
from fedquad.report.compare import (
    BASELINES,
    MIB,
    Metrics,
    budget_per_tier,
    final_accuracy,
    ordered_tiers,
    peak_memory_per_tier,
)
from fedquad.report.memory_claim import MEASURED_FILE, memory_claim, read_measured
from fedquad.report.provenance import host_name, run_provenance
from fedquad.report.results import atomic_write_text, read_metrics
from fedquad.report.retime import BOARD, RunCost, exact_on_board, read_run_cost, retime
from fedquad.report.stats import (
    Crossing,
    PairedSpeedup,
    accuracy_at,
    accuracy_by_round,
    accuracy_curve,
    best_baseline,
    geometric_mean,
    paired_bytes,
    paired_speedup,
    trailing_mean_crossing,
)

REPORT_SCHEMA = 1
PLAN_FILE = "plan.json"
PLAN_SCHEMA = 1
NOT_REACHED = "not reached"
NO_VALUE = "—"
BEST = "best baseline"
PLANNED_ON_HOST = "re-timed, planned on the host clock"
ROUND_COLUMNS = 10
"""Rounds the learning-per-round table shows at most."""
RECORD_FLAGS = ("quantized", "over_budget", "checkpointed")
"""Device-record fields counted per run where a record carries them (older records do not)."""


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
    budgets: list[float] = field(default_factory=list)
    """Virtual seconds of "accuracy at a budget", fixed before the runs."""
    costs: dict[str, dict[int, RunCost | None]] = field(default_factory=dict)
    """By label, by seed: how each run was timed (None: its directory lacks the files)."""
    measured: dict[str, Any] | None = None
    """``memory_measured.json``, if the directory has one."""
    planned_seeds: list[int] = field(default_factory=list)
    """The plan's seeds; more than ``seeds`` in an interim report."""
    seed_commits: dict[int, str | None] = field(default_factory=dict)
    """The commit each seed ran at (a comparison can grow by seeds at a later commit)."""
    seed_hosts: dict[int, list[str]] = field(default_factory=dict)
    """The hosts each seed's runs recorded, in entry order (one, where the seed is paired on
    hardware too; none, where its runs recorded no host)."""


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


def finished(path: Path) -> bool:
    """A run that has ended: its summary is written last."""
    return (path / "summary.json").is_file()


def read_runs(out: str | Path, interim: bool = False) -> SeededRuns:
    """The plan and every run's metrics (and timing files) of a comparison directory. With
    ``interim``, only the seeds every entry has finished, so that the seeds stay paired while the
    comparison still runs."""
    out = Path(out)
    plan = read_plan(out)
    arms = [Arm(e["label"], e["method"], tuple(e["set"])) for e in plan["entries"]]
    planned = [int(s) for s in plan["seeds"]]
    seeds = planned
    if interim:
        seeds = [s for s in planned if all(finished(run_dir(out, a.label, s)) for a in arms)]
        if not seeds:
            raise FedquadError(
                f"'{out}': no seed has finished for every entry yet, so an interim report has "
                "nothing paired to show"
            )
    metrics: dict[str, dict[int, list[dict[str, Any]]]] = {}
    costs: dict[str, dict[int, RunCost | None]] = {}
    hosts: dict[int, list[str]] = {s: [] for s in seeds}
    for arm in arms:
        for seed in seeds:
            path = run_dir(out, arm.label, seed)
            if not (path / "metrics.jsonl").is_file():
                raise FedquadError(
                    f"'{path}' has no metrics.jsonl: finish the comparison before its report, "
                    "or ask for an interim one over the seeds finished so far (--interim)"
                )
            metrics.setdefault(arm.label, {})[seed] = read_metrics(path)
            costs.setdefault(arm.label, {})[seed] = read_run_cost(path)
            host = host_name(run_provenance(path))
            if host is not None and host not in hosts[seed]:
                hosts[seed].append(host)
    return SeededRuns(
        arms,
        seeds,
        [float(t) for t in plan["targets"]],
        metrics,
        budgets=[float(b) for b in plan.get("budgets", [])],
        costs=costs,
        measured=read_measured(out),
        planned_seeds=planned,
        seed_commits={s: c for s, c in stored_seed_commits(plan).items() if s in seeds},
        seed_hosts=hosts,
    )


def stored_seed_commits(plan: Mapping[str, Any]) -> dict[int, str | None]:
    """The commit each seed of a ``plan.json`` ran at (a plan written before seeds had their
    own commits ran all of them at its one commit)."""
    if "seed_commits" in plan:
        return {int(s): c for s, c in plan["seed_commits"].items()}
    return {int(s): plan.get("commit") for s in plan.get("seeds", [])}


# --------------------------------------------------------------------------- the numbers


def _crossed(runs: Mapping[int, Metrics], target: float) -> dict[int, Crossing | None]:
    return {seed: trailing_mean_crossing(metrics, target) for seed, metrics in runs.items()}


def _values(
    crossed: Mapping[int, Crossing | None], value: Callable[[Crossing], float]
) -> dict[int, float | None]:
    return {seed: None if c is None else value(c) for seed, c in crossed.items()}


def _seconds(crossed: Mapping[int, Crossing | None]) -> dict[int, float | None]:
    return _values(crossed, lambda c: c.virtual_seconds)


def _byte_counts(crossed: Mapping[int, Crossing | None]) -> dict[int, float | None]:
    return _values(crossed, lambda c: float(c.bytes))


def _times(runs: Mapping[int, Metrics], target: float) -> dict[int, float | None]:
    return _seconds(_crossed(runs, target))


def _bytes(runs: Mapping[int, Metrics], target: float) -> dict[int, float | None]:
    return _byte_counts(_crossed(runs, target))


def _pace(crossed: Mapping[int, Crossing | None]) -> dict[str, Any]:
    """How a time to target splits into rounds and seconds per round: each seed's crossing
    round, and the mean virtual seconds of the rounds up to it (time to target / rounds)."""
    seeds = sorted(crossed)
    reached = {s: c for s in seeds if (c := crossed[s]) is not None}
    per_round = {s: c.virtual_seconds / c.round for s, c in reached.items()}
    n = len(reached)
    return {
        "reached": n,
        "seeds": len(seeds),
        "mean_rounds": sum(c.round for c in reached.values()) / n if n else None,
        "mean_seconds_per_round": sum(per_round.values()) / n if n else None,
        "per_seed_rounds": [float(reached[s].round) if s in reached else None for s in seeds],
        "per_seed_seconds_per_round": [per_round.get(s) for s in seeds],
    }


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


def _per_target(
    arms: Sequence[Arm],
    metrics: Mapping[str, Mapping[int, Metrics]],
    targets: Sequence[float],
    baselines: Sequence[str],
    with_bytes: bool = True,
) -> list[dict[str, Any]]:
    """Per target: each label's time (and bytes) to target and its paired ratios against every
    baseline and the best one."""
    blocks = []
    for target in targets:
        crossed = {a.label: _crossed(metrics[a.label], target) for a in arms}
        times = {label: _seconds(c) for label, c in crossed.items()}
        nbytes = {label: _byte_counts(c) for label, c in crossed.items()} if with_bytes else {}
        best = best_baseline({b: times[b] for b in baselines})
        labels = []
        for arm in arms:
            others = [(b, b) for b in baselines if b != arm.label]
            if best is not None and best != arm.label:
                others.append((f"{BEST} ({best})", best))
            item: dict[str, Any] = {
                "label": arm.label,
                "time_to_target_seconds": _summary(times[arm.label]),
                "pace_to_target": _pace(crossed[arm.label]),
            }
            if with_bytes:
                item["bytes_to_target"] = _summary(nbytes[arm.label])
            item["speedups"] = [
                _speedup_json(name, paired_speedup(times[arm.label], times[b]))
                for name, b in others
            ]
            if with_bytes:
                item["bytes_ratios"] = [
                    _speedup_json(name, paired_bytes(nbytes[arm.label], nbytes[b]))
                    for name, b in others
                ]
            labels.append(item)
        blocks.append({"target_accuracy": target, "best_baseline": best, "labels": labels})
    return blocks


def _missing_costs(runs: SeededRuns) -> str | None:
    for arm in runs.arms:
        for seed in runs.seeds:
            if runs.costs.get(arm.label, {}).get(seed) is None:
                return f"{arm.label} seed {seed}"
    return None


def _board_clock(runs: SeededRuns, baselines: Sequence[str]) -> dict[str, Any]:
    """The same runs re-timed with the board's step composition (docs/methods.md §8)."""
    composition = {
        "name": BOARD.name,
        "forward": BOARD.forward,
        "fixed": BOARD.fixed,
        "quant_overhead": BOARD.quant_overhead,
    }
    missing = _missing_costs(runs)
    if missing is not None:
        return {
            "available": False,
            "composition": composition,
            "reason": f"{missing} keeps no cost_profile.json, fleet.toml and config.toml",
        }
    retimed = {
        a.label: {
            s: retime(runs.metrics[a.label][s], _cost(runs, a.label, s), BOARD) for s in runs.seeds
        }
        for a in runs.arms
    }
    metrics = {label: {s: r.metrics for s, r in by.items()} for label, by in retimed.items()}
    return {
        "metrics": metrics,
        "available": True,
        "composition": composition,
        "labels": [
            {
                "label": a.label,
                "exact": exact_on_board(a.method),
                "virtual_seconds_total": [_total_seconds(metrics[a.label][s]) for s in runs.seeds],
                "scaled_rounds": [len(retimed[a.label][s].scaled_rounds) for s in runs.seeds],
            }
            for a in runs.arms
        ],
        "per_target": _per_target(runs.arms, metrics, runs.targets, baselines, with_bytes=False),
    }


def _cost(runs: SeededRuns, label: str, seed: int) -> RunCost:
    cost = runs.costs[label][seed]
    assert cost is not None  # checked by _missing_costs
    return cost


def _total_seconds(metrics: Metrics) -> float:
    return float(metrics[-1]["virtual_seconds_total"]) if metrics else 0.0


def _budgets(runs: SeededRuns) -> dict[str, Any] | None:
    """Each label's accuracy at every budget, per seed and its mean over the seeds evaluated."""
    if not runs.budgets:
        return None
    labels = []
    for arm in runs.arms:
        curves = [accuracy_curve(runs.metrics[arm.label][s]) for s in runs.seeds]
        at = []
        for budget in runs.budgets:
            values = [accuracy_at(curve, budget) for curve in curves]
            accuracies = [v.accuracy for v in values]
            at.append(
                {
                    "budget_seconds": budget,
                    "mean": _mean(accuracies),
                    "seeds": _present(accuracies),
                    "per_seed": accuracies,
                    "ended": [v.ended for v in values],
                }
            )
        labels.append({"label": arm.label, "at": at})
    return {"seconds": runs.budgets, "labels": labels}


def _claim_source(runs: SeededRuns) -> tuple[str, int] | None:
    """The run whose cost profile prices the memory claim: FedQuad's, else a uniform-rank one."""
    from fedquad.methods_registry import method

    if not runs.seeds:
        return None
    seed = runs.seeds[0]
    for arm in sorted(runs.arms, key=lambda a: a.method != "fedquad"):
        uniform = method(arm.method).structure == "uniform"
        if uniform and runs.costs.get(arm.label, {}).get(seed) is not None:
            return arm.label, seed
    return None


def _memory_claim(runs: SeededRuns) -> dict[str, Any] | None:
    source = _claim_source(runs)
    if source is None:
        return None
    cost = _cost(runs, *source)
    return {
        "label": source[0],
        "seed": source[1],
        **memory_claim(cost.profile, cost.precision, runs.measured),
    }


def _claims(
    runs: SeededRuns,
    board_metrics: Mapping[str, Mapping[int, Metrics]] | None,
    baselines: Sequence[str],
    memory: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Each claim of docs/methods.md §8 the entries allow, per target, on both clocks."""
    methods = {a.label: a.method for a in runs.arms}
    per_target = []
    for target in runs.targets:
        host = {a.label: _times(runs.metrics[a.label], target) for a in runs.arms}
        nbytes = {a.label: _bytes(runs.metrics[a.label], target) for a in runs.arms}
        board = None
        if board_metrics is not None:
            board_times = {a.label: _times(board_metrics[a.label], target) for a in runs.arms}
            board = claims.time_claims(methods, baselines, board_times)
        per_target.append(
            {
                "target_accuracy": target,
                "host": claims.time_claims(methods, baselines, host),
                "board": board,
                "bytes": claims.bytes_claims(methods, nbytes),
            }
        )
    return {"per_target": per_target, "memory": claims.memory_claims(memory)}


def report_data(runs: SeededRuns) -> dict[str, Any]:
    """Everything the tables show, as JSON-ready data (``null``: not reached)."""
    baselines = [a.label for a in runs.arms if a.baseline]
    board = _board_clock(runs, baselines)
    board_metrics = board.pop("metrics", None)
    memory = _memory_claim(runs)
    return {
        "schema": REPORT_SCHEMA,
        "seeds": runs.seeds,
        "planned_seeds": runs.planned_seeds or runs.seeds,
        "seed_commits": {str(s): c for s, c in runs.seed_commits.items()},
        "seed_hosts": {str(s): h for s, h in runs.seed_hosts.items()},
        "targets": runs.targets,
        "entries": [
            {"label": a.label, "method": a.method, "set": list(a.overrides), "baseline": a.baseline}
            for a in runs.arms
        ],
        "baselines": baselines,
        "per_target": _per_target(runs.arms, runs.metrics, runs.targets, baselines),
        "board_clock": board,
        "budgets": _budgets(runs),
        "runs": [_runs_json(a.label, runs.metrics[a.label]) for a in runs.arms],
        "memory_claim": memory,
        "claims": _claims(runs, board_metrics, baselines, memory),
    }


def _flagged(metrics: Metrics, key: str) -> int:
    return sum(bool(d.get(key)) for r in metrics for d in r["devices"])


def configs_per_tier(by_seed: Mapping[int, Metrics]) -> dict[str, dict[str, int]]:
    """Per tier, how many trained device-rounds over every seed ran each depth d and number of
    quantized blocks q (``"d3 q3"``), the most frequent first."""
    counts: dict[str, dict[str, int]] = {}
    for metrics in by_seed.values():
        for record in metrics:
            for d in record["devices"]:
                key = f"d{d['depth']} q{d.get('quantized', 0)}"
                tier = counts.setdefault(d["tier"], {})
                tier[key] = tier.get(key, 0) + 1
    return {t: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for t, c in counts.items()}


def _runs_json(label: str, by_seed: Mapping[int, Metrics]) -> dict[str, Any]:
    seeds = sorted(by_seed)
    peaks: dict[str, int] = {}
    budgets: dict[str, int] = {}
    tiers = ordered_tiers(budget_per_tier(by_seed[s]) for s in seeds)
    for s in seeds:
        for tier, peak in peak_memory_per_tier(by_seed[s]).items():
            peaks[tier] = max(peaks.get(tier, 0), peak)
        for tier, budget in budget_per_tier(by_seed[s]).items():
            budgets[tier] = max(budgets.get(tier, 0), budget)
    finals = [final_accuracy(by_seed[s]) for s in seeds]
    configs = configs_per_tier(by_seed)
    depths = [d["depth"] for s in seeds for r in by_seed[s] for d in r["devices"]]
    uploads = [r["bytes_up"] for s in seeds for r in by_seed[s]]
    return {
        "label": label,
        "rounds": [len(by_seed[s]) for s in seeds],
        "final_accuracy": finals,
        "final_accuracy_mean": _mean(finals),
        "device_rounds_trained": [sum(len(r["devices"]) for r in by_seed[s]) for s in seeds],
        "device_rounds_sat_out": [sum(len(r["sat_out"]) for r in by_seed[s]) for s in seeds],
        **{f"device_rounds_{k}": [_flagged(by_seed[s], k) for s in seeds] for k in RECORD_FLAGS},
        "bytes_total": [sum(r["bytes_up"] + r["bytes_down"] for r in by_seed[s]) for s in seeds],
        "peak_memory_bytes": {t: peaks[t] for t in tiers if t in peaks},
        "memory_budget_bytes": {t: budgets[t] for t in tiers if t in budgets},
        "configs_per_tier": {t: configs[t] for t in tiers if t in configs},
        "accuracy_by_round": _mean_by_round([accuracy_by_round(by_seed[s]) for s in seeds]),
        "trained_depth_mean": _mean(depths),
        "bytes_up_per_round_mean": _mean(uploads),
    }


def _mean_by_round(per_seed: Sequence[Sequence[float | None]]) -> list[dict[str, Any]]:
    """Per round, the mean accuracy over the seeds that have one then, and their number."""
    out = []
    for k in range(max(map(len, per_seed), default=0)):
        at = [a[k] if k < len(a) else None for a in per_seed]
        out.append({"mean": _mean(at), "seeds": _present(at)})
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values present; ``None`` where there are none."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _present(values: Sequence[float | None]) -> int:
    return sum(v is not None for v in values)


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
    data: Mapping[str, Any],
    key: str,
    scale: float,
    fmt: str,
    unit: str,
    seeds: Sequence[int],
    mark: Mapping[str, str] | None = None,
) -> list[str]:
    header = ["label", "reached", f"geometric mean ({unit})", *(f"seed {s}" for s in seeds)]
    rows = []
    for item in data["labels"]:
        v = item[key]
        gm = v["geometric_mean"]
        rows.append(
            [
                item["label"] + (mark or {}).get(item["label"], ""),
                f"{v['reached']} of {v['seeds']}",
                NOT_REACHED if gm is None else format(gm / scale, fmt),
                *(NOT_REACHED if x is None else format(x / scale, fmt) for x in v["per_seed"]),
            ]
        )
    return _table(header, rows)


def _pace_table(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    header = ["label", "reached", "mean rounds", "mean s per round", *(f"seed {s}" for s in seeds)]
    rows = []
    for item in data["labels"]:
        p = item["pace_to_target"]
        rounds, pace = p["mean_rounds"], p["mean_seconds_per_round"]
        rows.append(
            [
                item["label"],
                f"{p['reached']} of {p['seeds']}",
                NOT_REACHED if rounds is None else f"{rounds:.1f}",
                NOT_REACHED if pace is None else f"{pace:.1f}",
                *(
                    NOT_REACHED if t is None else f"{r:.0f} ({t:.1f})"
                    for r, t in zip(
                        p["per_seed_rounds"], p["per_seed_seconds_per_round"], strict=True
                    )
                ),
            ]
        )
    return _table(header, rows)


def _ratio_table(
    data: Mapping[str, Any],
    key: str,
    name: str,
    seeds: Sequence[int],
    mark: Mapping[str, str] | None = None,
    change: bool = False,
) -> list[str]:
    """One row per (label, baseline): the paired ratio's geometric mean, interval, counts and
    every seed's ratio (``change``: with the mean as a percentage change too)."""
    header = [
        "label",
        "over",
        name,
        *(["change"] if change else []),
        "95% interval",
        "seeds",
        "both / label only / other only / neither",
        *(f"seed {s}" for s in seeds),
    ]
    mark = mark or {}
    rows = []
    for item in data["labels"]:
        for s in item[key]:
            interval, gm = s["interval_95"], s["geometric_mean"]
            over = s["over"]
            base = over.split("(")[-1].rstrip(")") if over.startswith(BEST) else over
            rows.append(
                [
                    item["label"] + mark.get(item["label"], ""),
                    over + mark.get(base, ""),
                    NO_VALUE if gm is None else f"{gm:.2f}×",
                    *([NO_VALUE if gm is None else f"{(gm - 1) * 100:+.0f}%"] if change else []),
                    NO_VALUE if interval is None else f"{interval[0]:.2f}–{interval[1]:.2f}×",
                    str(s["seeds"]),
                    f"{s['both']} / {s['only_this']} / {s['only_other']} / {s['neither']}",
                    *(NOT_REACHED if r is None else f"{r:.2f}×" for r in s["per_seed"]),
                ]
            )
    return _table(header, rows) if rows else ["No baseline to compare with.", ""]


def _speedup_table(
    data: Mapping[str, Any], seeds: Sequence[int], mark: Mapping[str, str] | None = None
) -> list[str]:
    return _ratio_table(data, "speedups", "speed-up", seeds, mark)


def _per_seed(values: Sequence[Any], fmt: Callable[[Any], str]) -> str:
    return " / ".join(fmt(v) for v in values)


def _host_sections(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    lines: list[str] = []
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
            "### Rounds to target and seconds per round",
            "",
            "Time to target = rounds to it × the mean virtual seconds of those rounds: a speed-up "
            "is a ratio of round lengths times a ratio of rounds. Per seed: rounds (s per round).",
            "",
            *_pace_table(block, seeds),
            "### Speed-up",
            "",
            *_speedup_table(block, seeds),
            "### Bytes to target (MB, up + down)",
            "",
            *_reached_table(block, "bytes_to_target", 1e6, ".2f", "MB", seeds),
            "### Bytes to target against each baseline",
            "",
            "Bytes of the label / bytes of the baseline, per seed: below 1 the label sent fewer.",
            "",
            *_ratio_table(block, "bytes_ratios", "bytes ratio", seeds, change=True),
        ]
    return lines


def _board_sections(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    board = data["board_clock"]
    c = board["composition"]
    lines = [
        f"## Board clock ({c['name']} step composition)",
        "",
        f"The same runs re-timed with every tier's step split as forward {c['forward']:.2f}, "
        f"fixed {c['fixed']:.2f} and the backward spread over the blocks, plus "
        f"{c['quant_overhead']:.2f} of a block's backward per quantized block, anchored so that "
        "a full-depth step takes as long as on the host clock (docs/methods.md §6, §8). The two "
        "clocks bracket what the papers' boards would show. Bytes and accuracy are the host "
        "clock's; only the times change.",
        "",
    ]
    if not board["available"]:
        return [*lines, f"Not available: {board['reason']}.", ""]
    mark = {item["label"]: "" if item["exact"] else "†" for item in board["labels"]}
    planned = [item["label"] for item in board["labels"] if not item["exact"]]
    if planned:
        lines += [
            f"† {PLANNED_ON_HOST}: {', '.join(planned)} chose each round's configs by the host "
            "clock's times; re-timed, they show those plans' time on the board, not what they "
            "would have planned there. The others' plans do not depend on time: their board "
            "times are exact.",
            "",
        ]
    scaled = [
        f"{item['label']} ({_per_seed(item['scaled_rounds'], str)})"
        for item in board["labels"]
        if any(item["scaled_rounds"])
    ]
    if scaled:
        lines += [
            "Rounds that timed devices their records do not show (rejected updates, devices "
            "late for the deadline) are scaled by their recorded devices' change, per seed: "
            + "; ".join(scaled)
            + ".",
            "",
        ]
    lines += [
        "### Virtual time of each whole run (board s)",
        "",
        *_table(
            ["label", *(f"seed {s}" for s in seeds)],
            [
                [item["label"] + mark[item["label"]]]
                + [f"{t:.1f}" for t in item["virtual_seconds_total"]]
                for item in board["labels"]
            ],
        ),
    ]
    for block in board["per_target"]:
        best = block["best_baseline"]
        target = f"{block['target_accuracy']:.4f}"
        lines += [
            f"### Target {target}: time to target (board virtual s)",
            "",
            f"Best baseline on the board clock: {best}." if best else "No baseline reached it.",
            "",
            *_reached_table(block, "time_to_target_seconds", 1.0, ".1f", "s", seeds, mark),
            f"### Target {target}: speed-up on the board clock",
            "",
            *_speedup_table(block, seeds, mark),
        ]
    return lines


def _budget_section(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    budgets = data["budgets"]
    lines = ["## Accuracy at fixed virtual-time budgets (host clock)", ""]
    if budgets is None:
        return [*lines, "No budgets were fixed for this comparison.", ""]
    lines += [
        "Budgets fixed in the comparison's config before any run (docs/methods.md §8): "
        f"{', '.join(f'{b:g}' for b in budgets['seconds'])} virtual s. A run's accuracy at a "
        "budget is its last evaluation at or before it; (ended): the run had finished before "
        "the budget, and its final accuracy is shown. The mean is over the seeds with a value.",
        "",
    ]
    rows = []
    for item in budgets["labels"]:
        for at in item["at"]:
            rows.append(
                [
                    item["label"],
                    f"{at['budget_seconds']:g}",
                    NO_VALUE if at["mean"] is None else f"{at['mean']:.4f}",
                    f"{at['seeds']} of {len(at['per_seed'])}",
                    *(
                        NO_VALUE if a is None else f"{a:.4f}" + (" (ended)" if ended else "")
                        for a, ended in zip(at["per_seed"], at["ended"], strict=True)
                    ),
                ]
            )
    header = [
        "label",
        "budget (virtual s)",
        "mean accuracy",
        "seeds",
        *(f"seed {s}" for s in seeds),
    ]
    return [*lines, *_table(header, rows)]


def _run_sections(data: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    runs = data["runs"]

    def accuracy(a: float | None) -> str:
        return NO_VALUE if a is None else f"{a:.4f}"

    lines = [
        "## Final accuracy",
        "",
        *_table(
            ["label", "mean", *(f"seed {s}" for s in seeds)],
            [
                [
                    r["label"],
                    accuracy(r["final_accuracy_mean"]),
                    *map(accuracy, r["final_accuracy"]),
                ]
                for r in runs
            ],
        ),
    ]
    lines += _learning_section(runs, len(seeds))
    tiers = list(dict.fromkeys(t for r in runs for t in r["peak_memory_bytes"]))
    budgets: dict[str, int] = {}
    for r in runs:
        for tier, budget in r["memory_budget_bytes"].items():
            budgets[tier] = max(budgets.get(tier, 0), budget)

    def mib(values: Mapping[str, int], tier: str) -> str:
        return f"{values[tier] / MIB:.1f}" if tier in values else NO_VALUE

    lines += [
        "## Peak memory per tier (MiB)",
        "",
        "The largest predicted training memory of a trained device of the tier over every seed "
        "(the cost model's, from the run records), under the tier's memory budget.",
        "",
        *_table(
            ["label", *tiers],
            [
                ["budget", *(mib(budgets, t) for t in tiers)],
                *([r["label"], *(mib(r["peak_memory_bytes"], t) for t in tiers)] for r in runs),
            ],
        ),
        "## Device-rounds",
        "",
        "Per seed, in seed order: devices that trained and were aggregated, sampled devices that "
        "sat out, and trained device-rounds that quantized at least one block's saved "
        "activations, or whose records say they trained over their memory budget "
        "(planner.infeasible = 'ignore') or with checkpointed blocks; records written before "
        "those fields existed count 0.",
        "",
        *_table(
            ["label", "trained", "sat out", "quantized", "over budget", "checkpointed"],
            [
                [
                    r["label"],
                    *(
                        _per_seed(r[f"device_rounds_{k}"], str)
                        for k in ("trained", "sat_out", *RECORD_FLAGS)
                    ),
                ]
                for r in runs
            ],
        ),
        *_configs_section(runs, tiers),
    ]
    return lines


def shown_rounds(rounds: int, columns: int = ROUND_COLUMNS) -> list[int]:
    """Which rounds (1-based) a table of ``columns`` columns shows: all of them when they fit,
    else ``columns`` evenly spaced ones ending at the last."""
    if rounds <= columns:
        return list(range(1, rounds + 1))
    return sorted({math.ceil(rounds * i / columns) for i in range(1, columns + 1)})


def _learning_section(runs: Sequence[Mapping[str, Any]], seeds: int) -> list[str]:
    """The rounds' side of a time to target: how far each label gets per round, beside how much
    of the model a device trains and sends in one."""
    rounds = max((len(r["accuracy_by_round"]) for r in runs), default=0)
    if not rounds:
        return []
    shown = shown_rounds(rounds)

    def cell(at: Mapping[str, Any] | None) -> str:
        if at is None or at["mean"] is None:
            return NO_VALUE
        return f"{at['mean']:.4f}" + ("" if at["seeds"] == seeds else f" ({at['seeds']})")

    def by_round(r: Mapping[str, Any], k: int) -> Mapping[str, Any] | None:
        values = r["accuracy_by_round"]
        return values[k - 1] if k <= len(values) else None

    def row(r: Mapping[str, Any]) -> list[str]:
        up = r["bytes_up_per_round_mean"]
        return [
            r["label"],
            _num(r["trained_depth_mean"], ".2f"),
            _num(None if up is None else up / 1e6, ".2f"),
            *(cell(by_round(r, k)) for k in shown),
        ]

    return [
        "## Learning per round",
        "",
        "A time to target is rounds times seconds per round; this is the rounds' side. Mean test "
        "accuracy over the seeds after each round (its last evaluation at or before the round; "
        "a count in brackets where fewer seeds have one), beside the mean LoRA depth of a "
        "trained device-round and the mean megabytes uploaded per round (the LoRA parameters "
        "the round trained).",
        "",
        *_table(
            ["label", "depth per device-round", "MB up per round", *(f"round {k}" for k in shown)],
            [row(r) for r in runs],
        ),
    ]


def _configs_section(runs: Sequence[Mapping[str, Any]], tiers: Sequence[str]) -> list[str]:
    def cell(configs: Mapping[str, int] | None) -> str:
        return ", ".join(f"{k}: {n}" for k, n in configs.items()) if configs else NO_VALUE

    return [
        "## Depth and quantized blocks per tier",
        "",
        "Trained device-rounds over every seed by LoRA depth d and number of quantized blocks q, "
        "the most frequent first.",
        "",
        *_table(
            ["label", *tiers],
            [
                [r["label"], *(cell(r.get("configs_per_tier", {}).get(t)) for t in tiers)]
                for r in runs
            ],
        ),
    ]


def _claim_cell(row: Mapping[str, Any] | None, named: str | None = None) -> str:
    if row is None:
        return NO_VALUE
    if row["value"] is None:
        return f"{NOT_REACHED} in any seed"
    cell = f"{row['value']:.2f}×"
    if row["interval_95"] is not None:
        low, high = row["interval_95"]
        cell += f" ({low:.2f}–{high:.2f})"
    if "seeds" in row:
        cell += f", {row['seeds']} of {row['of_seeds']} seeds"
    if named is not None and row["over"] != named:
        cell += f" over {row['over']}"
    return f"{cell}: {row['verdict']}"


def _threshold(row: Mapping[str, Any]) -> str:
    if row["threshold"] is None:
        return NO_VALUE
    return f"{'≤' if row['lower_is_better'] else '≥'} {row['threshold']:.2f}×"


def _claims_section(data: Mapping[str, Any]) -> list[str]:
    found = data["claims"]
    keyed = []  # (claim's place, target's place, row): each claim's targets side by side
    for t, block in enumerate(found["per_target"]):
        target = f"{block['target_accuracy']:.4f}"
        board = block["board"] or [None] * len(block["host"])
        for i, (host, on_board) in enumerate(zip(block["host"], board, strict=True)):
            cells = [_claim_cell(host), _claim_cell(on_board, host["over"])]
            keyed.append((i, t, [host["claim"], target, *cells, _threshold(host), host["source"]]))
        for i, row in enumerate(block["bytes"], start=len(block["host"])):
            cells = [_claim_cell(row), "the same bytes"]
            keyed.append((i, t, [row["claim"], target, *cells, _threshold(row), row["source"]]))
    rows = [row for _, _, row in sorted(keyed, key=lambda k: k[:2])]
    for row in found["memory"]:
        rows.append([row["claim"], NO_VALUE, _claim_cell(row), NO_VALUE, _threshold(row),
                     row["source"]])  # fmt: skip
    if not rows:
        return []
    return [
        "## Claims against their thresholds",
        "",
        "Each claim of docs/methods.md §8 that this comparison's entries allow: the geometric "
        "mean over the paired seeds where both reached, its bootstrap 95% interval and the seed "
        "count, on the host clock and re-timed on the board clock (below). Met: the whole "
        "interval is on the claimed side of the threshold; missed: it is wholly on the other; "
        "undecided: it straddles the threshold (the protocol's cue to add seeds).",
        "",
        *_table(["claim", "target", "host clock", "board clock", "threshold", "source"], rows),
    ]


def _memory_section(data: Mapping[str, Any]) -> list[str]:
    claim = data["memory_claim"]
    lines = ["## Memory claim: full depth, every block quantized", ""]
    if claim is None:
        return [
            *lines,
            "Not available: no run keeps the cost profile of a uniform-rank method.",
            "",
        ]
    high, low = claim["configs"]

    def mib(v: int | None) -> str:
        return NO_VALUE if v is None else f"{v / MIB:.1f}"

    def ratio(v: float | None) -> str:
        return NO_VALUE if v is None else f"{v:.2f}"

    depth = high["depth"]
    measured = claim["measured_by"]
    lines += [
        f"The cost model's total device memory at full depth d = {depth}: M(d, 0) against "
        f"M(d, d), every block's saved activations at {low['bits']} bits, in "
        f"{claim['precision']}, from the cost profile of {claim['label']} seed {claim['seed']}; "
        "beside it the saved activations alone and the measured process peak of one training "
        "step. The papers' claim is a peak at least 50% lower (a ratio of 0.50 or less).",
        "",
        *_table(
            [
                "config",
                "M(d, q) MiB",
                "saved activations MiB",
                "measured peak MiB",
                "measured peak above the process before training MiB",
            ],
            [
                [
                    f"d = {depth}, q = {c['quantized']}"
                    + (f" at {c['bits']} bits" if c["quantized"] else ""),
                    mib(c["total_bytes"]),
                    mib(c["saved_bytes"]),
                    mib(c["measured_peak_bytes"]),
                    mib(c["measured_peak_above_baseline_bytes"]),
                ]
                for c in (high, low)
            ]
            + [
                [
                    f"ratio q = {depth} / q = 0",
                    ratio(claim["total_ratio"]),
                    ratio(claim["saved_ratio"]),
                    ratio(claim["measured_peak_ratio"]),
                    ratio(claim["measured_above_baseline_ratio"]),
                ]
            ],
        ),
        f"Measured by {measured}."
        if measured
        else f"Not measured: `benchmarks/reproduce.py --measure-memory` writes {MEASURED_FILE}.",
        "",
    ]
    return lines


def _interim_note(seeds: Sequence[int], planned: Sequence[int]) -> list[str]:
    if list(seeds) == list(planned):
        return []
    missing = [s for s in planned if s not in seeds]
    return [
        f"**Interim report**: {len(seeds)} of the {len(planned)} planned seeds have finished for "
        f"every entry; seeds {', '.join(map(str, missing))} are left out until they have.",
        "",
    ]


def _commits_line(seed_commits: Mapping[str, str | None]) -> list[str]:
    """Which commit each seed ran at, seeds of one commit together."""
    by_commit: dict[str | None, list[str]] = {}
    for seed, commit in seed_commits.items():
        by_commit.setdefault(commit, []).append(seed)
    if not by_commit:
        return []
    parts = [
        f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(seeds)} at "
        f"{'no recorded commit' if commit is None else 'commit ' + commit[:12]}"
        for commit, seeds in by_commit.items()
    ]
    return [f"Code: {'; '.join(parts)} (each seed's runs at one commit).", ""]


def _hosts_line(seed_hosts: Mapping[str, Sequence[str]]) -> list[str]:
    """Which host each seed ran on, seeds of one host together; a seed whose runs span hosts is
    named apart, since its pairs then differ in hardware as well as in method."""
    by_hosts: dict[tuple[str, ...], list[str]] = {}
    for seed, hosts in seed_hosts.items():
        if hosts:
            by_hosts.setdefault(tuple(hosts), []).append(seed)
    if not by_hosts:
        return []
    parts = [
        f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(seeds)} on {' and '.join(hosts)}"
        + (" (**its runs span hosts**)" if len(hosts) > 1 else "")
        for hosts, seeds in by_hosts.items()
    ]
    return [
        f"Hosts: {'; '.join(parts)}. The virtual clock is pinned, so times, plans and bytes do "
        "not depend on the host; accuracy and loss are reproducible to the digit only on one "
        "CPU family.",
        "",
    ]


def markdown(data: Mapping[str, Any]) -> str:
    seeds = data["seeds"]
    lines = [
        "# Comparison over paired seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))}; targets "
        f"{', '.join(f'{t:.4f}' for t in data['targets'])}; baselines "
        f"{', '.join(data['baselines']) or 'none'}.",
        "",
        *_commits_line(data.get("seed_commits", {})),
        *_hosts_line(data.get("seed_hosts", {})),
        *_interim_note(seeds, data.get("planned_seeds", seeds)),
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
        *_claims_section(data),
        *_host_sections(data, seeds),
        *_board_sections(data, seeds),
        *_budget_section(data, seeds),
        *_run_sections(data, seeds),
        *_memory_section(data),
    ]
    return "\n".join(lines)


def write_report(out: str | Path, interim: bool = False) -> dict[str, Any]:
    """Write ``comparison.md``, ``comparison.json`` and ``accuracy.png`` into ``out`` (with
    ``interim``, over the seeds finished so far: see ``read_runs``)."""
    from fedquad.report.plots import plot_seed_bands
    from fedquad.report.run_info import read_run_info

    out = Path(out)
    runs = read_runs(out, interim)
    data = report_data(runs)
    atomic_write_text(out / "comparison.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", markdown(data))
    infos = [read_run_info(run_dir(out, a.label, s)) for a in runs.arms for s in runs.seeds]
    plot_seed_bands(runs.metrics, runs.targets, out / "accuracy.png", infos)
    return data
