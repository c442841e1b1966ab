"""What a result was produced with: code, libraries, host, and the time terms of its clock."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "flwr")


def provenance(
    threads: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """fedquad's version and git commit (None outside a git checkout), the libraries' versions,
    the CPU with its kernel instruction sets, threads, device, precision and the timing source
    with its hash."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {
        "fedquad": library_version("fedquad"),
        "git_commit": git_commit(),
        **{name: library_version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "threads": threads,
        "device": device,
        "precision": precision,
        "timing": timing,
    }


def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(where: Path, *args: str, timeout: float = 10) -> str | None:
    """What ``git -C where ARGS`` prints, or None where git fails or is absent."""
    try:
        out = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@cache
def git_commit(where: Path | None = None) -> str | None:
    """The commit of the checkout fedquad is imported from (or of ``where``), or None outside
    a git checkout (an installed package)."""
    commit = (_git(where or Path(__file__).resolve().parent, "rev-parse", "HEAD") or "").strip()
    return commit if len(commit) == 40 else None


def code_commit() -> str | None:
    """The git commit of the fedquad source running now, with ``-dirty`` when tracked files
    differ from it (a resumed run must execute the same code), or ``None`` outside a checkout."""
    head = git_commit()
    if head is None:
        return None
    here = Path(__file__).resolve().parent
    status = _git(here, "status", "--porcelain", "--untracked-files=no", timeout=30)
    return head + ("-dirty" if status and status.strip() else "")


def _cpuinfo_value(key: str, cpuinfo: str | None = None) -> str | None:
    """The first ``key`` line's value in ``/proc/cpuinfo`` (or the ``cpuinfo`` text given);
    None where there is none to read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one)."""
    return _cpuinfo_value("model name") or platform.processor() or platform.machine()


KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
"""Instruction sets that decide which kernels torch runs on a CPU, and so how float sums round:
two CPUs of one model name (an "AMD EPYC" of two generations) can differ in them."""


def cpu_isa(cpuinfo: str | None = None) -> list[str]:
    """Which of ``KERNEL_ISA`` this CPU has, from ``/proc/cpuinfo``'s flags (or the ``cpuinfo``
    text given); empty where there are none to read."""
    flags = set((_cpuinfo_value("flags", cpuinfo) or "").split())
    return [f for f in KERNEL_ISA if f in flags]


def host_name(run_provenance: Mapping[str, Any] | None) -> str | None:
    """The host a run's provenance names: its CPU model, with the kernel instruction sets where
    the run recorded them; None where it recorded no CPU."""
    if not run_provenance or not run_provenance.get("cpu"):
        return None
    cpu: str = run_provenance["cpu"]
    isa = run_provenance.get("cpu_isa")
    return cpu if isa is None else f"{cpu} ({', '.join(isa) or 'no listed ISA'})"


def comparison_provenance(run_dirs: Mapping[str, Path]) -> dict[str, Any]:
    """A comparison's provenance: this process's (which wrote the tables) and each run's, as
    its ``summary.json`` recorded it (None where it has none)."""
    runs = {label: run_provenance(run_dir) for label, run_dir in run_dirs.items()}
    return {"report": provenance(), "runs": runs}


def run_provenance(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's provenance as its ``summary.json`` recorded it (None where it has none)."""
    try:
        recorded = json.loads((Path(run_dir) / "summary.json").read_text())["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if isinstance(recorded, dict) else None
