"""What every planner plans against, and the memory test all methods share (docs/methods.md §4, §6).

A planner is a pure function of the sampled devices' estimates, the workload's cost profile and
the round's random generator: no I/O, no model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from fedquad.config import PlannerConfig, QuantConfig
from fedquad.cost.fleet import Device
from fedquad.cost.model import (
    CostProfile,
    StepComposition,
    download_bytes,
    memory_bytes,
    step_seconds,
    upload_bytes,
)
from fedquad.device_config import DeviceConfig

MIB = 1 << 20


@dataclass(frozen=True)
class ConfigCost:
    """The device-independent costs of one config, computed once per round."""

    memory: int
    step_seconds: float
    """Host seconds per local step (``σ = 1``)."""
    down: int
    up: int


@dataclass(frozen=True)
class PlanContext:
    profile: CostProfile
    lora_depth: int
    """``D``: the global LoRA depth (the top ``D`` blocks carry LoRA)."""
    quant: QuantConfig = field(default_factory=QuantConfig)
    kappa: float = 0.1
    """Safety margin: a config fits when ``M ≤ (1 - κ)·budget``."""
    local_steps: int = 10
    options: PlannerConfig = field(default_factory=PlannerConfig)
    num_samples: Mapping[int, int] = field(default_factory=dict)
    """Samples per device id (the progress weights of ``deadline = search``)."""
    base_rank: int = 8
    """``r``: the uniform rank the rank-heterogeneous methods scale from."""

    @cached_property
    def _costs(self) -> dict[DeviceConfig, ConfigCost]:
        return {}

    def cost(self, config: DeviceConfig) -> ConfigCost:
        """Memoised per config: many devices share a few configs."""
        cached = self._costs.get(config)
        if cached is None:
            cached = ConfigCost(
                memory=memory_bytes(self.profile, config),
                step_seconds=step_seconds(self.profile, config),
                down=download_bytes(self.profile, config),
                up=upload_bytes(self.profile, config),
            )
            self._costs[config] = cached
        return cached

    def limit(self, device: Device) -> float:
        return (1 - self.kappa) * device.memory_budget_bytes

    def budget_below(self, memory: float) -> int:
        """The largest budget whose limit ``(1 - κ)·budget`` stays below ``memory`` bytes: a
        device planned with it is given only configs predicted to need less than ``memory``."""
        budget = math.ceil(memory / (1 - self.kappa))
        while budget > 0 and (1 - self.kappa) * budget >= memory:  # exact in float, as fits
            budget -= 1
        return budget

    def fits(self, device: Device, config: DeviceConfig) -> bool:
        return self.cost(config).memory <= self.limit(device)

    def round_seconds(self, device: Device, config: DeviceConfig) -> float:
        """``T_i = τ·σ·t(d,q) + down/β_down + up/β_up`` (docs/methods.md §3), ``t`` of the
        device's tier composition where it has one (§6)."""
        c = self.cost(config)
        step = c.step_seconds
        if device.composition is not None:
            step = self._composed_step(config, device.composition)
        compute = self.local_steps * device.slowdown * step
        return compute + c.down / device.downlink + c.up / device.uplink

    def _composed_step(self, config: DeviceConfig, composition: StepComposition) -> float:
        key = (config, composition)
        cached = self._composed.get(key)
        if cached is None:
            cached = self._composed[key] = step_seconds(self.profile, config, 1.0, composition)
        return cached

    @cached_property
    def _composed(self) -> dict[tuple[DeviceConfig, StepComposition], float]:
        return {}

    def no_fit_reason(self, device: Device, config: DeviceConfig) -> str:
        need = self.cost(config).memory / MIB
        what = f"depth {config.depth}"
        kinds = [f"{config.quantized} quantized"] if config.quantized else []
        if config.checkpointed:
            kinds.append(f"{config.checkpointed} checkpointed")
        if kinds:
            what += f" with {' and '.join(kinds)} blocks"
        if config.rank is not None:
            what += f" at rank {config.rank}"
        return (
            f"memory: {what} needs {need:.1f} MiB > {self.limit(device) / MIB:.1f} MiB "
            f"({1 - self.kappa:.2f} x budget)"
        )


@dataclass
class Plan:
    configs: dict[int, DeviceConfig]
    """Config of every device that trains this round."""
    sat_out: dict[int, str] = field(default_factory=dict)
    """Devices that cannot train this round, with the reason."""
    over_budget: set[int] = field(default_factory=set)
    """Devices that train a config their memory cannot hold (``planner.infeasible =
    "ignore"``)."""
    deadline: float | None = None
    """The round deadline the planner worked to, where it has one (seconds)."""
