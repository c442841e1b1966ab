"""Reproduce the papers' claims, one arm of docs/methods.md §8 at a time: every entry of the arm's
committed config (``benchmarks/arms/<arm>.toml``) over its paired seeds, on SST-2.

    .venv/bin/python benchmarks/reproduce.py --arm P|Q|S [--out DIR] [--work DIR] [--sst2-dir DIR]
    .venv/bin/python benchmarks/reproduce.py --arm S --dry-run [--write-budgets]
    .venv/bin/python benchmarks/reproduce.py --arm S --measure-memory
    .venv/bin/python benchmarks/reproduce.py --arm P --seeds 0-9

The runs go into a work directory (default ``benchmarks/work/<arm>``, not tracked); calling the
script again continues them (finished runs kept, the others resumed from their checkpoints) and
refuses when the arm's config or the code's commit changed. A work directory that lacks runs the
results directory holds finished gets them back first, so a fresh clone continues too. The cost
profile and converted models are cached in ``<work>/cache`` unless ``$FEDQUAD_CACHE`` names
another cache. Each finished run's ``metrics.jsonl``, ``config.toml``, ``fleet.toml``,
``cost_profile.json`` and ``summary.json`` are copied as it finishes into the results directory
(default ``benchmarks/results/<arm>``), where ``fedquad report`` then builds the tables and
plots from them alone. SST-2 is required (from ``--sst2-dir`` or ``$FEDQUAD_SST2_DIR``): without
it the script stops, it never falls back to another dataset. Run it from a checkout at a fixed
commit, so that editing the code does not change what a running or resumed arm executes.

``--dry-run`` plans every entry and seed without training (``fedquad.report.budgets``) and
prints each run's planned virtual time and the budgets of "accuracy at a budget" they give;
``--write-budgets`` writes those into the arm's config, which an arm needs before its first run
(the budgets are fixed before any training). ``--measure-memory`` measures the process peak of
one training step at full depth, unquantized and with every block at 8 bits, at the arm's
workload, into ``<results>/memory_measured.json`` beside the memory claim's cost-model figures.

``--seeds`` adds seeds to the arm's (docs/methods.md §8 escalates to 10 where an interval
straddles a threshold): the arm's own seeds stay, finished, and the new ones run at the commit of
this checkout, each seed at one commit so that its runs stay paired.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from fedquad.config import from_dict
from fedquad.data.sources import _find_sst2_dir
from fedquad.errors import FedquadError
from fedquad.report.budgets import choose_budgets
from fedquad.report.memory_claim import MEASURED_FILE, MEASURED_SCHEMA
from fedquad.report.results import atomic_write_text
from fedquad.report.seeded import PLAN_FILE, run_dir, write_report
from fedquad.seeded_compare import Plan, load_plan, parse_seeds, run_comparison, run_config_data

ROOT = Path(__file__).resolve().parent.parent
ARMS = {arm: Path("benchmarks") / "arms" / f"{arm}.toml" for arm in ("P", "Q", "S")}
KEPT_FILES = (
    "metrics.jsonl",
    "config.toml",
    "fleet.toml",
    "cost_profile.json",
    "summary.json",
)
"""What a run leaves in the results: enough to rebuild every table and plot, and its summary
(provenance, test label shares); no checkpoints, no adapters."""
MEMORY_STEPS = 4
"""Training steps of each memory measurement (the peak is reached in the first)."""


def check_arm(arm: str, plan: Plan, work: Path) -> None:
    """Every entry's config is one this version accepts (an option it lacks names itself)."""
    for entry in plan.entries:
        for seed in plan.seeds:
            try:
                from_dict(run_config_data(plan, entry, seed, work))
            except FedquadError as exc:
                raise FedquadError(
                    f"arm {arm} cannot run on this version: entry {entry.label}: {exc}"
                ) from None


def copy_kept(source: Path, target: Path) -> None:
    """A run's KEPT_FILES from one run directory into another."""
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        shutil.copy2(source / name, target / name)


def keep_run(work: Path, results: Path, label: str, seed: int) -> None:
    shutil.copy2(work / PLAN_FILE, results / PLAN_FILE)
    copy_kept(run_dir(work, label, seed), run_dir(results, label, seed))


# --------------------------------------------------------------------------- budgets


def planned_times(plan: Plan, work: Path) -> dict[str, dict[int, list[float]]]:
    """Each entry's and seed's planned round times, from its workload with no training."""
    from fedquad.quiet import quiet_libraries
    from fedquad.report.budgets import planned_round_seconds
    from fedquad.server.configure import settings_for
    from fedquad.workbench import build_workbench, seed_everything, workload_profile

    quiet_libraries()
    out: dict[str, dict[int, list[float]]] = {}
    for entry in plan.entries:
        for seed in plan.seeds:
            config = from_dict(run_config_data(plan, entry, seed, work))
            config.validate()
            seed_everything(config.seed)  # as a run builds its workload
            bench = build_workbench(config)
            profile = workload_profile(bench).profile
            samples = [len(d["labels"]) for d in bench.device_data]
            out.setdefault(entry.label, {})[seed] = planned_round_seconds(
                settings_for(config), bench.fleet, profile, bench.structure.depth, samples
            )
    return out


def planned_table(planned: dict[str, dict[int, list[float]]], seeds: list[int]) -> str:
    header = ["label", *(f"seed {s}" for s in seeds), "mean s per round"]
    rows = []
    for label, by_seed in planned.items():
        rounds = [t for s in seeds for t in by_seed[s]]
        rows.append(
            [
                label,
                *(f"{sum(by_seed[s]):.1f}" for s in seeds),
                f"{sum(rounds) / len(rounds):.2f}" if rounds else "—",
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_budgets(path: Path, arm: str, budgets: list[float]) -> None:
    """Add ``budgets = [...]`` to the ``[compare]`` table of an arm's config, after its targets."""
    lines = path.read_text().splitlines(keepends=True)
    section, after = "", None
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("["):
            section = text
        elif section == "[compare]" and text.split("=")[0].strip() == "budgets":
            raise FedquadError(f"{path} already has budgets: they are fixed before any run")
        elif section == "[compare]" and text.split("=")[0].strip() == "targets":
            after = i + 1
    if after is None:
        raise FedquadError(f"{path} has no targets in a [compare] table to put the budgets after")
    lines[after:after] = [
        "# Virtual seconds of accuracy at a budget: 1/3, 2/3 and all of the shortest planned\n",
        f"# run, fixed before any run by `benchmarks/reproduce.py --arm {arm} --dry-run "
        "--write-budgets`.\n",
        f"budgets = [{', '.join(repr(b) for b in budgets)}]\n",
    ]
    atomic_write_text(path, "".join(lines))


def dry_run(arm: str, plan: Plan, work: Path, results: Path, write: bool) -> list[float]:
    if write:
        if plan.budgets:
            raise FedquadError(
                f"arm {arm} already has budgets {plan.budgets}: they are fixed before any run"
            )
        for where in (work, results):
            if (where / PLAN_FILE).is_file():
                raise FedquadError(
                    f"arm {arm} has started ({where / PLAN_FILE}): its budgets would no longer "
                    "be fixed before any training"
                )
    planned = planned_times(plan, work)
    budgets = choose_budgets(planned)
    print(f"arm {arm}: planned virtual seconds of every run, no training\n")
    print(planned_table(planned, plan.seeds))
    print(f"\nbudgets: {', '.join(f'{b:g}' for b in budgets)} virtual s", end="")
    if plan.budgets:
        print(f" (the arm's config fixed {', '.join(f'{b:g}' for b in plan.budgets)})")
    else:
        print("")
    if write:
        write_budgets(ROOT / ARMS[arm], arm, budgets)
        load_plan(ARMS[arm], [])  # what was written reads back
        print(f"written into {ARMS[arm]}")
    return budgets


# --------------------------------------------------------------------------- memory


def _benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_memory(plan: Plan, results: Path) -> Path:
    """The process peak of a training step at full depth, q = 0 and q = L at 8 bits, each in a
    fresh process (benchmarks/actquant.py's worker), at the arm's model, batch and length."""
    base = from_dict(dict(plan.base))
    args = argparse.Namespace(
        model=base.model.name,
        batch=base.train.batch_size,
        seq=base.model.max_length,
        steps=MEMORY_STEPS,
    )
    actquant = _benchmark("actquant")
    unquantized = actquant.run_worker(args, 0, 8)
    depth = unquantized["L"]
    quantized = actquant.run_worker(args, depth, 8)
    configs = [
        {
            "depth": depth,
            "quantized": q,
            "bits": 8,
            "peak_bytes": r["peak"],
            "peak_above_baseline_bytes": r["peak_above_baseline"],
            "saved_bytes": r["saved"],
        }
        for q, r in ((0, unquantized), (depth, quantized))
    ]
    data = {
        "schema": MEASURED_SCHEMA,
        "measured_by": (
            f"benchmarks/actquant.py's worker: {args.model}, batch {args.batch}, sequence "
            f"{args.seq}, {args.steps} steps, one fresh process per config, its peak resident "
            "memory (ru_maxrss) and that above its resident memory before training"
        ),
        "configs": configs,
    }
    results.mkdir(parents=True, exist_ok=True)
    path = results / MEASURED_FILE
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- main


def restore_kept(plan: Plan, work: Path, results: Path) -> list[tuple[str, int]]:
    """Put the finished runs of the results back into an empty or partial work directory (a new
    clone, or another session's), so the arm continues instead of running them again; the
    results' ``plan.json`` comes along, so the arm still resumes only at the commit it started
    at. Returns the (label, seed) restored."""
    restored = []
    for entry in plan.entries:
        for seed in plan.seeds:
            kept, target = run_dir(results, entry.label, seed), run_dir(work, entry.label, seed)
            if not (kept / "summary.json").is_file() or (target / "summary.json").is_file():
                continue
            if target.exists():
                shutil.rmtree(target)
            copy_kept(kept, target)
            restored.append((entry.label, seed))
    if restored and not (work / PLAN_FILE).is_file():
        shutil.copy2(results / PLAN_FILE, work / PLAN_FILE)
    return restored


def escalated_seeds(arm: str, planned: list[int], text: str) -> list[int]:
    """``--seeds``: the arm's seeds and more, never fewer (a seed left out would drop its pairs
    from the report)."""
    seeds = parse_seeds(text)
    missing = [s for s in planned if s not in seeds]
    if missing:
        raise FedquadError(
            f"--seeds {text!r} leaves out arm {arm}'s seed {missing[0]}: --seeds adds seeds to "
            f"the arm's {','.join(map(str, planned))}, e.g. --seeds "
            f"{min(planned)}-{max(planned) + len(planned)}"
        )
    return planned + [s for s in seeds if s not in planned]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=sorted(ARMS))
    parser.add_argument("--out", help="results directory (default benchmarks/results/<arm>)")
    parser.add_argument("--work", help="where the runs go (default benchmarks/work/<arm>)")
    parser.add_argument("--sst2-dir", help="GLUE SST-2 directory (default: $FEDQUAD_SST2_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--seeds", help="the arm's seeds and more, e.g. 0-9: escalate an undecided claim"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="plan every run without training; print budgets"
    )
    parser.add_argument(
        "--write-budgets",
        action="store_true",
        help="with --dry-run: write the budgets into the arm's config",
    )
    parser.add_argument(
        "--measure-memory",
        action="store_true",
        help=f"measure the memory claim's process peaks into <out>/{MEASURED_FILE}",
    )
    args = parser.parse_args(argv)
    given = {k: Path(v).resolve() for k, v in vars(args).items() if k in ("out", "work") and v}
    if args.sst2_dir:
        os.environ["FEDQUAD_SST2_DIR"] = str(Path(args.sst2_dir).resolve())
    os.chdir(ROOT)  # the default paths, and the output_dir the runs record, are repository paths
    results = given.get("out", Path("benchmarks") / "results" / args.arm)
    work = given.get("work", Path("benchmarks") / "work" / args.arm)
    # an arm measures and keeps its own cost profile: another run's cache never changes it
    os.environ.setdefault("FEDQUAD_CACHE", str((work / "cache").resolve()))
    try:
        if args.write_budgets and not args.dry_run:
            raise FedquadError("--write-budgets writes what --dry-run plans: give both")
        plan = load_plan(ARMS[args.arm], [])
        if args.seeds is not None:
            plan.seeds = escalated_seeds(args.arm, plan.seeds, args.seeds)
        if args.measure_memory:  # the shared workload only: no entry's options are needed
            path = measure_memory(plan, results)
            print(f"arm {args.arm}: memory measured into {path}")
            if (results / PLAN_FILE).is_file():
                write_report(results)
                print(f"arm {args.arm}: report rebuilt in {results}")
            return 0
        check_arm(args.arm, plan, work)
        _find_sst2_dir()  # the arms are defined on SST-2: stop here without it
        if args.dry_run:
            dry_run(args.arm, plan, work, results, args.write_budgets)
            return 0
        if not plan.budgets:
            raise FedquadError(
                f"arm {args.arm} has no budgets: fix them before its first run with "
                f"`benchmarks/reproduce.py --arm {args.arm} --dry-run --write-budgets`"
            )
        results.mkdir(parents=True, exist_ok=True)
        for label, seed in restore_kept(plan, work, results):
            print(f"arm {args.arm}: {label} seed {seed} kept from {results}", flush=True)

        def on_run(i: int, n: int, label: str, seed: int, state: str) -> None:
            how = "resumed" if state == "started" else "started"
            print(f"arm {args.arm}: {label} seed {seed} {how} ({i + 1} of {n})", flush=True)

        run_comparison(
            plan,
            work,
            progress=not args.quiet,
            on_run=on_run,
            on_finished=lambda label, seed, _path: keep_run(work, results, label, seed),
        )
        write_report(results)
    except FedquadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((results / "comparison.md").read_text(), end="")
    print(f"arm {args.arm}: tables and plots in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
