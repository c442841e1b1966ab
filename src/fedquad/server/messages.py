"""The small message interface between the round logic and an executor.

Executors only move these messages: in-process (local), or over Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fedquad.device_config import DeviceConfig
from fedquad.models.lora import State


@dataclass
class TrainInstruction:
    device_id: int
    round: int
    config: DeviceConfig
    tensors: State
    """The global tensors the device starts from (LoRA and head)."""
    seed: int


@dataclass
class TrainReply:
    device_id: int
    tensors: State
    """Only what the device trained: its span's LoRA and the head."""
    num_samples: int
    measurements: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """Runs the clients of one round and evaluates the global model."""

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]: ...

    def evaluate(self, state: State) -> dict[str, float]: ...

    def device_samples(self) -> list[int]:
        """Sample count of every device in the fleet, by device id."""
        ...
