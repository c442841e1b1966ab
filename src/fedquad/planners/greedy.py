"""FedQuad's planner (docs/methods.md §4.1): the feasible-and-efficient set, then the greedy choice.

LEGEND's depth choice (§4.2) is the same with ``q ≡ 0``.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math

from fedquad.cost.fleet import Device
from fedquad.cost.model import fewest_that_fit
from fedquad.device_config import DeviceConfig
from fedquad.planners.base import Plan, PlanContext


def efficient_options(device: Device, ctx: PlanContext, quantize: bool) -> list[DeviceConfig]:
    """``F_i = {(d, q_min(d))}`` for ``d = d_min … D``, ordered by depth.

    ``q_min(d)`` is the fewest quantized blocks that fit the device's memory: any more only
    add overhead and noise. Without ``quantize`` only ``q = 0`` is tried.
    """
    options = []
    for depth in range(min(ctx.options.min_depth, ctx.lora_depth), ctx.lora_depth + 1):
        memory = functools.partial(_memory, ctx, depth)
        q = fewest_that_fit(memory, ctx.limit(device), depth if quantize else 0)
        if q is not None:
            options.append(_config(ctx, depth, q))
    return options


def _config(ctx: PlanContext, depth: int, quantized: int) -> DeviceConfig:
    return DeviceConfig(depth, quantized, bits=ctx.quant.bits, quant_position=ctx.quant.position)


def _memory(ctx: PlanContext, depth: int, quantized: int) -> int:
    return ctx.cost(_config(ctx, depth, quantized)).memory


def fallback_option(
    device: Device, ctx: PlanContext, quantize: bool, failed: DeviceConfig
) -> DeviceConfig | None:
    """The device's next efficient option needing less memory than ``failed``: the deepest, not
    deeper than ``failed``, of its options under a budget just below ``failed``'s memory — more
    quantized blocks at the same depth if some fit, else a smaller depth. None if nothing does.
    """
    below = ctx.budget_below(ctx.cost(failed).memory)
    lowered = dataclasses.replace(
        device, memory_budget_bytes=min(device.memory_budget_bytes, below)
    )
    cheaper = [c for c in efficient_options(lowered, ctx, quantize) if c.depth <= failed.depth]
    return cheaper[-1] if cheaper else None


def _sit_out_reason(device: Device, ctx: PlanContext, quantize: bool) -> str:
    depth = min(ctx.options.min_depth, ctx.lora_depth)
    return ctx.no_fit_reason(device, _config(ctx, depth, depth if quantize else 0))


def plan_greedy(devices: list[Device], ctx: PlanContext, quantize: bool) -> Plan:
    """Straggler-anchored greedy, or the deadline search when ``ctx.options.deadline`` asks."""
    plan = Plan(configs={})
    options: dict[int, list[DeviceConfig]] = {}
    times: dict[int, list[float]] = {}
    for device in devices:
        found = efficient_options(device, ctx, quantize)
        if not found:
            plan.sat_out[device.id] = _sit_out_reason(device, ctx, quantize)
            continue
        options[device.id] = found
        times[device.id] = [ctx.round_seconds(device, c) for c in found]
    if not options:
        return plan
    if ctx.options.deadline == "adaptive":
        levels, deadline = _adaptive(options, times, ctx)
        for i in sorted(set(options) - set(levels)):
            plan.sat_out[i] = (
                f"left out by the adaptive deadline: its quickest round {times[i][0]:.1f} s "
                f"is past {deadline:.1f} s"
            )
    elif ctx.options.deadline == "search":
        levels, deadline, _ = _search(options, times, _anchor(times, ctx), ctx)
    else:
        deadline = _anchor(times, ctx)
        levels = _anchored(times, deadline)
    plan.configs = {i: options[i][levels[i]] for i in sorted(levels)}
    plan.deadline = deadline
    return plan


def _anchor(times: dict[int, list[float]], ctx: PlanContext) -> float:
    """``T* = (1+ε)·max_i T_i(cheapest)``."""
    return (1 + ctx.options.epsilon) * max(t[0] for t in times.values())


def _anchored(times: dict[int, list[float]], deadline: float) -> dict[int, int]:
    """Start everyone at the cheapest option; repeatedly give the next deeper option to the
    device whose upgrade costs the least time, while its new round time stays ``≤ deadline``.
    Fast devices fill the time they would have spent waiting with deeper LoRA."""
    levels = dict.fromkeys(times, 0)
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        k = levels[i] + 1
        if k < len(times[i]) and times[i][k] <= deadline:
            heapq.heappush(heap, (times[i][k] - times[i][k - 1], i))

    for i in times:
        push(i)
    while heap:
        _, i = heapq.heappop(heap)
        levels[i] += 1
        push(i)
    return levels


def _progress(config: DeviceConfig, samples: int, ctx: PlanContext) -> float:
    """``n_i·(Σ_{k<d_i} w_k − λ·q_i)``: depth trained, less the noise of quantized blocks."""
    weights = ctx.options.block_weights
    depth_value = float(config.depth) if weights is None else float(sum(weights[: config.depth]))
    return samples * (depth_value - ctx.options.progress_lambda * config.quantized)


def _search(
    options: dict[int, list[DeviceConfig]],
    times: dict[int, list[float]],
    anchor: float,
    ctx: PlanContext,
) -> tuple[dict[int, int], float, float]:
    """``deadline = search`` (ours): try the anchored deadline and every option time above it,
    keep the one with the best ``progress / T``. One sweep over the options sorted by time.
    Returns the levels, the deadline and its ``progress / T``."""
    levels = _anchored(times, anchor)
    samples = {i: ctx.num_samples.get(i, 1) for i in options}
    value = {i: [_progress(c, samples[i], ctx) for c in options[i]] for i in options}
    progress = sum(value[i][levels[i]] for i in options)
    longest = max(times[i][levels[i]] for i in options)
    best = (progress / longest, -longest, dict(levels), anchor)
    events = sorted(
        (t, i, k) for i in options for k, t in enumerate(times[i]) if t > anchor and k > levels[i]
    )
    for t, i, k in events:
        if k <= levels[i]:
            continue  # a deeper option already fitted an earlier deadline
        progress += value[i][k] - value[i][levels[i]]
        levels[i] = k
        score = (progress / t, -t)
        if score > best[:2]:
            best = (*score, dict(levels), t)
    return best[2], best[3], best[0]


ADAPTIVE_CUTS = 8
"""At most this many ways of leaving the slowest devices out are tried (plus keeping all)."""


def _adaptive(
    options: dict[int, list[DeviceConfig]], times: dict[int, list[float]], ctx: PlanContext
) -> tuple[dict[int, int], float]:
    """``deadline = adaptive`` (ours): ``search``, also over deadlines below the anchor that
    leave the slowest devices out of the round (their quickest round would not fit), keeping at
    least ``min_participation`` of the devices that could train. Keeps the best
    ``progress / T``; on a tie, the plan with more devices. Returns the levels of the devices
    kept and the deadline.

    Waiting for a device two or three times slower than the rest can cost more time than its
    update is worth; this lets the planner see it, as LEGEND's memory limit does by accident.
    """
    order = sorted(options, key=lambda i: times[i][0])
    n = len(order)
    least = max(1, math.ceil(ctx.options.min_participation * n))
    # cut where the next device is slower than the last kept one: keeping a prefix ending at a
    # device as fast as the next one gains nothing
    cuts = [k for k in range(least, n) if times[order[k]][0] > times[order[k - 1]][0]]
    if len(cuts) > ADAPTIVE_CUTS:
        step = len(cuts) / ADAPTIVE_CUTS
        cuts = [cuts[int(j * step)] for j in range(ADAPTIVE_CUTS)]
    best: tuple[float, int, dict[int, int], float] | None = None
    for k in [*cuts, n]:
        kept = order[:k]
        sub_times = {i: times[i] for i in kept}
        levels, deadline, score = _search(
            {i: options[i] for i in kept}, sub_times, _anchor(sub_times, ctx), ctx
        )
        if best is None or (score, k) > best[:2]:
            best = (score, k, levels, deadline)
    assert best is not None
    return best[2], best[3]
