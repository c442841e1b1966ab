"""What a round records: typed here, written to ``metrics.jsonl`` as :meth:`RoundRecord.to_dict`.

The report, the summary and ``compare`` read the written dicts by their keys; the dicts' keys,
their order and their values are the metrics format, so a record serialises to exactly them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from fedquad.device_config import DeviceConfig


@dataclass(frozen=True)
class DeviceRecord:
    """One aggregated device's round: its config, bytes and virtual times, what it measured."""

    device: int
    tier: str
    config: DeviceConfig
    """What it trained: the planned config, or the fallback after an out-of-memory retry."""
    num_samples: int
    bytes_down: int
    """What the protocol sends the device (the local executor shares memory instead)."""
    bytes_up: int
    memory_bytes: int
    """The cost model's memory of ``config``."""
    memory_budget_bytes: int
    compute_seconds: float
    download_seconds: float
    upload_seconds: float
    waiting_seconds: float
    over_budget: bool = False
    """It trained a config its memory cannot hold (``planner.infeasible = "ignore"``)."""
    # Measured by the device (None: not measured by this executor)
    loss: float | None = None
    median_step_seconds: float | None = None
    peak_saved_bytes: int | None = None
    sent_bytes: int | None = None
    """Counted by a Flower executor, as ``received_bytes``."""
    received_bytes: int | None = None
    oom_retry: dict[str, Any] | None = None
    """The configs it ran out of memory on and retried with."""
    host_seconds: float | None = None
    """Host seconds of its local steps."""
    saved_bytes_per_block: Any = None
    node: dict[str, Any] | None = None
    """Measured by a deployed device about itself."""
    peak_device_bytes: int | None = None
    """The accelerator allocator's peak during its training (CUDA only)."""

    @staticmethod
    def measured(measurements: dict[str, Any]) -> dict[str, Any]:
        """A reply's measurements as this record's fields."""
        kept = {k: measurements[k] for k in _MEASURED_AS_IS if k in measurements}
        if "step_seconds" in measurements:
            kept["host_seconds"] = float(sum(measurements["step_seconds"]))
        if "saved_bytes" in measurements:
            kept["saved_bytes_per_block"] = measurements["saved_bytes"]["per_block"]
        return kept

    def to_dict(self) -> dict[str, Any]:
        config = self.config
        out: dict[str, Any] = {
            "device": self.device,
            "tier": self.tier,
            "depth": config.depth,
            "quantized": config.quantized,
            "bits": config.bits,
        }
        if config.rank is not None:
            out["rank"] = config.rank
        if config.blocks is not None:
            out["blocks"] = list(config.blocks)
        if config.checkpointed:
            out["checkpointed"] = config.checkpointed
        out.update(
            num_samples=self.num_samples,
            bytes_down=self.bytes_down,
            bytes_up=self.bytes_up,
            memory_bytes=self.memory_bytes,
            memory_budget_bytes=self.memory_budget_bytes,
        )
        if self.over_budget:
            out["over_budget"] = True
        out.update(
            compute_seconds=self.compute_seconds,
            download_seconds=self.download_seconds,
            upload_seconds=self.upload_seconds,
            waiting_seconds=self.waiting_seconds,
        )
        for name in _MEASURED:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_MEASURED = (
    "loss",
    "median_step_seconds",
    "peak_saved_bytes",
    "sent_bytes",
    "received_bytes",
    "oom_retry",
    "host_seconds",
    "saved_bytes_per_block",
    "node",
    "peak_device_bytes",
)
"""The measured fields in the order they are written."""
_MEASURED_AS_IS = tuple(n for n in _MEASURED if n not in ("host_seconds", "saved_bytes_per_block"))
"""Those copied from the reply's measurements under the same name."""


@dataclass
class RoundRecord:
    """One round: who was sampled, who trained, who was left out and why, and its times."""

    round: int
    sampled: list[int]
    over_selected: int
    """Devices sampled beyond ``devices_per_round`` to make up for expected failures."""
    offline: int
    sat_out: dict[int, str]
    """Sampled devices the planner gave nothing to train, with the reason."""
    rejected: dict[int, str]
    """Arrived updates not aggregated (NaN, unassigned tensors, norm outliers), with the reason."""
    devices: list[DeviceRecord]
    """The devices whose updates were aggregated."""
    dropped: dict[int, str]
    """Devices that sent no update (error replies) or missed the deadline, with the reason."""
    out_of_memory: dict[int, dict[str, Any]]
    """Every device that ran out of memory: its ``oom_retry`` measurement."""
    round_deadline: float | None
    """When the server stopped waiting."""
    virtual_seconds: float
    straggler: int | None
    deadline: float | None
    """The planner's deadline, where it has one."""
    train_loss: float | None = None
    """Sample-weighted mean training loss of the aggregated updates; None when there are none."""
    virtual_seconds_total: float = 0.0
    test: dict[str, float] = field(default_factory=dict)
    """The global model's evaluation, in rounds that evaluate (written as ``test_<name>``)."""
    host_seconds: float = 0.0
    host_seconds_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        devices = [d.to_dict() for d in self.devices]
        out: dict[str, Any] = {
            "round": self.round,
            "sampled": self.sampled,
            "over_selected": self.over_selected,
            "offline": self.offline,
            "sat_out": _by_name(self.sat_out),
            "rejected": _by_name(self.rejected),
            "devices": devices,
            "dropped": _by_name(self.dropped),
            "out_of_memory": _by_name(self.out_of_memory),
            "round_deadline": self.round_deadline,
            "virtual_seconds": self.virtual_seconds,
            "virtual_seconds_total": self.virtual_seconds_total,
            "straggler": self.straggler,
            "deadline": self.deadline,
        }
        if self.train_loss is not None:
            out["train_loss"] = self.train_loss
        out["bytes_up"] = sum(d["bytes_up"] for d in devices)
        out["bytes_down"] = sum(d["bytes_down"] for d in devices)
        out.update({f"test_{k}": v for k, v in self.test.items()})
        out["host_seconds"] = self.host_seconds
        out["host_seconds_total"] = self.host_seconds_total
        return out


def _by_name(values: dict[int, Any]) -> dict[str, Any]:
    """JSON object keys are strings: device ids are written as such."""
    return {str(k): v for k, v in values.items()}


def best_accuracy(metrics: list[dict[str, Any]]) -> float | None:
    values = [m["test_accuracy"] for m in metrics if "test_accuracy" in m]
    return max(values) if values else None


def median_step_seconds(metrics: list[dict[str, Any]]) -> float | None:
    values = [d["median_step_seconds"] for m in metrics for d in m["devices"]]
    return statistics.median(values) if values else None
