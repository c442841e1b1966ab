"""Rich tables for the command line: a cost profile, a fleet against a workload."""

from __future__ import annotations

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
    depth = int(profile.extra.get("lora_depth", profile.num_blocks))
    rows = [
        ("W: frozen weights (MiB)", _mib(profile.frozen_weight_bytes)),
        ("head parameters", str(profile.head_params)),
        ("A_head: saved by head and loss (MiB)", _mib(profile.head_saved_bytes)),
        *((f"ρ_{b}: quantized / unquantized", f"{profile.quant_ratio[b]:.3f}") for b in bits),
        ("f: forward of one block (s)", f"{profile.f:.4f}"),
        ("g: extra backward of a trainable block (s)", f"{profile.g:.4f}"),
        ("o: quantization overhead of a block (s)", f"{profile.o:.4f}"),
        ("c: embeddings, head, loss, optimizer (s)", f"{profile.c:.4f}"),
        ("M(L, 0): full-depth footprint (MiB)", _mib(full_footprint(profile))),
        ("download per round (MB)", f"{download_bytes(profile) / MB:.3f}"),
        (f"upload at depth {depth} (MB)", f"{upload_bytes(profile, depth) / MB:.3f}"),
    ]
    for d in sorted({1, (depth + 1) // 2, depth}):
        seconds = step_seconds(profile, DeviceConfig(depth=d))
        rows.append((f"host step at depth {d} (s)", f"{seconds:.3f}"))
    for term, value in rows:
        terms.add_row(term, value)
    return blocks, terms


def fleet_table(
    spec: FleetSpec, profile: CostProfile, kappa: float, bits: int, max_depth: int, rank: int
) -> Table:
    """Each tier with its budget and largest feasible depth without and with quantization.

    Budgets are fractions of the reference footprint: uniform ``rank`` on every block."""
    footprint = full_footprint(profile, rank)
    table = Table(
        title=(
            f"{spec.num_devices} devices, {spec.per_round} per round; "
            f"M(L, 0) = {_mib(footprint)} MiB, margin κ = {kappa}"
        )
    )
    # tier names are what tells the rows apart: never cut them
    table.add_column("tier", no_wrap=True, min_width=max(len(t.name) for t in spec.tiers))
    for name in ["n", "σ", "step", "budget MiB", "up MB/s", "down MB/s", "online"]:
        table.add_column(name, justify="right")
    table.add_column("max depth", justify="right")
    table.add_column(f"max depth q=d {bits}b", justify="right")
    for tier in spec.tiers:
        budget = tier.budget_bytes(footprint)
        plain = largest_feasible_depth(profile, budget, kappa, max_depth=max_depth)
        quantized = largest_feasible_depth(
            profile, budget, kappa, quantize=True, bits=bits, max_depth=max_depth
        )
        low, high = tier.uplink_mbps
        table.add_row(
            tier.name,
            str(tier.count),
            f"{tier.slowdown * spec.base_slowdown:.2f}",
            _composition(tier.composition),
            _mib(budget),
            f"{low:g}–{high:g}",
            f"{tier.downlink_mbps:g}",
            f"{tier.availability:.0%}",
            "none" if plain is None else str(plain),
            "none" if quantized is None else str(quantized),
        )
    return table


def _composition(composition: StepComposition | None) -> str:
    """A tier's step composition as the fleet table shows it."""
    if composition is None:
        return "host"
    shares = f"F {composition.forward:g}, C {composition.fixed:g}"
    return f"{composition.name} ({shares})" if composition.name else shares


def plan_table(planned: RoundPlan, ctx: PlanContext, method: str, round_index: int) -> Table:
    """One round's plan: per sampled device its config, memory against budget and times."""
    configs = planned.plan.configs
    timing = time_round(
        ctx.profile,
        configs,
        {d: planned.estimates[d] for d in configs},
        ctx.local_steps,
    )
    deadline = planned.plan.deadline
    title = f"{method}, round {round_index}: {len(configs)} of {len(planned.sampled)} train"
    title += f"; round {timing.seconds:.1f} s"
    if deadline is not None:
        title += f" (deadline {deadline:.1f} s)"
    table = Table(title=title)
    for name in ["device", "tier", "depth", "q", "ranks", "MiB", "budget", "compute s"]:
        table.add_column(name, justify="left" if name == "tier" else "right")
    for name in ["transfer s", "wait s"]:
        table.add_column(name, justify="right")
    num_blocks = ctx.profile.num_blocks
    for d in planned.sampled:
        device = planned.estimates[d]
        budget = _mib(device.memory_budget_bytes)
        config = configs.get(d)
        if config is None:
            reason = planned.plan.sat_out.get(d, "")
            table.add_row(str(d), device.tier, "—", "—", "—", "—", budget, "sits out: " + reason)
            continue
        t = timing.devices[d]
        trained = config.trained_blocks(num_blocks)
        ranks = [ctx.profile.lora_ranks[b] if ctx.profile.lora_ranks else 0 for b in trained]
        if config.rank is not None:
            ranks = [min(r, config.rank) for r in ranks]
        ranks_text = ",".join(str(r) for r in reversed(ranks))
        if config.blocks is not None:
            ranks_text += " @ " + ",".join(str(b) for b in config.blocks)
        table.add_row(
            str(d),
            device.tier,
            str(config.depth),
            str(config.quantized) + (f"×{config.bits}b" if config.quantized else ""),
            ranks_text,
            _mib(ctx.cost(config).memory),
            budget,
            f"{t.compute:.1f}",
            f"{t.download + t.upload:.1f}",
            f"{t.waiting:.1f}",
        )
    return table
