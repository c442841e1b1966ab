"""Fault injection for tests and robustness experiments: which devices of a round crash,
straggle past the deadline, send a corrupted update or run out of memory. Seeded per (seed,
round, device), so a run with faults is as reproducible as one without."""

from __future__ import annotations

import numpy as np

from fedquad.config import FaultConfig

CRASH, DELAY, CORRUPT, OOM = "crash", "delay", "corrupt", "oom"

_FAULT_STREAM = 4
"""Extra seed word: fault draws have their own stream."""


def fault_of(faults: FaultConfig, seed: int, round_index: int, device: int) -> str | None:
    """The fault injected into one device's round, or None."""
    kinds = (
        (CRASH, faults.crash_probability),
        (DELAY, faults.delay_probability),
        (CORRUPT, faults.corrupt_probability),
        (OOM, faults.oom_probability),  # last: the other kinds keep their draws
    )
    if not any(p for _, p in kinds):
        return None
    rng = np.random.default_rng([seed, round_index, device, _FAULT_STREAM])
    u = rng.random()
    for kind, p in kinds:
        if u < p:
            return kind
        u -= p
    return None
