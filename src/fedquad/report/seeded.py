"""The report of a comparison over paired seeds (docs/methods.md §8), from its directory alone.

Reads ``plan.json`` (entries, seeds, targets, budgets), every run's ``metrics.jsonl`` under
``<label>/seed-<s>/`` with, where they are kept, its ``cost_profile.json``, ``fleet.toml`` and
``config.toml`` (the board clock and the memory claim need them), and ``memory_measured.json``
if present; writes ``comparison.md``, ``comparison.json``, ``accuracy.png`` and, with the board
clock, ``accuracy_board.png``. Nothing here
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
    Metrics,
    budget_per_tier,
    final_accuracy,
    ordered_tiers,
    peak_memory_per_tier,
)
from fedquad.report.memory_claim import memory_claim, read_measured
from fedquad.report.provenance import host_name, run_provenance
from fedquad.report.results import RECORD_FLAGS, atomic_write_text, read_metrics
from fedquad.report.retime import BOARD, RunCost, exact_on_board, read_run_cost, retime
from fedquad.report.seeded_tables import markdown
from fedquad.report.stats import (
    BEST,
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
BOARD_PLOT = "accuracy_board.png"
PLAN_FILE = "plan.json"
PLAN_SCHEMA = 1
FEWEST_SEEDS_SHOWN = 3
"""The fewest first seeds the claims-by-seed-count table starts from: an interval over two
paired ratios says next to nothing."""


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
    baseline and the best one; for an entry under test, also its speed-up over every other entry
    under test (LEGEND over FedQuad, joint over each)."""
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
            if not arm.baseline:
                item["speedups_between_entries"] = [
                    _speedup_json(o.label, paired_speedup(times[arm.label], times[o.label]))
                    for o in arms
                    if not o.baseline and o.label != arm.label
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
        host = _crossed_per_label(runs, runs.metrics, target)
        board = None if board_metrics is None else _crossed_per_label(runs, board_metrics, target)
        per_target.append(
            {"target_accuracy": target, **_claims_at(methods, baselines, host, board)}
        )
    return {"per_target": per_target, "memory": claims.memory_claims(memory)}


def _crossed_per_label(
    runs: SeededRuns, metrics: Mapping[str, Mapping[int, Metrics]], target: float
) -> dict[str, dict[int, Crossing | None]]:
    return {a.label: _crossed(metrics[a.label], target) for a in runs.arms}


def _claims_at(
    methods: Mapping[str, str],
    baselines: Sequence[str],
    host: Mapping[str, Mapping[int, Crossing | None]],
    board: Mapping[str, Mapping[int, Crossing | None]] | None,
) -> dict[str, Any]:
    """The time claims on each clock and the bytes claims (the host clock's bytes serve both) at
    one target, from each label's crossings of it."""
    return {
        "host": claims.time_claims(methods, baselines, {lb: _seconds(c) for lb, c in host.items()}),
        "board": None
        if board is None
        else claims.time_claims(methods, baselines, {lb: _seconds(c) for lb, c in board.items()}),
        "bytes": claims.bytes_claims(methods, {lb: _byte_counts(c) for lb, c in host.items()}),
    }


def _claims_by_seed_count(
    runs: SeededRuns,
    board_metrics: Mapping[str, Mapping[int, Metrics]] | None,
    baselines: Sequence[str],
) -> dict[str, Any] | None:
    """The primary target's claims over the first k seeds, for each k from ``FEWEST_SEEDS_SHOWN``
    to all: how the figures moved as an escalated comparison added seeds (docs/methods.md §8).
    ``None`` where there is only one such count."""
    counts = list(range(FEWEST_SEEDS_SHOWN, len(runs.seeds) + 1))
    if len(counts) < 2:
        return None
    target = claims.primary_target(runs.targets)
    methods = {a.label: a.method for a in runs.arms}
    host = _crossed_per_label(runs, runs.metrics, target)
    board = None if board_metrics is None else _crossed_per_label(runs, board_metrics, target)
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def keep(clock: str, found: list[dict[str, Any]], k: int) -> None:
        for row in found:  # keyed by its text: a best baseline that changes gets its own row
            entry = rows.setdefault(
                (clock, row["claim"]),
                {"claim": row["claim"], "clock": clock, "threshold": row["threshold"],
                 "lower_is_better": row["lower_is_better"], "by_seed_count": {}},
            )  # fmt: skip
            entry["by_seed_count"][str(k)] = {
                key: row[key] for key in ("value", "interval_95", "seeds", "verdict")
            }

    def first(k: int, crossed: Mapping[str, Mapping[int, Crossing | None]]) -> dict[str, Any]:
        kept = set(runs.seeds[:k])
        return {lb: {s: c for s, c in by.items() if s in kept} for lb, by in crossed.items()}

    for k in counts:
        on_board = None if board is None else first(k, board)
        found = _claims_at(methods, baselines, first(k, host), on_board)
        keep("host", found["host"] + found["bytes"], k)
        keep("board", found["board"] or [], k)
    return {"target_accuracy": target, "seed_counts": counts, "rows": list(rows.values())}


def report_data(runs: SeededRuns) -> dict[str, Any]:
    """Everything the tables show, as JSON-ready data (``null``: not reached)."""
    return _report_and_board_metrics(runs)[0]


def _report_and_board_metrics(
    runs: SeededRuns,
) -> tuple[dict[str, Any], dict[str, dict[int, Metrics]] | None]:
    """The report's data and the runs re-timed on the board clock (``None``: not available)."""
    baselines = [a.label for a in runs.arms if a.baseline]
    board = _board_clock(runs, baselines)
    board_metrics = board.pop("metrics", None)
    memory = _memory_claim(runs)
    data = {
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
        "claims_by_seed_count": _claims_by_seed_count(runs, board_metrics, baselines),
    }
    return data, board_metrics


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


def write_report(out: str | Path, interim: bool = False) -> dict[str, Any]:
    """Write ``comparison.md``, ``comparison.json``, ``accuracy.png`` and, where the runs can be
    re-timed, ``accuracy_board.png`` into ``out`` (with ``interim``, over the seeds finished so
    far: see ``read_runs``)."""
    from fedquad.report.plots import plot_seed_bands
    from fedquad.report.run_info import read_run_info

    out = Path(out)
    runs = read_runs(out, interim)
    data, board_metrics = _report_and_board_metrics(runs)
    atomic_write_text(out / "comparison.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", markdown(data))
    infos = [read_run_info(run_dir(out, a.label, s)) for a in runs.arms for s in runs.seeds]
    plot_seed_bands(runs.metrics, runs.targets, out / "accuracy.png", infos)
    board_plot = out / BOARD_PLOT
    if board_metrics is None:
        board_plot.unlink(missing_ok=True)  # an earlier report's, of runs no longer re-timed
    else:
        plot_seed_bands(board_metrics, runs.targets, board_plot, infos, clock="board")
    return data
