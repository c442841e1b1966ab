"""``fedquad compare --seeds … --targets …``: every comparison entry over paired seeds
(docs/methods.md §8), into one directory that a later call continues.

A comparison entry is ``(label, method, overrides)``, so one method can appear twice with
different options; run directories, tables and plots use the label. Each (label, seed) runs into
``OUT/<label>/seed-<s>/``. ``OUT/plan.json`` records the entries, seeds, targets, budgets and the
commit each seed ran at. Calling it again on the same ``OUT`` keeps every run that has a
``summary.json`` (it finished), resumes the others from their checkpoints, and refuses when a run's
stored config differs from what would run now, or a seed that has begun would finish at another
commit. A seed's runs are the pairs, so each seed runs at one commit; the comparison itself can
grow by seeds at a later commit (docs/methods.md §8 adds seeds where an interval straddles a
threshold).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedquad.config import apply_overrides, from_dict, read_toml
from fedquad.errors import FedquadError
from fedquad.methods_registry import method_names
from fedquad.report.budgets import check_budgets
from fedquad.report.provenance import code_commit
from fedquad.report.results import atomic_write_text
from fedquad.report.seeded import (
    PLAN_FILE,
    PLAN_SCHEMA,
    read_plan,
    run_dir,
    stored_seed_commits,
    write_report,
)

COMPARE_TABLE = "compare"
"""The table of a comparison config file that holds seeds, targets and entries; every other
table is the experiment config the entries share."""
_PER_RUN_KEYS = ("output_dir", "run_name")
"""Config keys that name where a run is written, not what it computes."""


@dataclass(frozen=True)
class Entry:
    label: str
    method: str
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides applied on top of the shared config, as ``--set`` takes them."""


@dataclass
class Plan:
    entries: list[Entry]
    seeds: list[int]
    targets: list[float]
    base: dict[str, Any] = field(default_factory=dict)
    """The shared raw config (file and ``--set`` overrides applied)."""
    budgets: list[float] = field(default_factory=list)
    """Virtual seconds of "accuracy at a budget" (docs/methods.md §8), fixed before any run."""


# --------------------------------------------------------------------------- parsing


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-4``: distinct seeds >= 0, in the order given."""
    seeds: list[int] = []
    for item in (s.strip() for s in text.split(",")):
        low, sep, high = item.partition("-")
        try:
            values = list(range(int(low), int(high) + 1)) if sep else [int(item)]
        except ValueError:
            values = []
        if not values or any(v < 0 for v in values):
            raise FedquadError(
                f"--seeds {text!r}: {item!r} is not a seed; use integers >= 0, e.g. 0,1,2 or 0-4"
            )
        seeds += values
    if len(set(seeds)) != len(seeds):
        raise FedquadError(f"--seeds {text!r} repeats a seed: give each seed once")
    return seeds


def parse_targets(text: str) -> list[float]:
    """``0.78,0.80,0.82``: distinct accuracies in (0, 1], in the order given."""
    targets: list[float] = []
    for item in (s.strip() for s in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            raise FedquadError(
                f"--targets {text!r}: {item!r} is not a target accuracy; use numbers in (0, 1]"
            )
        targets.append(value)
    if len(set(targets)) != len(targets):
        raise FedquadError(f"--targets {text!r} repeats a target: give each target once")
    return targets


def _label_ok(label: str) -> bool:
    return bool(label) and all(c.isalnum() or c in "-_." for c in label) and label[0] != "."


def parse_entries(items: Sequence[Mapping[str, Any]], where: str) -> list[Entry]:
    """``[[compare.entry]]`` tables: ``label`` (default the method), ``method``, ``set``."""
    entries = []
    for i, item in enumerate(items, start=1):
        unknown = sorted(set(item) - {"label", "method", "set"})
        if unknown:
            raise FedquadError(
                f"{where}: entry {i} has unknown key {unknown[0]!r}; use label, method and set"
            )
        method = item.get("method")
        if method not in method_names():
            raise FedquadError(
                f"{where}: entry {i} has method {method!r}; use one of {', '.join(method_names())}"
            )
        label = item.get("label", method)
        if not isinstance(label, str) or not _label_ok(label):
            raise FedquadError(
                f"{where}: entry {i} has label {label!r}; use letters, digits, '-', '_' or '.'"
            )
        overrides = item.get("set", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise FedquadError(f"{where}: entry {i}'s set must be a list of 'key=value' strings")
        entries.append(Entry(label, method, tuple(overrides)))
    return entries


def entries_from_methods(methods: Sequence[str]) -> list[Entry]:
    return [Entry(m, m) for m in methods]


def load_plan(
    config_path: str | Path | None,
    overrides: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    targets: Sequence[float] | None = None,
) -> Plan:
    """The comparison a config file's ``[compare]`` table and the command line describe.

    ``methods``, ``seeds`` and ``targets`` from the command line replace the file's; without
    seeds the config's one seed is used, without targets ``federation.target_accuracy``.
    """
    data = read_toml(config_path) if config_path is not None else {}
    where = str(config_path)
    table = data.pop(COMPARE_TABLE, {})
    if not isinstance(table, dict):
        raise FedquadError(f"{where}: [compare] must be a table of options")
    unknown = sorted(set(table) - {"seeds", "targets", "budgets", "entry"})
    if unknown:
        raise FedquadError(
            f"{where}: unknown key compare.{unknown[0]}; use seeds, targets, budgets, entry"
        )
    budgets = check_budgets(table["budgets"], where) if "budgets" in table else []
    base = apply_overrides(data, list(overrides))
    shared = from_dict(base)
    if methods is not None:
        entries = entries_from_methods(methods)
    elif "entry" in table:
        entries = parse_entries(table["entry"], where)
    else:
        from fedquad.compare import DEFAULT_METHODS

        entries = entries_from_methods(DEFAULT_METHODS)
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        repeated = next(x for x in labels if labels.count(x) > 1)
        raise FedquadError(f"comparison label {repeated!r} appears twice: give each entry a label")
    if seeds is None:
        seeds = (
            parse_seeds(",".join(str(s) for s in table["seeds"]))
            if "seeds" in table
            else [shared.seed]
        )
    if targets is None:
        if "targets" in table:
            targets = parse_targets(",".join(str(t) for t in table["targets"]))
        elif shared.federation.target_accuracy is not None:
            targets = [shared.federation.target_accuracy]
        else:
            raise FedquadError(
                "a comparison over seeds needs its targets fixed in advance: "
                "give --targets, e.g. --targets 0.78,0.80,0.82"
            )
    return Plan(entries, list(seeds), list(targets), base, budgets)


# --------------------------------------------------------------------------- the runs


def run_config_data(plan: Plan, entry: Entry, seed: int, out: Path) -> dict[str, Any]:
    data = apply_overrides(plan.base, list(entry.overrides))
    data["method"] = entry.method
    data["seed"] = seed
    data["output_dir"] = str(out / entry.label)
    data["run_name"] = f"seed-{seed}"
    return data


def _comparable(config_data: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as dotted keys, without the keys that only say where it is written."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(from_dict(dict(config_data)).to_dict(), "")
    return {k: v for k, v in flat.items() if k not in _PER_RUN_KEYS}


def _state(path: Path) -> str:
    """``finished``, ``started`` (resumable) or ``new`` (nothing worth keeping)."""
    if (path / "summary.json").is_file():
        return "finished"
    started = all((path / n).is_file() for n in ("config.toml", "cost_profile.json", "fleet.toml"))
    return "started" if started else "new"


def plan_json(
    plan: Plan, commit: str | None, begun: Mapping[int, str | None] | None = None
) -> dict[str, Any]:
    """``begun``: the commits of seeds that ran before; every other seed runs at ``commit``."""
    begun = begun or {}
    return {
        "schema": PLAN_SCHEMA,
        "commit": commit,
        "seed_commits": {str(s): begun.get(s, commit) for s in plan.seeds},
        "seeds": plan.seeds,
        "targets": plan.targets,
        "budgets": plan.budgets,
        "entries": [
            {"label": e.label, "method": e.method, "set": list(e.overrides)} for e in plan.entries
        ],
    }


def check_resumable(out: Path, plan: Plan, commit: str | None) -> dict[tuple[str, int], str]:
    """Each run's state; refuses when a stored config differs from what would run now, or when a
    seed that has begun (a run of it started or finished) has runs left and began at another
    commit: its pairs would mix two versions of the code."""
    states = {}
    for entry in plan.entries:
        for seed in plan.seeds:
            path = run_dir(out, entry.label, seed)
            state = _state(path)
            if state != "new":
                stored = _comparable(read_toml(path / "config.toml"))
                wanted = _comparable(run_config_data(plan, entry, seed, out))
                if stored != wanted:
                    changed = sorted(
                        k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k)
                    )
                    verb = "differs" if len(changed) == 1 else "differ"
                    raise FedquadError(
                        f"'{path}' ran with another config ({', '.join(changed)} {verb}): "
                        "use a new --out, or the config it ran with"
                    )
            states[(entry.label, seed)] = state
    for seed, began_at in begun_seed_commits(out, states).items():
        left = any(states[(e.label, seed)] != "finished" for e in plan.entries)
        if left and began_at != commit:
            raise FedquadError(
                f"'{out}': seed {seed} was started at commit {began_at} and this "
                f"is {commit}: resume it from a checkout of that commit, or use a new --out"
            )
    return states


def begun_seed_commits(out: Path, states: Mapping[tuple[str, int], str]) -> dict[int, str | None]:
    """The stored commits of the seeds that have begun in ``out`` (a run of them started or
    finished); a seed the stored plan lacks has no commit to keep."""
    if not (out / PLAN_FILE).is_file():
        return {}
    began_at = stored_seed_commits(read_plan(out))
    begun = {seed for (_label, seed), state in states.items() if state != "new"}
    return {s: c for s, c in began_at.items() if s in begun}


def run_comparison(
    plan: Plan,
    out: str | Path,
    *,
    progress: bool = False,
    on_run: Callable[[int, int, str, int, str], None] = lambda *_a: None,
    on_finished: Callable[[str, int, Path], None] = lambda *_a: None,
) -> Path:
    """Run (or continue) every (label, seed) of ``plan`` into ``out``, then write the report.

    ``on_run(i, n, label, seed, state)`` is called before each run that is started or resumed,
    ``on_finished(label, seed, run_dir)`` for every finished run: the kept ones first, then each
    as it finishes.
    """
    from fedquad.api import resume, run  # torch and transformers: only when something runs

    out = Path(out)
    configs = {  # every config is checked before the first run starts
        (e.label, s): from_dict(run_config_data(plan, e, s, out))
        for s in plan.seeds  # seed by seed: a comparison stopped early still has paired seeds
        for e in plan.entries
    }
    commit = code_commit()
    states = check_resumable(out, plan, commit) if out.is_dir() else {}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PLAN_FILE).is_file() or any(s != "finished" for s in states.values()):
        begun = begun_seed_commits(out, states)
        atomic_write_text(
            out / PLAN_FILE, json.dumps(plan_json(plan, commit, begun), indent=2) + "\n"
        )
    todo = [key for key in configs if states.get(key, "new") != "finished"]
    for label, seed in configs:
        if (label, seed) not in todo:
            on_finished(label, seed, run_dir(out, label, seed))
    for i, (label, seed) in enumerate(todo):
        path = run_dir(out, label, seed)
        state = states.get((label, seed), "new")
        on_run(i, len(todo), label, seed, state)
        if state == "started":
            resume(path, progress=progress)
        else:
            if path.exists():  # created, but stopped before anything worth keeping was written
                shutil.rmtree(path)
            run(configs[(label, seed)], progress=progress)
        on_finished(label, seed, path)
    write_report(out)
    return out
