"""Planner dispatch. Each planner is a pure function of the sampled devices and the structure."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedquad.errors import FedquadError
from fedquad.models.lora import LoraStructure
from fedquad.train.local import DeviceConfig


@dataclass
class Plan:
    configs: dict[int, DeviceConfig]
    """Config of every device that trains this round."""
    sat_out: dict[int, str] = field(default_factory=dict)
    """Devices that cannot train this round, with the reason."""


def plan_fedlora(devices: list[int], structure: LoraStructure) -> Plan:
    """FedLoRA: every device trains the full global depth, no quantization."""
    return Plan(configs={d: DeviceConfig(depth=structure.depth) for d in devices})


def plan_round(method: str, devices: list[int], structure: LoraStructure) -> Plan:
    if method == "fedlora":
        return plan_fedlora(devices, structure)
    raise FedquadError(f"method {method!r} is not allowed: use fedlora")
