"""The planners (docs/methods.md §4) and their fallbacks by the names the method registry gives
them, and each method's global LoRA structure."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from fedquad.config import PlannerConfig
from fedquad.cost.fleet import Device
from fedquad.cost.model import deepest_that_fits, fewest_that_fit
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.methods_registry import FallbackName, PlannerName, method
from fedquad.planners.base import Plan, PlanContext
from fedquad.planners.greedy import fallback_option, plan_greedy
from fedquad.planners.ranks import rank_distribution

Planner = Callable[[list[Device], PlanContext, np.random.Generator], Plan]
Fallback = Callable[[Device, PlanContext, DeviceConfig], DeviceConfig | None]
"""A device's next cheaper config after one that ran out of memory (its one retry)."""


def plan_fedquad(devices: list[Device], ctx: PlanContext, rng: np.random.Generator) -> Plan:
    """FedQuad: depth and quantized blocks per device (also ``joint``, on LEGEND's ranks)."""
    return plan_greedy(devices, ctx, quantize=True)


def plan_depth_only(devices: list[Device], ctx: PlanContext, rng: np.random.Generator) -> Plan:
    """LEGEND's depth choice and ``fedquad-noquant``: the same greedy with ``q ≡ 0``."""
    return plan_greedy(devices, ctx, quantize=False)


def fallback_fedquad(device: Device, ctx: PlanContext, failed: DeviceConfig) -> DeviceConfig | None:
    return fallback_option(device, ctx, True, failed)


def fallback_depth_only(
    device: Device, ctx: PlanContext, failed: DeviceConfig
) -> DeviceConfig | None:
    return fallback_option(device, ctx, False, failed)


def place(plan: Plan, device: Device, config: DeviceConfig, ctx: PlanContext) -> None:
    """A non-adaptive method's device trains ``config`` if it fits; else what
    ``planner.infeasible`` says (docs/methods.md §4.4): it sits out with the reason
    (``sit-out``), trains ``config`` anyway, over budget (``ignore``), or trains it with the
    fewest of its lowest unquantized blocks checkpointed that fit (``checkpoint``), sitting out
    if even all of them do not."""
    mode = ctx.options.infeasible
    if ctx.fits(device, config):
        plan.configs[device.id] = config
    elif mode == "ignore":
        plan.configs[device.id] = config
        plan.over_budget.add(device.id)
    elif mode == "checkpoint":
        most = len(config.trained_blocks(ctx.profile.num_blocks)) - config.quantized
        k = fewest_that_fit(
            lambda k: ctx.cost(dataclasses.replace(config, checkpointed=k)).memory,
            ctx.limit(device),
            most,
        )
        if k is None:
            every = dataclasses.replace(config, checkpointed=most)
            plan.sat_out[device.id] = ctx.no_fit_reason(device, every)
        else:
            plan.configs[device.id] = dataclasses.replace(config, checkpointed=k)
    else:
        plan.sat_out[device.id] = ctx.no_fit_reason(device, config)


def plan_fedlora(devices: list[Device], ctx: PlanContext, rng: np.random.Generator) -> Plan:
    """FedLoRA: every device trains the full global depth (quantized only if ``quant.blocks``
    asks); a device whose memory cannot hold that does what ``planner.infeasible`` says."""
    config = DeviceConfig(
        depth=ctx.lora_depth,
        quantized=min(ctx.quant.blocks, ctx.lora_depth),
        bits=ctx.quant.bits,
        quant_position=ctx.quant.position,
    )
    plan = Plan(configs={})
    for device in devices:
        place(plan, device, config, ctx)
    return plan


def hetlora_ranks(options: PlannerConfig, rank: int) -> list[int]:
    """The ranks devices choose from, ascending (default ``r/4, r/2, r, 2r``)."""
    ranks = options.hetlora_ranks or [max(1, rank // 4), max(1, rank // 2), rank, 2 * rank]
    return sorted(set(ranks))


def plan_hetlora(devices: list[Device], ctx: PlanContext, rng: np.random.Generator) -> Plan:
    """HetLoRA / FlexLoRA: full depth, a rank per device by capability (ours: by speed, the
    ``⌈4/σ⌉``-th of the four ranks, capped at the fastest; then the largest that fits memory).

    With ``planner.infeasible = "ignore"`` memory is not tested: the rank is the speed's alone.
    A device that no rank fits does what ``planner.infeasible`` says at the smallest rank
    (ours: with ``checkpoint``, exactly the devices that would sit out train, checkpointing).
    """
    ranks = hetlora_ranks(ctx.options, ctx.base_rank)
    plan = Plan(configs={})
    for device in devices:
        speed = min(1.0, 1.0 / device.slowdown)
        top = min(len(ranks), max(1, math.ceil(speed * len(ranks))))
        allowed = [DeviceConfig(depth=ctx.lora_depth, rank=r) for r in reversed(ranks[:top])]
        if ctx.options.infeasible == "ignore":
            place(plan, device, allowed[0], ctx)
            continue
        chosen = next((config for config in allowed if ctx.fits(device, config)), None)
        if chosen is None:
            place(plan, device, DeviceConfig(depth=ctx.lora_depth, rank=ranks[0]), ctx)
        else:
            plan.configs[device.id] = chosen
    return plan


FEDRA_DRAWS = 10
"""Random subsets tried per device before falling back to the top blocks."""


def plan_fedra(devices: list[Device], ctx: PlanContext, rng: np.random.Generator) -> Plan:
    """FedRA: each round a random subset of the LoRA blocks, as many as the device's memory
    holds as a consecutive span (not necessarily consecutive; backward reaches the lowest)."""
    num_blocks = ctx.profile.num_blocks
    lora_blocks = np.arange(num_blocks - ctx.lora_depth, num_blocks)
    plan = Plan(configs={})
    for device in devices:
        count = _largest_depth(device, ctx)
        if count is None:
            plan.sat_out[device.id] = ctx.no_fit_reason(device, DeviceConfig(depth=1))
            continue
        chosen = None
        for _ in range(FEDRA_DRAWS):
            blocks = tuple(int(b) for b in sorted(rng.choice(lora_blocks, count, replace=False)))
            config = DeviceConfig(depth=num_blocks - blocks[0], blocks=blocks)
            if ctx.fits(device, config):
                chosen = config
                break
        plan.configs[device.id] = chosen or DeviceConfig(depth=count)
    return plan


def _largest_depth(device: Device, ctx: PlanContext) -> int | None:
    return deepest_that_fits(
        lambda d: ctx.cost(DeviceConfig(depth=d)).memory, ctx.limit(device), ctx.lora_depth
    )


# --------------------------------------------------------------------------- by name

PLANNERS: dict[PlannerName, Planner] = {
    "greedy": plan_fedquad,
    "greedy-depth": plan_depth_only,
    "full-depth": plan_fedlora,
    "rank-by-speed": plan_hetlora,
    "random-blocks": plan_fedra,
}
FALLBACKS: dict[FallbackName, Fallback] = {
    "greedy": fallback_fedquad,
    "greedy-depth": fallback_depth_only,
}


def global_ranks(
    name: str, options: PlannerConfig, num_blocks: int, rank: int, depth: int | None
) -> list[int]:
    """The method's global rank distribution from the output (``len`` is its ``D``)."""
    kind = method(name).structure
    if kind == "legend":
        legend_depth = options.legend_depth or math.ceil(num_blocks / 2)
        if legend_depth > num_blocks:
            raise FedquadError(
                f"planner.legend_depth = {legend_depth} is more than the model's {num_blocks} "
                "blocks"
            )
        total = options.rank_total or rank * num_blocks
        return rank_distribution(total, legend_depth, options.rank_distribution)
    top = rank if kind == "uniform" else max(hetlora_ranks(options, rank))
    return [top] * (depth or num_blocks)


def plan_round(
    name: str, devices: list[Device], ctx: PlanContext, rng: np.random.Generator | None = None
) -> Plan:
    """The plan of one round for the sampled devices (their estimates)."""
    return PLANNERS[method(name).planner](devices, ctx, rng or np.random.default_rng(0))


def fallback_config(
    name: str, device: Device, ctx: PlanContext, failed: DeviceConfig
) -> DeviceConfig | None:
    """What ``device`` (the server's estimate) retries with if ``failed`` runs out of memory."""
    chosen = method(name).fallback
    return None if chosen is None else FALLBACKS[chosen](device, ctx, failed)
