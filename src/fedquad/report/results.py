"""The results directory of one run.

``config.toml`` (resolved), ``metrics.jsonl`` (one line per round, appended with one write and
synced), ``summary.json`` and the final adapter in PEFT format under ``adapter/``. Files are
written atomically (temporary file + rename), so a crash never leaves a half-written result; a
metrics line cut short by a crash (no final newline) is ignored when read, and a resumed run
rewrites the file without it. Every file gets the same mode: 0666 masked by the umask, what
``open`` gives.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedquad.errors import FedquadError

FILE_MODE = 0o666
"""Mode of every file a run writes, before the umask (tempfile's 0600 would differ from the
0644 of files written by ``open``)."""
RECORD_FLAGS = ("quantized", "over_budget", "checkpointed")
"""Device-record fields counted per run where a record carries them (older records do not)."""


def umask() -> int:
    """The process's umask (read, not changed, where the system tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # no other way to read it
    os.umask(current)
    return current


def give_run_mode(path: Path) -> None:
    """Give a file written by a library (safetensors writes 0600) the mode of the others."""
    os.chmod(path, FILE_MODE & ~umask())


def open_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path`` (to be renamed onto it): its descriptor for
    writing and its path."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = open_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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


def check_run_dir(run_dir: str | Path) -> Path:
    """A directory a run wrote (``fedquad run --resume`` continues one), else a one-line error."""
    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise FedquadError(f"--resume {str(run_dir)!r} is not a run directory (no config.toml)")
    return path


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
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
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
