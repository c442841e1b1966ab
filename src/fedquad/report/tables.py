"""Rich tables for the command line: a cost profile, a fleet against a workload."""

from __future__ import annotations

from rich.table import Table

from fedquad.cost.fleet import MB, MIB, FleetSpec
from fedquad.cost.model import (
    CostProfile,
    download_bytes,
    full_footprint,
    largest_feasible_depth,
    step_seconds,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig


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
    spec: FleetSpec, profile: CostProfile, kappa: float, bits: int, max_depth: int
) -> Table:
    """Each tier with its budget and largest feasible depth without and with quantization."""
    footprint = full_footprint(profile)
    table = Table(
        title=(
            f"{spec.num_devices} devices, {spec.per_round} per round; "
            f"M(L, 0) = {_mib(footprint)} MiB, margin κ = {kappa}"
        )
    )
    for name in ["tier", "n", "σ", "budget MiB", "up MB/s", "down MB/s", "online"]:
        table.add_column(name, justify="right" if name != "tier" else "left")
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
            _mib(budget),
            f"{low:g}–{high:g}",
            f"{tier.downlink_mbps:g}",
            f"{tier.availability:.0%}",
            "none" if plain is None else str(plain),
            "none" if quantized is None else str(quantized),
        )
    return table
