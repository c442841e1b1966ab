"""Planner dispatch. Each planner is a pure function of the sampled devices and the structure."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedquad.config import QuantConfig
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.models.lora import LoraStructure


@dataclass
class Plan:
    configs: dict[int, DeviceConfig]
    """Config of every device that trains this round."""
    sat_out: dict[int, str] = field(default_factory=dict)
    """Devices that cannot train this round, with the reason."""


def plan_fedlora(devices: list[int], structure: LoraStructure, quant: QuantConfig) -> Plan:
    """FedLoRA: every device trains the full global depth (quantized only if asked)."""
    config = DeviceConfig(
        depth=structure.depth,
        quantized=min(quant.blocks, structure.depth),
        bits=quant.bits,
        quant_position=quant.position,
    )
    return Plan(configs={d: config for d in devices})


def plan_round(
    method: str, devices: list[int], structure: LoraStructure, quant: QuantConfig | None = None
) -> Plan:
    quant = quant or QuantConfig()
    if method == "fedlora":
        return plan_fedlora(devices, structure, quant)
    raise FedquadError(f"method {method!r} is not allowed: use fedlora")
