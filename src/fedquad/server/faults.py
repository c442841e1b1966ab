"""Fault injection for tests and robustness experiments: which devices of a round crash,
straggle past the deadline or send a corrupted update. Seeded per (seed, round, device), so a
run with faults is as reproducible as one without."""

from __future__ import annotations

import numpy as np

from fedquad.config import FaultConfig

CRASH, DELAY, CORRUPT = "crash", "delay", "corrupt"

_FAULT_STREAM = 4
"""Extra seed word: fault draws have their own stream."""


def fault_of(faults: FaultConfig, seed: int, round_index: int, device: int) -> str | None:
    """The fault injected into one device's round, or None."""
    if not (faults.crash_probability or faults.delay_probability or faults.corrupt_probability):
        return None
    rng = np.random.default_rng([seed, round_index, device, _FAULT_STREAM])
    u = rng.random()
    for kind, p in (
        (CRASH, faults.crash_probability),
        (DELAY, faults.delay_probability),
        (CORRUPT, faults.corrupt_probability),
    ):
        if u < p:
            return kind
        u -= p
    return None
