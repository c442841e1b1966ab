"""The command-line side of a comparison over paired seeds: ``fedquad compare --seeds … --targets
… --out DIR`` and ``fedquad report DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedquad.errors import FedquadError


def is_seeded(args: argparse.Namespace) -> bool:
    """A comparison over seeds: asked for by option, or by a config file with a [compare] table."""
    if args.seeds is not None or args.targets is not None or args.out is not None:
        return True
    from fedquad.config import read_toml
    from fedquad.seeded_compare import COMPARE_TABLE

    return args.config is not None and COMPARE_TABLE in read_toml(args.config)


def seeded_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedquad.compare import comparison_data, parse_methods
    from fedquad.config import from_dict
    from fedquad.names import check_names
    from fedquad.quiet import quiet_libraries
    from fedquad.report.output import print_json
    from fedquad.report.results import default_run_name
    from fedquad.seeded_compare import load_plan, parse_seeds, parse_targets, run_comparison

    if args.target is not None:
        raise FedquadError("--target and --targets together: give the targets with --targets")
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    targets = None if args.targets is None else parse_targets(args.targets)
    methods = None if args.methods is None else parse_methods(args.methods)
    plan = load_plan(args.config, args.overrides, methods=methods, seeds=seeds, targets=targets)
    shared = from_dict(dict(plan.base))
    check_names(shared)
    if args.out is not None:
        out = Path(args.out)
    else:
        out = Path(shared.output_dir) / default_run_name(
            "compare", shared.data.name, shared.model.name, plan.seeds[0]
        )
    quiet_libraries()
    status = Console(stderr=True, quiet=args.quiet)

    def on_run(i: int, n: int, label: str, seed: int, state: str) -> None:
        how = "resumed" if state == "started" else "started"
        status.print(f"[bold]{label}[/bold] seed {seed} {how} ({i + 1} of {n} to run)")

    run_comparison(plan, out, progress=not args.quiet, on_run=on_run)
    if args.format == "json":
        print_json("compare", comparison_data(out))
        return 0
    print((out / "comparison.md").read_text(), end="")
    print(f"comparison in {out}")
    return 0


def report(args: argparse.Namespace) -> int:
    from fedquad.report.seeded import BOARD_PLOT, write_report

    data = write_report(args.dir, interim=args.interim)
    seeds = ",".join(map(str, data["seeds"]))
    interim = "" if data["seeds"] == data["planned_seeds"] else f" over seeds {seeds} (interim)"
    plots = "accuracy.png" + (f" and {BOARD_PLOT}" if data["board_clock"]["available"] else "")
    print(f"comparison.md, comparison.json, {plots} rebuilt in {args.dir}{interim}")
    return 0
