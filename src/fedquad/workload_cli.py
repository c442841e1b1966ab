"""``fedquad profile``, ``fedquad fleet show`` and ``fedquad plan``: a workload's cost profile,
its fleet and one round's plan, as tables or (``--format json``) one JSON object.

The arguments and the config are checked before torch and transformers are imported, so that a
mistake is reported at once rather than after the imports.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedquad.errors import FedquadError


def workload_command(args: argparse.Namespace) -> int:
    from fedquad.config import load_config
    from fedquad.names import check_names

    if args.command == "plan" and args.round < 1:
        raise FedquadError(f"--round {args.round} is not allowed: use a round >= 1")
    export = getattr(args, "export", None)
    if export and args.repeats < 1:
        raise FedquadError(f"--repeats {args.repeats} is not allowed: use a whole number >= 1")
    fleet = getattr(args, "fleet", None)
    overrides = [*args.overrides, *([f"fleet.name={fleet!r}"] if fleet else [])]
    config = load_config(args.config, overrides)
    check_names(config)

    from rich.console import Console

    from fedquad.quiet import quiet_libraries
    from fedquad.report.output import print_json, stdout_console

    quiet_libraries()
    status = Console(stderr=True)
    if export:
        from fedquad.workbench import export_timing

        with status.status("measuring the reference time terms (keep the machine idle)"):
            source = export_timing(config, export, force=args.force, repeats=args.repeats)
        t, load = source.timing, source.provenance
        if args.format == "json":
            terms = {"f": t.f, "g": t.g, "o": t.o, "c": t.c}
            print_json("profile", {"export": str(export), "timing": terms, "load": load})
        else:
            stdout_console().print(
                f"f={t.f:.6f} g={t.g:.6f} o={t.o:.6f} c={t.c:.6f} s (load "
                f"{load['load_before']:.2f} before, {load['load_after']:.2f} after): {export}"
            )
        return 0
    from fedquad.workbench import build_workbench, workload_profile

    with status.status("loading the workload and its cost profile (measured once, then cached)"):
        bench = build_workbench(config)
        result = workload_profile(bench, refresh=getattr(args, "refresh", False))
    command, data, renderables = _outputs(args, config, bench, result)
    if args.format == "json":
        print_json(command, data)
    else:
        console = stdout_console()
        for renderable in renderables:
            console.print(renderable)
    return 0


def _outputs(
    args: argparse.Namespace, config: Any, bench: Any, result: Any
) -> tuple[str, Any, list[Any]]:
    """The command's name, its JSON data and what its table form prints."""
    from fedquad.report import tables

    structure = bench.structure
    if args.command == "plan":
        from fedquad.server.capacity import CapacityEstimator
        from fedquad.server.configure import RoundPlanner, settings_for

        samples = [len(d["labels"]) for d in bench.device_data]
        planner = RoundPlanner(
            settings_for(config), bench.fleet, result.profile, structure.depth, samples
        )
        planned = planner.plan(args.round, CapacityEstimator())
        data = tables.plan_data(planned, planner.ctx, config.method, args.round)
        return "plan", data, [tables.plan_table(planned, planner.ctx, config.method, args.round)]
    if args.command == "profile":
        ranks = {b: structure.rank_of(b) for b in structure.lora_blocks}
        timing = result.timing
        origin = "measured now" if result.measured_now else "from the cache"
        data = {
            "profile": result.profile.to_dict(),
            "ranks": {str(b): r for b, r in ranks.items()},
            "terms": tables.profile_terms(result.profile),
            "path": str(result.path),
            "measured_now": result.measured_now,
            "timing": {"kind": timing.kind, "origin": timing.origin, "hash": timing.hash},
        }
        lines = [
            f"profile {origin}: {result.path}",
            f"time terms: {timing.kind} {timing.origin or ''} (hash {timing.hash})",
        ]
        return "profile", data, [*tables.profile_tables(result.profile, ranks), *lines]
    fleet_args = (
        bench.fleet,
        result.profile,
        config.fleet.kappa,
        config.quant.bits,
        structure.depth,
        config.lora.rank,
    )
    data = {"fleet": config.fleet.name, **tables.fleet_data(*fleet_args)}
    return "fleet show", data, [tables.fleet_table(*fleet_args)]
