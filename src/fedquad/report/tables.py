"""Rich tables for the command line: a cost profile, a fleet against a workload, a round's plan.

Each table is drawn from the plain data that ``--format json`` prints (``*_data``), so the two
never disagree."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table

from fedquad.cost.fleet import MB, MIB, FleetSpec
from fedquad.cost.model import (
    CostProfile,
    StepComposition,
    download_bytes,
    full_footprint,
    largest_feasible_depth,
    step_seconds,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig
from fedquad.planners import PlanContext
from fedquad.server.clock import time_round
from fedquad.server.configure import RoundPlan


def _mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def profile_terms(profile: CostProfile) -> dict[str, Any]:
    """The figures derived from a profile that ``fedquad profile`` shows beside it."""
    depth = int(profile.extra.get("lora_depth", profile.num_blocks))
    return {
        "full_footprint_bytes": full_footprint(profile),
        "download_bytes": download_bytes(profile),
        "upload_depth": depth,
        "upload_bytes": upload_bytes(profile, depth),
        "host_step_seconds": {
            str(d): step_seconds(profile, DeviceConfig(depth=d))
            for d in sorted({1, (depth + 1) // 2, depth})
        },
    }


def profile_tables(profile: CostProfile, ranks: dict[int, int]) -> tuple[Table, Table]:
    """Per-block measurements, then the scalar terms and a few predicted step times."""
    bits = sorted(profile.saved_bytes_quantized, reverse=True)
    blocks = Table(title="per block (block 0 is nearest the input)")
    for name in ["block", "rank", "LoRA params", "saved MiB", "as bottom MiB"]:
        blocks.add_column(name, justify="right")
    for b in bits:
        blocks.add_column(f"{b}-bit MiB", justify="right")
    for block in range(profile.num_blocks - 1, -1, -1):
        blocks.add_row(
            str(block),
            str(ranks.get(block, 0)),
            str(profile.lora_params[block]),
            _mib(profile.saved_bytes[block]),
            _mib(profile.saved_bytes_bottom[block]),
            *(_mib(profile.saved_bytes_quantized[b][block]) for b in bits),
        )
    terms = Table(title="terms")
    terms.add_column("term")
    terms.add_column("value", justify="right")
    derived = profile_terms(profile)
    depth = derived["upload_depth"]
    rows = [
        ("W: frozen weights (MiB)", _mib(profile.frozen_weight_bytes)),
        ("head parameters", str(profile.head_params)),
        ("A_head: saved by head and loss (MiB)", _mib(profile.head_saved_bytes)),
        *((f"ρ_{b}: quantized / unquantized", f"{profile.quant_ratio[b]:.3f}") for b in bits),
        ("f: forward of one block (s)", f"{profile.f:.4f}"),
        ("g: extra backward of a trainable block (s)", f"{profile.g:.4f}"),
        ("o: quantization overhead of a block (s)", f"{profile.o:.4f}"),
        ("c: embeddings, head, loss, optimizer (s)", f"{profile.c:.4f}"),
        ("M(L, 0): full-depth footprint (MiB)", _mib(derived["full_footprint_bytes"])),
        ("download per round (MB)", f"{derived['download_bytes'] / MB:.3f}"),
        (f"upload at depth {depth} (MB)", f"{derived['upload_bytes'] / MB:.3f}"),
    ]
    for d, seconds in derived["host_step_seconds"].items():
        rows.append((f"host step at depth {d} (s)", f"{seconds:.3f}"))
    for term, value in rows:
        terms.add_row(term, value)
    return blocks, terms


def fleet_data(
    spec: FleetSpec, profile: CostProfile, kappa: float, bits: int, max_depth: int, rank: int
) -> dict[str, Any]:
    """Each tier with its budget and largest feasible depth without and with quantization
    (None: no depth fits). Budgets are fractions of the reference footprint: uniform ``rank``
    on every block."""
    footprint = full_footprint(profile, rank)
    tiers = []
    for tier in spec.tiers:
        budget = tier.budget_bytes(footprint)
        low, high = tier.uplink_mbps
        tiers.append(
            {
                "name": tier.name,
                "count": tier.count,
                "slowdown": tier.slowdown * spec.base_slowdown,
                "composition": None if tier.composition is None else asdict(tier.composition),
                "budget_bytes": budget,
                "uplink_mbps": [low, high],
                "downlink_mbps": tier.downlink_mbps,
                "availability": tier.availability,
                "max_depth": largest_feasible_depth(profile, budget, kappa, max_depth=max_depth),
                "max_depth_quantized": largest_feasible_depth(
                    profile, budget, kappa, quantize=True, bits=bits, max_depth=max_depth
                ),
            }
        )
    return {
        "devices": spec.num_devices,
        "per_round": spec.per_round,
        "full_footprint_bytes": footprint,
        "kappa": kappa,
        "bits": bits,
        "tiers": tiers,
    }


def fleet_table(
    spec: FleetSpec, profile: CostProfile, kappa: float, bits: int, max_depth: int, rank: int
) -> Table:
    """:func:`fleet_data` as a table."""
    data = fleet_data(spec, profile, kappa, bits, max_depth, rank)
    table = Table(
        title=(
            f"{data['devices']} devices, {data['per_round']} per round; "
            f"M(L, 0) = {_mib(data['full_footprint_bytes'])} MiB, margin κ = {kappa}"
        )
    )
    # tier names are what tells the rows apart: never cut them
    table.add_column("tier", no_wrap=True, min_width=max(len(t.name) for t in spec.tiers))
    for name in ["n", "σ", "step", "budget MiB", "up MB/s", "down MB/s", "online"]:
        table.add_column(name, justify="right")
    table.add_column("max depth", justify="right")
    table.add_column(f"max depth q=d {bits}b", justify="right")
    for tier, row in zip(spec.tiers, data["tiers"], strict=True):
        low, high = row["uplink_mbps"]
        table.add_row(
            row["name"],
            str(row["count"]),
            f"{row['slowdown']:.2f}",
            _composition(tier.composition),
            _mib(row["budget_bytes"]),
            f"{low:g}–{high:g}",
            f"{row['downlink_mbps']:g}",
            f"{row['availability']:.0%}",
            _depth(row["max_depth"]),
            _depth(row["max_depth_quantized"]),
        )
    return table


def _depth(depth: int | None) -> str:
    return "none" if depth is None else str(depth)


def _composition(composition: StepComposition | None) -> str:
    """A tier's step composition as the fleet table shows it."""
    if composition is None:
        return "host"
    shares = f"F {composition.forward:g}, C {composition.fixed:g}"
    return f"{composition.name} ({shares})" if composition.name else shares


def plan_data(
    planned: RoundPlan, ctx: PlanContext, method: str, round_index: int
) -> dict[str, Any]:
    """One round's plan: per sampled device its config (or why it sits out), memory against
    budget and times. ``ranks`` are those of the trained blocks from the output down."""
    configs = planned.plan.configs
    timing = time_round(
        ctx.profile,
        configs,
        {d: planned.estimates[d] for d in configs},
        ctx.local_steps,
    )
    num_blocks = ctx.profile.num_blocks
    devices: list[dict[str, Any]] = []
    for d in planned.sampled:
        device = planned.estimates[d]
        row: dict[str, Any] = {
            "device": d,
            "tier": device.tier,
            "budget_bytes": device.memory_budget_bytes,
        }
        config = configs.get(d)
        if config is None:
            devices.append({**row, "sat_out": planned.plan.sat_out.get(d, "")})
            continue
        t = timing.devices[d]
        trained = config.trained_blocks(num_blocks)
        ranks = [ctx.profile.lora_ranks[b] if ctx.profile.lora_ranks else 0 for b in trained]
        if config.rank is not None:
            ranks = [min(r, config.rank) for r in ranks]
        row.update(
            {
                "config": config.as_dict(),
                "ranks": list(reversed(ranks)),
                "memory_bytes": ctx.cost(config).memory,
                "compute_seconds": t.compute,
                "transfer_seconds": t.download + t.upload,
                "wait_seconds": t.waiting,
            }
        )
        devices.append(row)
    return {
        "method": method,
        "round": round_index,
        "sampled": len(planned.sampled),
        "training": len(configs),
        "round_seconds": timing.seconds,
        "deadline_seconds": planned.plan.deadline,
        "devices": devices,
    }


def plan_table(planned: RoundPlan, ctx: PlanContext, method: str, round_index: int) -> Table:
    """:func:`plan_data` as a table."""
    data = plan_data(planned, ctx, method, round_index)
    title = f"{method}, round {round_index}: {data['training']} of {data['sampled']} train"
    title += f"; round {data['round_seconds']:.1f} s"
    if data["deadline_seconds"] is not None:
        title += f" (deadline {data['deadline_seconds']:.1f} s)"
    table = Table(title=title)
    for name in ["device", "tier", "depth", "q", "ranks", "MiB", "budget", "compute s"]:
        table.add_column(name, justify="left" if name == "tier" else "right")
    for name in ["transfer s", "wait s"]:
        table.add_column(name, justify="right")
    for row in data["devices"]:
        budget = _mib(row["budget_bytes"])
        if "sat_out" in row:
            cells = ["—", "—", "—", "—", budget, "sits out: " + row["sat_out"]]
            table.add_row(str(row["device"]), row["tier"], *cells)
            continue
        config = row["config"]
        ranks_text = ",".join(str(r) for r in row["ranks"])
        if "blocks" in config:
            ranks_text += " @ " + ",".join(str(b) for b in config["blocks"])
        quantized = config["quantized"]
        table.add_row(
            str(row["device"]),
            row["tier"],
            str(config["depth"]),
            str(quantized) + (f"×{config['bits']}b" if quantized else ""),
            ranks_text,
            _mib(row["memory_bytes"]),
            budget,
            f"{row['compute_seconds']:.1f}",
            f"{row['transfer_seconds']:.1f}",
            f"{row['wait_seconds']:.1f}",
        )
    return table
