"""The ``fedquad`` command: a thin layer over the Python API.

User mistakes end with a one-line ``error: …`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedquad import __version__
from fedquad.errors import FedquadError, RunInterrupted

EXIT_USAGE = 2

CONFIG_HELP = (
    "TOML file or built-in preset name (quickstart, smollm2-foods); defaults fill the rest"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedquad", description="Federated LoRA fine-tuning on heterogeneous devices."
    )
    parser.add_argument("--version", action="version", version=f"fedquad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated fine-tuning experiment")
    run.add_argument(
        "--config",
        help=CONFIG_HELP,
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set federation.rounds=5 (repeatable)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--tensorboard", action="store_true", help="also log per-round scalars for TensorBoard"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its own config is used)",
    )
    show = sub.add_parser("config", help="print the resolved config as TOML")
    _config_args(show)
    profile = sub.add_parser(
        "profile", help="measure (or read from the cache) the workload's cost profile and print it"
    )
    _config_args(profile, output=True)
    profile.add_argument("--refresh", action="store_true", help="measure again, ignoring the cache")
    profile.add_argument(
        "--export",
        metavar="PATH",
        help="measure the time terms by the reference method (one thread, interleaved depths) "
        "and write them as a timing file for profile.timing",
    )
    profile.add_argument(
        "--force", action="store_true", help="with --export: measure even on a busy machine"
    )
    profile.add_argument(
        "--repeats",
        type=int,
        default=8,
        help="with --export: round-robin visits of each timed point (default 8)",
    )
    fleet = sub.add_parser("fleet", help="inspect a fleet")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True)
    fleet_show = fleet_sub.add_parser(
        "show", help="each tier's budget and largest feasible depth for the config's workload"
    )
    _config_args(fleet_show, output=True)
    fleet_show.add_argument(
        "--fleet",
        help="fleet TOML file or built-in name (default, papers, decorrelated, uniform; "
        "each tiered one also as <name>-jetson)",
    )
    plan = sub.add_parser(
        "plan", help="print the config the method gives each sampled device in one round"
    )
    _config_args(plan, output=True)
    plan.add_argument("--round", type=int, default=1, help="which round (default 1)")
    compare = sub.add_parser(
        "compare", help="run several methods on the same config and tabulate time to target"
    )
    _config_args(compare, output=True)
    compare.add_argument(
        "--methods",
        help="comma-separated methods (default: fedquad,legend,joint and the four baselines)",
    )
    compare.add_argument(
        "--target",
        type=float,
        help="target accuracy (default: federation.target_accuracy, else 95%% of the best final)",
    )
    compare.add_argument("--quiet", action="store_true", help="no progress output")
    compare.add_argument(
        "--seeds", help="paired seeds, e.g. 0,1,2,3,4 or 0-4 (a comparison over seeds)"
    )
    compare.add_argument(
        "--targets", help="target accuracies fixed in advance, e.g. 0.78,0.80,0.82"
    )
    compare.add_argument(
        "--out",
        help="comparison directory: a later call with the same --out continues it, "
        "or grows it by more --seeds",
    )
    report = sub.add_parser(
        "report", help="rebuild a comparison's tables and plots from its run directories"
    )
    report.add_argument("dir", help="the comparison directory (--out of fedquad compare)")
    report.add_argument(
        "--interim",
        action="store_true",
        help="report over the seeds every entry has finished so far (a comparison still running)",
    )
    sub.add_parser("models", help="list the built-in models")
    sub.add_parser("datasets", help="list the built-in datasets")
    from fedquad import deploy_cli

    deploy_cli.add_parser(sub)
    return parser


def _config_args(parser: argparse.ArgumentParser, output: bool = False) -> None:
    parser.add_argument(
        "--config",
        help=CONFIG_HELP,
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    if output:
        parser.add_argument(
            "--format",
            choices=("table", "json"),
            default="table",
            help='table (default), or json: one object with "schema": 1 on stdout, nothing else',
        )


def _run(args: argparse.Namespace) -> int:
    # every check that needs no torch comes first: a mistake is reported before the imports
    from fedquad.config import load_config
    from fedquad.extras import check_extras
    from fedquad.names import check_names
    from fedquad.quiet import quiet_libraries
    from fedquad.report.results import check_run_dir

    if args.resume:
        if args.config or args.overrides:
            raise FedquadError("--resume takes no --config or --set: the run's own config is used")
        check_run_dir(args.resume)
        quiet_libraries()
        from fedquad.api import resume

        result = resume(args.resume, progress=not args.quiet)
    else:
        overrides = [*args.overrides, *(["tensorboard=true"] if args.tensorboard else [])]
        config = load_config(args.config, overrides)
        check_extras(config)
        check_names(config)
        quiet_libraries()
        from fedquad.api import run

        result = run(config, progress=not args.quiet)
    s = result.summary
    print(
        f"final accuracy {s['final_accuracy']:.4f} (best {s['best_accuracy']:.4f}) after "
        f"{s['rounds']} rounds: {s['virtual_seconds']:.0f} s virtual (simulated devices), "
        f"{s['host_seconds']:.0f} s host"
    )
    reached = s["time_to_target"]
    if reached is not None:
        print(
            f"target accuracy {s['target_accuracy']:.4f} reached in round {reached['round']}: "
            f"{reached['virtual_seconds']:.0f} s virtual, {reached['host_seconds']:.0f} s host, "
            f"{reached['bytes'] / 1e6:.1f} MB exchanged"
        )
    elif s["target_accuracy"] is not None:
        print(f"target accuracy {s['target_accuracy']:.4f} not reached")
    print(f"results in {result.run_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fedquad.seeded_cli import is_seeded, seeded_compare

    if is_seeded(args):
        return seeded_compare(args)
    from rich.console import Console

    from fedquad.compare import (
        DEFAULT_METHODS,
        check_target,
        compare,
        comparison_data,
        method_configs,
        parse_methods,
    )
    from fedquad.config import load_config
    from fedquad.extras import check_extras
    from fedquad.names import check_names
    from fedquad.quiet import quiet_libraries
    from fedquad.report.compare import rich_tables
    from fedquad.report.output import print_json, stdout_console

    methods = parse_methods(args.methods if args.methods is not None else DEFAULT_METHODS)
    check_target(args.target)
    config = load_config(args.config, args.overrides)
    method_configs(config, methods)
    check_extras(config)
    check_names(config)
    quiet_libraries()
    status = Console(stderr=True, quiet=args.quiet)
    result = compare(
        config,
        methods,
        target=args.target,
        progress=not args.quiet,
        on_method=lambda i, m: status.print(f"[bold]{m}[/bold] ({i + 1} of {len(methods)})"),
    )
    if args.format == "json":
        print_json("compare", comparison_data(result.dir))
        return 0
    console = stdout_console()
    for table in rich_tables(result.rows, result.target):
        console.print(table)
    print(f"comparison in {result.dir}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "report":
        from fedquad.seeded_cli import report

        return report(args)
    if args.command in ("profile", "fleet", "plan"):
        from fedquad.workload_cli import workload_command

        return workload_command(args)
    if args.command == "deploy":
        from fedquad import deploy_cli

        return deploy_cli.main(args)
    if args.command == "config":
        from fedquad.config import load_config

        print(load_config(args.config, args.overrides).to_toml(), end="")
        return 0
    if args.command == "models":
        from fedquad.models.registry import BUILTIN_MODELS

        for name, text in BUILTIN_MODELS.items():
            print(f"{name:16} {text}")
        return 0
    from fedquad.names import BUILTIN_DATASETS, PROMPT_DATASETS

    for name, text in {**BUILTIN_DATASETS, **PROMPT_DATASETS}.items():
        print(f"{name:18} {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FedquadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunInterrupted as stop:
        print(f"error: {stop.message()}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted; results written so far are kept", file=sys.stderr)
        return 130


def console() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console()
