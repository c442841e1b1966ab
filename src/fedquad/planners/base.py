"""Planner dispatch and the baseline planner. A planner is a pure function of the sampled
devices' estimates and the workload's cost profile (METHODS.md §4): no I/O, no model."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedquad.config import QuantConfig
from fedquad.cost.fleet import Device
from fedquad.cost.model import CostProfile, memory_bytes
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError

MIB = 1 << 20


@dataclass(frozen=True)
class PlanContext:
    """What every planner plans against, besides the devices."""

    profile: CostProfile
    lora_depth: int
    """``D``: the global LoRA depth (the top ``D`` blocks carry LoRA)."""
    quant: QuantConfig = field(default_factory=QuantConfig)
    kappa: float = 0.1
    """Safety margin: a config fits when ``M ≤ (1 - κ)·budget``."""
    local_steps: int = 10


@dataclass
class Plan:
    configs: dict[int, DeviceConfig]
    """Config of every device that trains this round."""
    sat_out: dict[int, str] = field(default_factory=dict)
    """Devices that cannot train this round, with the reason."""


def fits(device: Device, config: DeviceConfig, ctx: PlanContext) -> bool:
    return memory_bytes(ctx.profile, config) <= (1 - ctx.kappa) * device.memory_budget_bytes


def no_fit_reason(device: Device, config: DeviceConfig, ctx: PlanContext) -> str:
    need = memory_bytes(ctx.profile, config) / MIB
    limit = (1 - ctx.kappa) * device.memory_budget_bytes / MIB
    return (
        f"memory: depth {config.depth} with {config.quantized} quantized blocks needs "
        f"{need:.1f} MiB > {limit:.1f} MiB ({1 - ctx.kappa:.2f} x budget)"
    )


def plan_fedlora(devices: list[Device], ctx: PlanContext) -> Plan:
    """FedLoRA: every device trains the full global depth (quantized only if asked); a device
    whose memory cannot hold that sits the round out."""
    config = DeviceConfig(
        depth=ctx.lora_depth,
        quantized=min(ctx.quant.blocks, ctx.lora_depth),
        bits=ctx.quant.bits,
        quant_position=ctx.quant.position,
    )
    plan = Plan(configs={})
    for device in devices:
        if fits(device, config, ctx):
            plan.configs[device.id] = config
        else:
            plan.sat_out[device.id] = no_fit_reason(device, config, ctx)
    return plan


def plan_round(method: str, devices: list[Device], ctx: PlanContext) -> Plan:
    if method == "fedlora":
        return plan_fedlora(devices, ctx)
    raise FedquadError(f"method {method!r} is not allowed: use fedlora")
