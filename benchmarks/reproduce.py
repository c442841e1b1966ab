"""Reproduce the papers' claims, one arm of docs/methods.md §8 at a time: every entry of the arm's
committed config (``benchmarks/arms/<arm>.toml``) over its paired seeds, on SST-2.

    .venv/bin/python benchmarks/reproduce.py --arm P|Q|S [--out DIR] [--work DIR] [--sst2-dir DIR]

The runs go into a work directory (default ``benchmarks/work/<arm>``, not tracked); calling the
script again continues them (finished runs kept, the others resumed from their checkpoints) and
refuses when the arm's config or the code's commit changed; the cost profile and converted
models are cached in ``<work>/cache`` unless ``$FEDQUAD_CACHE`` names another cache. Each
finished run's ``metrics.jsonl``, ``config.toml``, ``fleet.toml`` and ``cost_profile.json`` are
copied as it finishes into the results directory (default ``benchmarks/results/<arm>``), where
``fedquad report`` then builds the tables and plots from them alone. SST-2 is required (from
``--sst2-dir`` or ``$FEDQUAD_SST2_DIR``): without it the script stops, it never falls back to
another dataset. Run it from a checkout at a fixed commit, so that editing the code does not
change what a running or resumed arm executes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from fedquad.config import from_dict
from fedquad.data.sources import _find_sst2_dir
from fedquad.errors import FedquadError
from fedquad.report.seeded import PLAN_FILE, run_dir, write_report
from fedquad.seeded_compare import Plan, load_plan, run_comparison, run_config_data

ROOT = Path(__file__).resolve().parent.parent
ARMS = {arm: Path("benchmarks") / "arms" / f"{arm}.toml" for arm in ("P", "Q", "S")}
KEPT_FILES = ("metrics.jsonl", "config.toml", "fleet.toml", "cost_profile.json")
"""What a run leaves in the results: enough to rebuild every table and plot (no checkpoints,
no adapters)."""


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


def keep_run(work: Path, results: Path, label: str, seed: int) -> None:
    shutil.copy2(work / PLAN_FILE, results / PLAN_FILE)
    source, target = run_dir(work, label, seed), run_dir(results, label, seed)
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        shutil.copy2(source / name, target / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=sorted(ARMS))
    parser.add_argument("--out", help="results directory (default benchmarks/results/<arm>)")
    parser.add_argument("--work", help="where the runs go (default benchmarks/work/<arm>)")
    parser.add_argument("--sst2-dir", help="GLUE SST-2 directory (default: $FEDQUAD_SST2_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
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
        plan = load_plan(ARMS[args.arm], [])
        check_arm(args.arm, plan, work)
        _find_sst2_dir()  # the arms are defined on SST-2: stop here without it
        results.mkdir(parents=True, exist_ok=True)

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
