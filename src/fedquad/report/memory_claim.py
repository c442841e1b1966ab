"""The memory claim (docs/methods.md §8): FedQuad's peak memory at equal depth with quantization.

The cost model's total device memory ``M(L, L)`` (every block of the full depth quantized)
against ``M(L, 0)`` at the same bits, from a run's own cost profile; beside it the ratio of the
saved activations alone, and, where ``memory_measured.json`` sits in the comparison directory
(written by ``benchmarks/reproduce.py --measure-memory``), the measured process peak of one
training step at each of the two configs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedquad.cost.model import CostProfile, memory_bytes, saved_bytes
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError

MEASURED_FILE = "memory_measured.json"
MEASURED_SCHEMA = 1
BITS = 8


def read_measured(out: Path) -> dict[str, Any] | None:
    path = out / MEASURED_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("schema") != MEASURED_SCHEMA:
        raise FedquadError(f"{path}: schema {data.get('schema')!r} is not {MEASURED_SCHEMA}")
    return data


def _measured_at(measured: Mapping[str, Any] | None, depth: int, q: int) -> dict[str, Any]:
    for item in (measured or {}).get("configs", []):
        if (item.get("depth"), item.get("quantized"), item.get("bits")) == (depth, q, BITS):
            return dict(item)
    return {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def memory_claim(
    profile: CostProfile, precision: str, measured: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The claim's numbers as JSON-ready data (``null``: not measured)."""
    depth = profile.num_blocks
    rows: dict[str, dict[str, Any]] = {}
    for name, q in (("unquantized", 0), ("quantized", depth)):
        config = DeviceConfig(depth=depth, quantized=q, bits=BITS)
        found = _measured_at(measured, depth, q)
        rows[name] = {
            "depth": depth,
            "quantized": q,
            "bits": BITS,
            "total_bytes": memory_bytes(profile, config),
            "saved_bytes": saved_bytes(profile, config),
            "measured_peak_bytes": found.get("peak_bytes"),
            "measured_peak_above_baseline_bytes": found.get("peak_above_baseline_bytes"),
        }
    low, high = rows["quantized"], rows["unquantized"]
    return {
        "precision": precision,
        "configs": [high, low],
        "total_ratio": low["total_bytes"] / high["total_bytes"],
        "saved_ratio": _ratio(low["saved_bytes"], high["saved_bytes"]),
        "measured_peak_ratio": _ratio(low["measured_peak_bytes"], high["measured_peak_bytes"]),
        "measured_above_baseline_ratio": _ratio(
            low["measured_peak_above_baseline_bytes"], high["measured_peak_above_baseline_bytes"]
        ),
        "measured_by": None if measured is None else measured.get("measured_by"),
    }
