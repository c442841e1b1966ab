"""The results directory of one run.

``config.toml`` (resolved), ``metrics.jsonl`` (one line per round, appended with one write and
synced), ``summary.json`` and the final adapter in PEFT format under ``adapter/``. Files are
written atomically (temporary file + rename), so a crash never leaves a half-written result; a
metrics line cut short by a crash (no final newline) is ignored when read, and a resumed run
rewrites the file without it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedquad.errors import FedquadError


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """A fresh directory ``output_dir/name`` (``-2``, ``-3`` … appended if taken)."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = root / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise FedquadError(f"output_dir '{root}' cannot be written: {exc.strerror}") from None
    raise FedquadError(f"output_dir '{root}' has too many runs named {name!r}")


def default_run_name(method: str, data: str, model: str, seed: int) -> str:
    def tidy(s: str) -> str:
        return Path(s).stem.replace("/", "_") or "data"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{tidy(data)}-{tidy(model)}-s{seed}"


class RunWriter:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"

    def write_config(self, toml_text: str) -> None:
        atomic_write_text(self.dir / "config.toml", toml_text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # one write for any line of a usual size: it is there whole or not at all
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``metrics.jsonl`` (atomically) with only the records ``keep`` accepts."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in read_metrics(self.dir) if keep(r)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json("summary.json", summary)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_text(self.dir / name, json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.dir / name, text)

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line without its newline that is not JSON (the
    process was killed while writing it) is left out, damage anywhere else is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # no newline after it: cut short
                break
            raise FedquadError(f"{path}: line {number} is not a JSON record") from None
    return records
