"""Rich progress for a run: a bar plus one line per round (accuracy, loss, host seconds)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RoundProgress:
    def __init__(self, rounds: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("rounds", total=rounds)

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def skip(self, rounds: int) -> None:
        """Rounds already done (a resumed run)."""
        self.progress.advance(self.task, rounds)

    def update(self, record: dict[str, Any]) -> None:
        if self.enabled:
            parts = [f"round {record['round']:>3}"]
            if "test_accuracy" in record:
                parts.append(f"accuracy {record['test_accuracy']:.4f}")
            if "test_loss" in record:  # a causal LM on unlabelled data has a loss only
                parts.append(f"test loss {record['test_loss']:.4f}")
            if "train_loss" in record:
                parts.append(f"train loss {record['train_loss']:.4f}")
            parts.append(f"host {record['host_seconds']:.1f}s")
            self.progress.console.print("  ".join(parts))
        self.progress.advance(self.task)
