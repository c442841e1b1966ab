"""Checks on every update before it is aggregated: a bad update is rejected with its reason and
the round goes on with the others.

Rejected: a tensor the global state does not have, one the device was not assigned (outside its
trained blocks and the head), a wrong dtype or shape (rank-truncated methods may send the first
``r`` rows of ``A`` / columns of ``B``, nothing else), NaN or Inf, and an update whose distance
from the global state is far outside the round's (more than ``norm_bound`` times the median).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection

import torch

from fedquad.models.lora import State


def tensor_problem(
    name: str, value: torch.Tensor, global_state: State, assigned: Collection[str]
) -> str | None:
    """Why one uploaded tensor is unacceptable, or None."""
    if name not in global_state:
        return f"tensor {name!r} is not part of the model"
    if name not in assigned:
        return f"tensor {name!r} was not assigned to this device"
    expected = global_state[name]
    if value.dtype != expected.dtype:
        return f"tensor {name!r} has dtype {value.dtype}, expected {expected.dtype}"
    if value.shape != expected.shape and not _truncation(name, value.shape, expected.shape):
        return f"tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(expected.shape)}"
    if not torch.isfinite(value).all():
        return f"tensor {name!r} holds NaN or Inf"
    return None


def _truncation(name: str, shape: torch.Size, full: torch.Size) -> bool:
    """The first ``r`` rows of a LoRA ``A`` or columns of a ``B`` (rank-heterogeneous methods)."""
    if len(shape) != 2 or len(full) != 2:
        return False
    if ".lora_A." in name:
        return shape[1] == full[1] and 1 <= shape[0] <= full[0]
    if ".lora_B." in name:
        return shape[0] == full[0] and 1 <= shape[1] <= full[1]
    return False


def update_problem(tensors: State, global_state: State, assigned: Collection[str]) -> str | None:
    if not tensors:
        return "the update is empty"
    for name, value in tensors.items():
        problem = tensor_problem(name, value, global_state, assigned)
        if problem is not None:
            return problem
    return None


def update_distance(tensors: State, global_state: State) -> float:
    """L2 distance of the update from the global state, over the tensors it carries (on the
    part of a truncated tensor it sent)."""
    total = 0.0
    for name, value in tensors.items():
        old = global_state[name][tuple(slice(0, n) for n in value.shape)]
        total += float((value.double() - old.double()).pow(2).sum())
    return total**0.5


def norm_outliers(distances: dict[int, float], bound: float) -> dict[int, str]:
    """Devices whose update distance exceeds ``bound`` × the round's median (needs 3 or more
    updates: with fewer the median says nothing about the round)."""
    if bound <= 0 or len(distances) < 3:
        return {}
    median = statistics.median(distances.values())
    limit = bound * median
    return {
        d: f"update norm {x:.3g} is more than {bound:g} x the round's median {median:.3g}"
        for d, x in distances.items()
        if median > 0 and x > limit
    }
