"""Every method, one entry each: the config's accepted names, ``compare``'s defaults, the
baselines, the README's methods table and what the server does for a method all come from here.

An entry is data. What it names is implemented where that kind of thing lives, in a table keyed
by the same ``Literal`` type: the planner and its fallback in ``planners.methods.PLANNERS`` and
``FALLBACKS``, the aggregation rule in ``aggregate.rules.RULES``, the structure in
``planners.methods.global_ranks``. This module imports nothing of the project but its errors,
so the config can check a method's name without importing the planners (which import the
config). Adding a method is its planner (when no existing one fits) and one entry below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedquad.errors import FedquadError, did_you_mean

PlannerName = Literal["greedy", "greedy-depth", "full-depth", "rank-by-speed", "random-blocks"]
"""``greedy``: depth and quantized blocks per device (docs/methods.md §4.1); ``greedy-depth``:
the same with ``q ≡ 0``; ``full-depth``: the global depth for every device; ``rank-by-speed``:
full depth at a rank chosen by speed; ``random-blocks``: a random subset of the LoRA blocks."""
FallbackName = Literal["greedy", "greedy-depth"]
"""The retry after an out-of-memory error: the greedy's next cheaper config, with quantization
(more quantized blocks, then a smaller depth) or without (a smaller depth)."""
Aggregation = Literal["perlayer", "zeropad", "svd"]
"""Per-layer weighted mean over the devices that trained a layer, zero-padded average of
rank-truncated tensors, or SVD of the averaged ``B·A`` back to each rank (docs/methods.md §5)."""
Structure = Literal["uniform", "legend", "rank-max"]
"""The global LoRA: rank ``r`` on ``lora.depth`` blocks, LEGEND's rank distribution over its
``D`` blocks, or the largest HetLoRA rank on every block."""

AGGREGATION_SUMMARIES: dict[Aggregation, str] = {
    "perlayer": "per layer",
    "zeropad": "zero-padded average",
    "svd": "SVD of the averaged `B·A` back to each rank",
}
"""How the README's methods table names each aggregation rule."""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    """What each device trains, as the README's methods table says it."""
    planner: PlannerName
    aggregation: Aggregation
    structure: Structure
    fallback: FallbackName | None = None
    """The retry config after an out-of-memory error; None: the method has no cheaper option
    of its own kind (the device's memory estimate is still corrected for later rounds)."""
    adaptive: bool = True
    """Whether the planner fits each device's config to its memory; a non-adaptive method
    gives every device the same kind of config, and ``planner.infeasible`` says what a device
    that cannot hold it does (sits out, by default)."""
    robust_ok: bool = True
    """Whether ``federation.robust`` applies: not to devices that send rank-truncated tensors."""
    baseline: bool = False
    """A baseline: every method's speed-up in a comparison is measured against these."""
    in_default_compare: bool = True
    """Run by ``fedquad compare`` when ``--methods`` is not given."""


_ENTRIES = (
    Method(
        "fedquad",
        "depth `d` and the fewest quantized blocks `q_min(d)` that fit its memory; "
        "straggler-anchored greedy: fast devices go deeper within the slowest device's "
        "cheapest round time",
        planner="greedy",
        aggregation="perlayer",
        structure="uniform",
        fallback="greedy",
    ),
    Method(
        "legend",
        "depth by the same greedy with `q = 0` over LEGEND's rank distribution (halving from "
        "the output over the top ⌈L/2⌉ blocks, as many parameters as uniform rank `r`)",
        planner="greedy-depth",
        aggregation="perlayer",
        structure="legend",
        fallback="greedy-depth",
    ),
    Method(
        "joint",
        "FedQuad's depth and quantization over LEGEND's ranks",
        planner="greedy",
        aggregation="perlayer",
        structure="legend",
        fallback="greedy",
    ),
    Method(
        "fedlora",
        "full depth, uniform rank; a device that cannot hold it sits the round out, "
        "checkpoints its lowest blocks, or trains over budget (`planner.infeasible`)",
        planner="full-depth",
        aggregation="perlayer",
        structure="uniform",
        adaptive=False,
        baseline=True,
    ),
    Method(
        "hetlora",
        "full depth, the global rank-`2r` LoRA truncated to a rank from `{r/4, r/2, r, 2r}` "
        "by speed",
        planner="rank-by-speed",
        aggregation="zeropad",
        structure="rank-max",
        adaptive=False,
        robust_ok=False,
        baseline=True,
    ),
    Method(
        "flexlora",
        "as `hetlora`",
        planner="rank-by-speed",
        aggregation="svd",
        structure="rank-max",
        adaptive=False,
        robust_ok=False,
        baseline=True,
    ),
    Method(
        "fedra",
        "a random subset of blocks, as many as its memory holds",
        planner="random-blocks",
        aggregation="perlayer",
        structure="uniform",
        baseline=True,
    ),
    Method(
        "fedquad-noquant",  # an ablation of fedquad, not a baseline
        "FedQuad's depth choice without quantization",
        planner="greedy-depth",
        aggregation="perlayer",
        structure="uniform",
        fallback="greedy-depth",
        in_default_compare=False,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}
"""Every method by name, in the order tables and messages list them."""


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method(name: str) -> Method:
    if name not in METHODS:
        hint = did_you_mean(name, METHODS)
        tail = f" ({hint})" if hint else ""
        raise FedquadError(f"method {name!r} is not allowed: use one of {', '.join(METHODS)}{tail}")
    return METHODS[name]


def default_compare_methods() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS.values() if m.in_default_compare)


def baselines() -> tuple[str, ...]:
    return tuple(m.name for m in METHODS.values() if m.baseline)


def methods_table() -> str:
    """The README's methods table (a test keeps the committed one equal to this)."""
    lines = ["| method | what each device trains | aggregation |", "|---|---|---|"]
    for m in METHODS.values():
        lines.append(f"| `{m.name}` | {m.summary} | {AGGREGATION_SUMMARIES[m.aggregation]} |")
    return "\n".join(lines) + "\n"
