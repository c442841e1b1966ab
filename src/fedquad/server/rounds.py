"""The server's round logic: sample → plan → send → receive → aggregate → evaluate → record."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedquad.aggregate import Update, aggregate_per_layer
from fedquad.config import QuantConfig
from fedquad.models.lora import LoraStructure, State
from fedquad.planners import plan_round
from fedquad.server.messages import Executor, TrainInstruction


def tensor_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass(frozen=True)
class RoundSettings:
    method: str
    rounds: int
    devices_per_round: int
    eval_every: int = 1
    weighting: str = "samples"
    seed: int = 0
    quant: QuantConfig = field(default_factory=QuantConfig)


@dataclass
class RoundsOutcome:
    state: State
    metrics: list[dict[str, Any]] = field(default_factory=list)


def sample_devices(num_devices: int, per_round: int, seed: int, round_index: int) -> list[int]:
    """Uniform sample without replacement, seeded per round (independent of method)."""
    rng = np.random.default_rng([seed, round_index])
    return sorted(int(i) for i in rng.choice(num_devices, size=per_round, replace=False))


def run_rounds(
    settings: RoundSettings,
    structure: LoraStructure,
    executor: Executor,
    state: State,
    on_round: Callable[[dict[str, Any]], None] = lambda _: None,
) -> RoundsOutcome:
    """Run every round from the initial global ``state``; ``on_round`` gets each metrics record."""
    outcome = RoundsOutcome(state=state)
    num_devices = len(executor.device_samples())
    host_total = 0.0
    for r in range(1, settings.rounds + 1):
        start = time.perf_counter()
        sampled = sample_devices(num_devices, settings.devices_per_round, settings.seed, r)
        plan = plan_round(settings.method, sampled, structure, settings.quant)
        instructions = [
            TrainInstruction(
                device_id=d,
                round=r,
                config=cfg,
                tensors=outcome.state,
                # distinct per (round, device) while device ids stay below 1009
                seed=settings.seed * 1_000_003 + r * 1009 + d,
            )
            for d, cfg in plan.configs.items()
        ]
        replies = executor.train(instructions)
        updates = [Update(reply.tensors, reply.num_samples) for reply in replies]
        outcome.state = aggregate_per_layer(outcome.state, updates, settings.weighting)
        record: dict[str, Any] = {
            "round": r,
            "sampled": sampled,
            "sat_out": {str(k): v for k, v in plan.sat_out.items()},
            "devices": [
                {
                    "device": reply.device_id,
                    "depth": plan.configs[reply.device_id].depth,
                    "quantized": plan.configs[reply.device_id].quantized,
                    "bits": plan.configs[reply.device_id].bits,
                    "num_samples": reply.num_samples,
                    "bytes_down": tensor_bytes(outcome.state),
                    "bytes_up": tensor_bytes(reply.tensors),
                    **_device_measurements(reply.measurements),
                }
                for reply in replies
            ],
        }
        if replies:
            total = sum(u.num_samples for u in updates)
            record["train_loss"] = (
                sum(rep.measurements["loss"] * rep.num_samples for rep in replies) / total
            )
        record["bytes_up"] = sum(d["bytes_up"] for d in record["devices"])
        record["bytes_down"] = sum(d["bytes_down"] for d in record["devices"])
        if r % settings.eval_every == 0 or r == settings.rounds:
            record.update({f"test_{k}": v for k, v in executor.evaluate(outcome.state).items()})
        round_seconds = time.perf_counter() - start
        host_total += round_seconds
        record["host_seconds"] = round_seconds
        record["host_seconds_total"] = host_total
        outcome.metrics.append(record)
        on_round(record)
    return outcome


def _device_measurements(measurements: dict[str, Any]) -> dict[str, Any]:
    keep = ("loss", "median_step_seconds", "peak_saved_bytes")
    out = {k: measurements[k] for k in keep if k in measurements}
    if "step_seconds" in measurements:
        out["host_seconds"] = float(sum(measurements["step_seconds"]))
    if "saved_bytes" in measurements:
        out["saved_bytes_per_block"] = measurements["saved_bytes"]["per_block"]
    return out


def best_accuracy(metrics: list[dict[str, Any]]) -> float | None:
    values = [m["test_accuracy"] for m in metrics if "test_accuracy" in m]
    return max(values) if values else None


def median_step_seconds(metrics: list[dict[str, Any]]) -> float | None:
    values = [d["median_step_seconds"] for m in metrics for d in m["devices"]]
    return statistics.median(values) if values else None
