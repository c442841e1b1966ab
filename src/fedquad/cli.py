"""The ``fedquad`` command: a thin layer over the Python API.

User mistakes end with a one-line ``error: …`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedquad.errors import FedquadError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedquad", description="Federated LoRA fine-tuning on heterogeneous devices."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated fine-tuning experiment")
    run.add_argument("--config", help="TOML config file (defaults apply to what it leaves out)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set federation.rounds=5 (repeatable)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    show = sub.add_parser("config", help="print the resolved config as TOML")
    show.add_argument("--config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("models", help="list the built-in models")
    sub.add_parser("datasets", help="list the built-in datasets")
    return parser


def _run(args: argparse.Namespace) -> int:
    from fedquad.api import run
    from fedquad.config import load_config
    from fedquad.quiet import quiet_libraries

    quiet_libraries()
    config = load_config(args.config, args.overrides)
    result = run(config, progress=not args.quiet)
    s = result.summary
    print(
        f"final accuracy {s['final_accuracy']:.4f} (best {s['best_accuracy']:.4f}) after "
        f"{s['rounds']} rounds, {s['host_seconds']:.0f} s host time; results in {result.run_dir}"
    )
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "config":
        from fedquad.config import load_config

        print(load_config(args.config, args.overrides).to_toml(), end="")
        return 0
    if args.command == "models":
        from fedquad.models.registry import BUILTIN_MODELS

        for name, text in BUILTIN_MODELS.items():
            print(f"{name:16} {text}")
        return 0
    from fedquad.data import BUILTIN_DATASETS

    for name, text in BUILTIN_DATASETS.items():
        print(f"{name:16} {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FedquadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted; results written so far are kept", file=sys.stderr)
        return 130


def console() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console()
