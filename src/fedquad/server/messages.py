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
    fault: str | None = None
    """An injected fault for this device and round (crash, delay, corrupt, oom), or None."""
    delay_factor: float = 1.0
    """How much slower than its profile a ``delay`` fault makes the device."""
    fallback: DeviceConfig | None = None
    """The server's next cheaper config for this device (less predicted memory): what it
    retries once with if training ``config`` runs out of memory. None: no retry."""


@dataclass
class TrainReply:
    device_id: int
    tensors: State
    """Only what the device trained: its span's LoRA and the head."""
    num_samples: int
    measurements: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Why the device produced no update (it failed or disconnected mid-round); None if it did."""


class Executor(Protocol):
    """Runs the clients of one round and evaluates the global model."""

    def train(self, instructions: list[TrainInstruction]) -> list[TrainReply]: ...

    def evaluate(self, state: State) -> dict[str, float]: ...

    def device_samples(self) -> list[int]:
        """Sample count of every device in the fleet, by device id."""
        ...
