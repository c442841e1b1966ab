"""What the plots draw, computed from per-round metrics alone: which curves coincide, and each
tier's choices per round with gaps where the tier did not train.

Pure functions, so the plots' content is tested without drawing them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedquad.report.compare import Metrics

TOLERANCE = 1e-9
"""Curves closer than this everywhere (relative, and absolute for values near 0) coincide."""

Curve = Sequence[Sequence[float]]
"""A curve as equally indexed arrays: ``(times, accuracies)``, or several such pairs."""


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def curves_coincide(a: Curve, b: Curve, tol: float = TOLERANCE) -> bool:
    """Every array of ``a`` equals the same array of ``b``, value by value (NaN equals NaN)."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(_same(float(u), float(v), tol) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def identical_groups(curves: Mapping[str, Curve], tol: float = TOLERANCE) -> list[list[str]]:
    """The labels whose curves coincide, in groups of two or more, each in the order given.

    A curve joins the first group whose first curve it coincides with (within a tolerance this
    small, coinciding is transitive in practice)."""
    groups: list[list[str]] = []
    for label, curve in curves.items():
        group = next((g for g in groups if curves_coincide(curves[g[0]], curve, tol)), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    return [g for g in groups if len(g) > 1]


def identical_note(group: Sequence[str]) -> str:
    return f"{' = '.join(group)}: identical curves"


# --------------------------------------------------------------------------- tiers per round


def device_tiers(metrics: Metrics, fleet_tiers: Sequence[tuple[str, int]] = ()) -> dict[int, str]:
    """Each device id's tier: from the fleet's tiers (ids ``0 … N-1`` in tier order, as the
    fleet numbers them), else from the devices' own records (a device that never trained is
    then unknown)."""
    out: dict[int, str] = {}
    for name, count in fleet_tiers:
        for _ in range(count):
            out[len(out)] = name
    if not out:
        for m in metrics:
            for d in m["devices"]:
                if "device" in d:
                    out[int(d["device"])] = d["tier"]
    return out


@dataclass(frozen=True)
class TierSeries:
    """One tier over every round of a run; NaN where none of its devices trained."""

    rounds: tuple[int, ...]
    mean_depth: tuple[float, ...]
    mean_quantized: tuple[float, ...]
    sat_out_rounds: tuple[int, ...]
    """Rounds where a sampled device of the tier sat out (no feasible configuration)."""


def tier_series(
    metrics: Metrics, tiers: Sequence[str], tier_of: Mapping[int, str]
) -> dict[str, TierSeries]:
    """Per tier: its mean depth and mean quantized blocks in each round, NaN in rounds where it
    did not train (so a line breaks there instead of joining the rounds around the gap), and
    the rounds where some of its sampled devices sat out (devices of unknown tier are left
    out)."""
    rounds = tuple(int(m["round"]) for m in metrics)
    depth: dict[str, list[float]] = {t: [] for t in tiers}
    quantized: dict[str, list[float]] = {t: [] for t in tiers}
    sat_out: dict[str, list[int]] = {t: [] for t in tiers}
    for m in metrics:
        trained: dict[str, list[Mapping[str, Any]]] = {}
        for d in m["devices"]:
            trained.setdefault(d["tier"], []).append(d)
        sat = {tier_of.get(int(i)) for i in m.get("sat_out", {})}
        for t in tiers:
            devices = trained.get(t, [])
            n = len(devices)
            depth[t].append(sum(d["depth"] for d in devices) / n if n else math.nan)
            quantized[t].append(sum(d["quantized"] for d in devices) / n if n else math.nan)
            if t in sat:
                sat_out[t].append(int(m["round"]))
    return {
        t: TierSeries(rounds, tuple(depth[t]), tuple(quantized[t]), tuple(sat_out[t]))
        for t in tiers
    }
