"""What a plot says about its runs beside their metrics: dataset, model, fleet, seed and the test
set's label shares, read from each run's directory (``config.toml``, ``fleet.toml``,
``summary.json``).

A file that is missing or unreadable leaves its parts unknown, so plots of metrics alone still
draw; the title then names only what is known.
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAME = 1e-12
"""Majority accuracies of runs closer than this are one value."""


@dataclass(frozen=True)
class RunInfo:
    dataset: str | None = None
    model: str | None = None
    fleet: str | None = None
    """The fleet's name (a fleet file by its file name)."""
    devices: int | None = None
    per_round: int | None = None
    seed: int | None = None
    tiers: tuple[tuple[str, int], ...] = ()
    """The fleet's tiers with their device counts, in device-id order."""
    label_shares: Mapping[str, float] | None = field(default=None, compare=False)
    """Each test label's share of the test set (``summary.json``'s ``test_label_shares``)."""


def label_shares(labels: Iterable[str]) -> dict[str, float]:
    """Each label's share of ``labels``, the most common first (ties by name)."""
    counts = Counter(labels)
    total = sum(counts.values())
    ordered = sorted(counts, key=lambda name: (-counts[name], name))
    return {name: counts[name] / total for name in ordered}


def _read(path: Path, parse: Any) -> dict[str, Any]:
    try:
        data = parse(path.read_bytes())
    except (OSError, ValueError):  # TOMLDecodeError and JSONDecodeError are ValueErrors
        return {}
    return data if isinstance(data, dict) else {}


def _short(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    # a local path or a fleet file by its last part; hub ids (org/name) stay whole
    return Path(name).name if name.startswith(("/", ".", "~")) or name.endswith(".toml") else name


def read_run_info(run_dir: str | Path) -> RunInfo:
    """The run's info from its directory; parts whose file is missing are ``None``."""
    run_dir = Path(run_dir)
    config = _read(run_dir / "config.toml", lambda b: tomllib.loads(b.decode()))
    fleet = _read(run_dir / "fleet.toml", lambda b: tomllib.loads(b.decode()))
    summary = _read(run_dir / "summary.json", json.loads)
    tiers = tuple(
        (str(t["name"]), int(t["count"]))
        for t in fleet.get("tier", [])
        if isinstance(t, dict) and "name" in t and "count" in t
    )
    shares = summary.get("test_label_shares")
    seed = config.get("seed")
    return RunInfo(
        dataset=_short(config.get("data", {}).get("name")),
        model=_short(config.get("model", {}).get("name")),
        fleet=_short(config.get("fleet", {}).get("name")),
        devices=sum(n for _, n in tiers) if tiers else None,
        per_round=fleet.get("per_round") if isinstance(fleet.get("per_round"), int) else None,
        seed=seed if isinstance(seed, int) else None,
        tiers=tiers,
        label_shares=shares if isinstance(shares, dict) and shares else None,
    )


# --------------------------------------------------------------------------- the title


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def seeds_text(seeds: Sequence[int]) -> str:
    """``seed 3``, ``seeds 0, 2``, ``seeds 0–4``: runs of three or more consecutive seeds as
    a range."""
    ordered = sorted(set(seeds))
    parts: list[str] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            run = ordered[start:i]
            parts += [f"{run[0]}–{run[-1]}"] if len(run) >= 3 else [str(s) for s in run]
            start = i
    return f"{'seed' if len(ordered) == 1 else 'seeds'} {', '.join(parts)}"


def _fleet_text(infos: Sequence[RunInfo]) -> str | None:
    names = _distinct(i.fleet for i in infos)
    if not names:
        return None
    text = f"fleet {' / '.join(names)}"
    sizes = _distinct((i.devices, i.per_round) for i in infos if i.devices and i.per_round)
    if len(sizes) == 1:
        devices, per_round = sizes[0]
        text += f" ({devices} devices, {per_round} per round)"
    return text


def describe(infos: Iterable[RunInfo], seeds: Sequence[int] | None = None) -> str:
    """One line for a plot's title: dataset, model, fleet and seeds of the runs it draws
    (several values joined by ``/``); ``seeds`` when given, else the runs' own."""
    infos = list(infos)
    parts = []
    for word, values in [
        ("dataset", _distinct(i.dataset for i in infos)),
        ("model", _distinct(i.model for i in infos)),
    ]:
        if values:
            parts.append(f"{word} {' / '.join(values)}")
    fleet = _fleet_text(infos)
    if fleet:
        parts.append(fleet)
    seed_list = list(seeds) if seeds is not None else _distinct(i.seed for i in infos)
    if seed_list:
        parts.append(seeds_text(seed_list))
    return " · ".join(parts)


# --------------------------------------------------------------------------- the majority class


@dataclass(frozen=True)
class MajorityLine:
    accuracy: float
    label: str


def majority_line(infos: Iterable[RunInfo]) -> MajorityLine | None:
    """The accuracy of always answering the test set's most common label, with its legend text;
    where the runs' test sets differ (other seeds draw other splits), their mean and range.
    ``None`` when no run recorded its label shares."""
    majorities = []
    for info in infos:
        shares = info.label_shares
        if shares:
            name = min(shares, key=lambda n: (-shares[n], n))
            majorities.append((name, float(shares[name])))
    if not majorities:
        return None
    values = [v for _, v in majorities]
    names = _distinct(n for n, _ in majorities)
    low, high = min(values), max(values)
    which = f"always {names[0]!r}" if len(names) == 1 else "the most common test label"
    if high - low <= SAME:
        return MajorityLine(low, f"majority class {low:.3f} ({which})")
    mean = sum(values) / len(values)
    return MajorityLine(
        mean, f"majority class {mean:.3f} ({which}; {low:.3f}–{high:.3f} over runs)"
    )
