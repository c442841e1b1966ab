"""Rich progress for a run on stderr: a bar with the virtual time so far (the headline metric),
the elapsed host time and an ETA, plus one line per round (accuracy, loss, virtual and host
seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

UNKNOWN = "-:--:--"
"""The ETA before this process has finished a round (rich's own placeholder)."""


def eta_seconds(elapsed: float, rounds_done: int, rounds_left: int) -> float | None:
    """Rounds still to run at the mean host time of those run so far (None before the first)."""
    if rounds_done < 1:
        return None
    return elapsed / rounds_done * rounds_left


def clock_text(seconds: float | None) -> str:
    """``h:mm:ss``, as rich shows elapsed time."""
    return UNKNOWN if seconds is None else str(timedelta(seconds=max(0, round(seconds))))


class RoundProgress:
    def __init__(
        self, rounds: int, enabled: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = enabled
        self.clock = clock
        self.started = clock()
        self.run_here = 0
        """Rounds run by this process: a resumed run's earlier rounds took no time here."""
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("virtual {task.fields[virtual]}"),
            TextColumn("host"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("rounds", total=rounds, virtual="0 s", eta=UNKNOWN)

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def skip(self, rounds: int) -> None:
        """Rounds already done (a resumed run)."""
        self.progress.advance(self.task, rounds)

    def update(self, record: dict[str, Any]) -> None:
        virtual = record.get("virtual_seconds_total")
        if self.enabled:
            parts = [f"round {record['round']:>3}"]
            if "test_accuracy" in record:
                parts.append(f"accuracy {record['test_accuracy']:.4f}")
            if "test_loss" in record:  # a causal LM on unlabelled data has a loss only
                parts.append(f"test loss {record['test_loss']:.4f}")
            if "train_loss" in record:
                parts.append(f"train loss {record['train_loss']:.4f}")
            if virtual is not None:
                parts.append(f"virtual {virtual:.0f}s")
            parts.append(f"host {record['host_seconds']:.1f}s")
            self.progress.console.print("  ".join(parts))
        self.run_here += 1
        self.progress.advance(self.task)
        task = self.progress.tasks[0]
        left = max(0, int((task.total or 0) - task.completed))
        eta = eta_seconds(self.clock() - self.started, self.run_here, left)
        fields: dict[str, Any] = {"eta": clock_text(eta)}
        if virtual is not None:
            fields["virtual"] = f"{virtual:.0f} s"
        self.progress.update(self.task, **fields)
