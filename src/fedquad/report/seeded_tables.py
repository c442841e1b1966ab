"""The markdown of a comparison over paired seeds: ``comparison.md``, rendered from the data
that ``seeded.report_data`` gathers (and ``comparison.json`` holds), so the tables never compute
anything the JSON lacks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedquad.report.claims import NO_THRESHOLD, primary_target
from fedquad.report.compare import MIB, NO_VALUE, NOT_REACHED
from fedquad.report.memory_claim import MEASURED_FILE
from fedquad.report.results import RECORD_FLAGS
from fedquad.report.stats import BEST

PLANNED_ON_HOST = "re-timed, planned on the host clock"
ROUND_COLUMNS = 10
"""Rounds the learning-per-round table shows at most."""


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return NOT_REACHED if value is None else format(value / scale, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _section(
    title: str, intro: str, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> list[str]:
    """A second-level section: its title, one paragraph saying what the table shows, the table."""
    return [f"## {title}", "", intro, "", *_table(header, rows)]


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
        rows.append(
            [
                item["label"] + (mark or {}).get(item["label"], ""),
                f"{v['reached']} of {v['seeds']}",
                _num(v["geometric_mean"], fmt, scale),
                *(_num(x, fmt, scale) for x in v["per_seed"]),
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
                _num(rounds, ".1f"),
                _num(pace, ".1f"),
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
    """One row per (label, other): the paired ratio's geometric mean, interval, counts and
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
        for s in item.get(key, []):
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


def _between_entries_section(
    title: str, data: Mapping[str, Any], seeds: Sequence[int], mark: Mapping[str, str] | None = None
) -> list[str]:
    """The entries under test against each other (both directions, so that each reads as
    "X over Y"); nothing where fewer than two are under test."""
    if not any(item.get("speedups_between_entries") for item in data["labels"]):
        return []
    return [
        title,
        "",
        "Each entry under test over each other one, paired as over a baseline.",
        "",
        *_ratio_table(data, "speedups_between_entries", "speed-up", seeds, mark),
    ]


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
            *_between_entries_section("### Speed-up between the entries under test", block, seeds),
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
            *_between_entries_section(
                f"### Target {target}: speed-up between the entries under test, board clock",
                block,
                seeds,
                mark,
            ),
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


def _tiers_and_budgets(
    runs: Sequence[Mapping[str, Any]],
) -> tuple[list[str], dict[str, int]]:
    """The tiers that trained in any run, in the runs' order, and each tier's largest budget."""
    tiers = list(dict.fromkeys(t for r in runs for t in r["peak_memory_bytes"]))
    budgets: dict[str, int] = {}
    for r in runs:
        for tier, budget in r["memory_budget_bytes"].items():
            budgets[tier] = max(budgets.get(tier, 0), budget)
    return tiers, budgets


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
    tiers, budgets = _tiers_and_budgets(runs)

    def mib(values: Mapping[str, int], tier: str) -> str:
        return f"{values[tier] / MIB:.1f}" if tier in values else NO_VALUE

    lines += _section(
        "Peak memory per tier (MiB)",
        "The largest predicted training memory of a trained device of the tier over every seed "
        "(the cost model's, from the run records), under the tier's memory budget.",
        ["label", *tiers],
        [
            ["budget", *(mib(budgets, t) for t in tiers)],
            *([r["label"], *(mib(r["peak_memory_bytes"], t) for t in tiers)] for r in runs),
        ],
    )
    lines += _section(
        "Device-rounds",
        "Per seed, in seed order: devices that trained and were aggregated, sampled devices that "
        "sat out, and trained device-rounds that quantized at least one block's saved "
        "activations, or whose records say they trained over their memory budget "
        "(planner.infeasible = 'ignore') or with checkpointed blocks; records written before "
        "those fields existed count 0.",
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
    )
    lines += _configs_section(runs, tiers)
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

    return _section(
        "Learning per round",
        "A time to target is rounds times seconds per round; this is the rounds' side. Mean test "
        "accuracy over the seeds after each round (its last evaluation at or before the round; "
        "a count in brackets where fewer seeds have one), beside the mean LoRA depth of a "
        "trained device-round and the mean megabytes uploaded per round (the LoRA parameters "
        "the round trained).",
        ["label", "depth per device-round", "MB up per round", *(f"round {k}" for k in shown)],
        [row(r) for r in runs],
    )


def _configs_section(runs: Sequence[Mapping[str, Any]], tiers: Sequence[str]) -> list[str]:
    def cell(configs: Mapping[str, int] | None) -> str:
        return ", ".join(f"{k}: {n}" for k, n in configs.items()) if configs else NO_VALUE

    return _section(
        "Depth and quantized blocks per tier",
        "Trained device-rounds over every seed by LoRA depth d and number of quantized blocks q, "
        "the most frequent first.",
        ["label", *tiers],
        [[r["label"], *(cell(r.get("configs_per_tier", {}).get(t)) for t in tiers)] for r in runs],
    )


def _ratio_and_interval(row: Mapping[str, Any]) -> str:
    text = f"{row['value']:.2f}×"
    if row["interval_95"] is not None:
        low, high = row["interval_95"]
        text += f" ({low:.2f}–{high:.2f})"
    return text


def _claim_cell(row: Mapping[str, Any] | None, named: str | None = None) -> str:
    if row is None:
        return NO_VALUE
    if row["value"] is None:
        return f"{NOT_REACHED} in any seed"
    cell = _ratio_and_interval(row)
    if "seeds" in row:
        cell += f", {row['seeds']} of {row['of_seeds']} seeds"
    if named is not None and row["over"] != named:
        cell += f" over {row['over']}"
    return _with_verdict(cell, row["verdict"], ": ")


def _threshold(row: Mapping[str, Any]) -> str:
    if row["threshold"] is None:
        return NO_VALUE
    return f"{'≤' if row['lower_is_better'] else '≥'} {row['threshold']:.2f}×"


def _glance_section(data: Mapping[str, Any]) -> list[str]:
    """One row per entry at the primary target: the figures a results page quotes side by side,
    each taken from the fuller tables below."""
    if not data["per_target"]:
        return []
    target = primary_target(data["targets"])
    block = next(b for b in data["per_target"] if b["target_accuracy"] == target)
    runs = {r["label"]: r for r in data["runs"]}
    tiers, budgets = _tiers_and_budgets(data["runs"])

    def reached(summary: Mapping[str, Any], scale: float, fmt: str) -> str:
        cell = _num(summary["geometric_mean"], fmt, scale)
        if summary["geometric_mean"] is not None and summary["reached"] < summary["seeds"]:
            cell += f" ({summary['reached']} of {summary['seeds']})"
        return cell

    def pace(p: Mapping[str, Any]) -> str:
        if p["mean_rounds"] is None:
            return NOT_REACHED
        return f"{p['mean_rounds']:.1f} × {p['mean_seconds_per_round']:.1f}"

    def peak(r: Mapping[str, Any], tier: str) -> str:
        value = r["peak_memory_bytes"].get(tier)
        return NO_VALUE if value is None else f"{value / MIB:.0f}"

    rows = []
    for item in block["labels"]:
        r = runs[item["label"]]
        accuracy = r["final_accuracy_mean"]
        rows.append(
            [
                item["label"],
                reached(item["time_to_target_seconds"], 1.0, ".0f"),
                pace(item["pace_to_target"]),
                reached(item["bytes_to_target"], 1e6, ".1f"),
                NO_VALUE if accuracy is None else f"{accuracy:.3f}",
                f"{sum(r['device_rounds_trained'])} / {sum(r['device_rounds_sat_out'])}",
                *(peak(r, t) for t in tiers),
            ]
        )
    header = [
        "label",
        f"time to {target:.2f} (s)",
        "rounds × s per round",
        f"MB to {target:.2f}",
        "final accuracy",
        "device-rounds trained / sat out",
        *(f"peak MiB, {t} ({budgets[t] / MIB:.0f})" if t in budgets else f"peak MiB, {t}"
          for t in tiers),
    ]  # fmt: skip
    return _section(
        f"Each entry at {target:.2f}",
        "The primary target's figures side by side, from the tables below: time and bytes to "
        "target as geometric means over the seeds that reached (their count where some did not), "
        "rounds to target × the mean virtual seconds of those rounds, final accuracy the mean "
        "over the seeds, device-rounds summed over the seeds, and the largest predicted training "
        "memory of a trained device per tier (its budget in brackets).",
        header,
        rows,
    )


def _by_seed_count_cell(cell: Mapping[str, Any] | None, count: int) -> str:
    if cell is None:
        return NO_VALUE
    if cell["value"] is None:
        return f"{NOT_REACHED} in any seed"
    text = _ratio_and_interval(cell)
    if cell["seeds"] < count:
        text += f", {cell['seeds']} of {count} seeds"
    return _with_verdict(text, cell["verdict"], " ")


def _with_verdict(figure: str, verdict: str, separator: str) -> str:
    return figure if verdict == NO_THRESHOLD else f"{figure}{separator}{verdict}"


def _by_seed_count_section(data: Mapping[str, Any]) -> list[str]:
    found = data.get("claims_by_seed_count")
    if not found:
        return []
    counts = found["seed_counts"]
    seeds = data["seeds"]
    return _section(
        f"Claims at {found['target_accuracy']:.2f} as seeds were added",
        "Each claim at the primary target over the first k seeds in the comparison's order ("
        f"{', '.join(map(str, seeds))}), for every k from {counts[0]}: the figures an "
        "escalation (docs/methods.md §8) saw at each stage, read as in the claims table. The "
        "last column is the claims table's.",
        ["claim", "clock", *(f"{k} seeds" for k in counts)],
        [
            [
                row["claim"],
                row["clock"],
                *(_by_seed_count_cell(row["by_seed_count"].get(str(k)), k) for k in counts),
            ]
            for row in found["rows"]
        ],
    )


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
    return _section(
        "Claims against their thresholds",
        "Each claim of docs/methods.md §8 that this comparison's entries allow: the geometric "
        "mean over the paired seeds where both reached, its bootstrap 95% interval and the seed "
        "count, on the host clock and re-timed on the board clock (below). Met: the whole "
        "interval is on the claimed side of the threshold; missed: it is wholly on the other; "
        "undecided: it straddles the threshold (the protocol's cue to add seeds).",
        ["claim", "target", "host clock", "board clock", "threshold", "source"],
        rows,
    )


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
        *_glance_section(data),
        *_by_seed_count_section(data),
        *_host_sections(data, seeds),
        *_board_sections(data, seeds),
        *_budget_section(data, seeds),
        *_run_sections(data, seeds),
        *_memory_section(data),
    ]
    return "\n".join(lines)
