"""Optional TensorBoard logging of a run's per-round metrics, beside ``metrics.jsonl``.

Scalars are logged against the round; accuracy and loss also against virtual seconds (as a
whole number of milliseconds, TensorBoard's steps being integers) under ``by_virtual_ms/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedquad.extras import require

SCALARS = (
    "test_accuracy",
    "test_loss",
    "test_perplexity",
    "train_loss",
    "virtual_seconds",
    "virtual_seconds_total",
    "host_seconds",
    "bytes_up",
    "bytes_down",
)


class TensorBoardLog:
    def __init__(self, directory: Path) -> None:
        require("tensorboard", "tensorboard = true")
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

        self.writer = SummaryWriter(log_dir=str(directory))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["round"])
        for key in SCALARS:
            if isinstance(record.get(key), int | float):
                self.writer.add_scalar(key, record[key], step)
        virtual_ms = round(1000 * record.get("virtual_seconds_total", 0.0))
        for key in ("test_accuracy", "test_loss"):
            if isinstance(record.get(key), int | float):
                self.writer.add_scalar(f"by_virtual_ms/{key}", record[key], virtual_ms)
        self.writer.add_scalar("devices_trained", len(record.get("devices", [])), step)
        self.writer.add_scalar("devices_sat_out", len(record.get("sat_out", {})), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
