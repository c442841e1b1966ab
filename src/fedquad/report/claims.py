"""The papers' claims and ours (docs/methods.md §8), each measured against its threshold from a
comparison's paired times and bytes to target.

A claim compares one entry with another over the paired seeds: a speed-up ``T(Y) / T(X)``, or a
bytes ratio ``B(X) / B(Y)``, with the bootstrap interval of ``report.stats``. Its verdict reads
the interval, never the mean alone: *met* where the whole interval is on the claimed side of the
threshold, *missed* where it is wholly on the other, *undecided* where it straddles it (the
protocol's cue to add seeds). Only entries the comparison holds are claimed about: an arm without
LEGEND has no LEGEND rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedquad.report.stats import PairedSpeedup, best_baseline, paired_bytes, paired_speedup

Times = Mapping[int, float | None]
"""Per seed, a run's time (or bytes) to one target; ``None``: not reached."""

MET, MISSED, UNDECIDED, NO_INTERVAL = "met", "missed", "undecided", "no interval"
NO_THRESHOLD = "—"
"""The verdict of a claim with no threshold: tables print its figure alone."""


@dataclass(frozen=True)
class Claim:
    text: str
    threshold: float | None
    """``None``: a figure reported for what it explains, with no claimed value."""
    source: str
    lower_is_better: bool = False


FEDQUAD = Claim("FedQuad over {over}", 1.4, "papers: 1.4–5.3×")
LEGEND = Claim("LEGEND over {over}", 1.5, "papers: 1.5–2.8×")
LEGEND_BYTES = Claim("LEGEND's bytes to target against {over}", 0.58, "papers: −42%", True)
JOINT = Claim("joint over the better of FedQuad and LEGEND ({over})", 1.1, "ours: ≥ 1.1×")
QUANTIZATION = Claim("FedQuad over {over} (what quantization buys)", None, "—")
MEMORY = Claim(
    "FedQuad's memory at full depth, all blocks at 8 bits / unquantized ({what})",
    0.50,
    "papers: ≥ 50% lower",
    True,
)


def primary_target(targets: Sequence[float]) -> float:
    """The target a comparison is summed up at: the middle one (docs/methods.md §8 fixes 0.78,
    0.80 as the primary, 0.82), the lower of the two middle ones for an even count."""
    ordered = sorted(targets)
    return ordered[(len(ordered) - 1) // 2]


def verdict(interval: Sequence[float] | None, claim: Claim) -> str:
    if claim.threshold is None:
        return NO_THRESHOLD
    if interval is None:
        return NO_INTERVAL
    low, high = interval
    good, bad = (high, low) if claim.lower_is_better else (low, high)
    if (good <= claim.threshold) if claim.lower_is_better else (good >= claim.threshold):
        return MET
    if (bad > claim.threshold) if claim.lower_is_better else (bad < claim.threshold):
        return MISSED
    return UNDECIDED


def _row(claim: Claim, label: str, over: str, s: PairedSpeedup) -> dict[str, Any]:
    interval = None if s.interval is None else list(s.interval)
    return {
        "claim": claim.text.format(over=over),
        "label": label,
        "over": over,
        "threshold": claim.threshold,
        "lower_is_better": claim.lower_is_better,
        "source": claim.source,
        "value": s.geometric_mean,
        "interval_95": interval,
        "seeds": s.both,
        "of_seeds": len(s.per_seed),
        "verdict": verdict(interval, claim),
    }


def time_claims(
    methods: Mapping[str, str],
    baselines: Sequence[str],
    times: Mapping[str, Times],
) -> list[dict[str, Any]]:
    """Every speed-up claim the entries allow at one target on one clock. ``methods`` maps each
    label to its method, in the comparison's order; ``times`` holds every label's times."""
    labels = list(methods)
    by_method = {m: [lb for lb in labels if methods[lb] == m] for m in set(methods.values())}
    rows = []
    best = best_baseline({b: times[b] for b in baselines})
    for x in by_method.get("fedquad", []):
        if best is not None:
            over = f"the best baseline ({best})"
            rows.append(_row(FEDQUAD, x, over, paired_speedup(times[x], times[best])))
        for b in baselines:
            rows.append(_row(FEDQUAD, x, b, paired_speedup(times[x], times[b])))
        for ablation in by_method.get("fedquad-noquant", []):
            rows.append(_row(QUANTIZATION, x, ablation, paired_speedup(times[x], times[ablation])))
    for x in by_method.get("legend", []):
        for b in by_method.get("fedlora", []):
            rows.append(_row(LEGEND, x, b, paired_speedup(times[x], times[b])))
    rivals = by_method.get("fedquad", [])[:1] + by_method.get("legend", [])[:1]
    better = best_baseline({r: times[r] for r in rivals}) if len(rivals) == 2 else None
    if better is not None:
        for x in by_method.get("joint", []):
            rows.append(_row(JOINT, x, better, paired_speedup(times[x], times[better])))
    return rows


def bytes_claims(methods: Mapping[str, str], nbytes: Mapping[str, Times]) -> list[dict[str, Any]]:
    """LEGEND's bytes to target against each FedLoRA entry, at one target."""
    legend = [lb for lb, m in methods.items() if m == "legend"]
    fedlora = [lb for lb, m in methods.items() if m == "fedlora"]
    return [
        _row(LEGEND_BYTES, x, b, paired_bytes(nbytes[x], nbytes[b]))
        for x in legend
        for b in fedlora
    ]


def memory_claims(claim: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The memory claim's ratios (the cost model's, and the measured peaks where measured): one
    exact figure each, no interval."""
    if claim is None:
        return []
    rows = []
    for what, key in (
        ("cost model", "total_ratio"),
        ("measured process peak", "measured_peak_ratio"),
        ("measured peak above the process before training", "measured_above_baseline_ratio"),
    ):
        value = claim.get(key)
        if value is None:
            continue
        interval = [value, value]
        rows.append(
            {
                "claim": MEMORY.text.format(what=what),
                "threshold": MEMORY.threshold,
                "lower_is_better": True,
                "source": MEMORY.source,
                "value": value,
                "interval_95": None,
                "verdict": verdict(interval, MEMORY),
            }
        )
    return rows
