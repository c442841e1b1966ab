"""Robust per-layer aggregation: coordinate-wise median or trimmed mean over the devices that
trained each tensor (unweighted: a robust statistic must not let one large device dominate).

For full-shape updates (the per-layer methods); a tensor nobody trained keeps its value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedquad.aggregate.perlayer import State, Update, check_known
from fedquad.errors import FedquadError

ROBUST = ("median", "trimmed-mean")


def aggregate_robust(
    global_state: State, updates: Sequence[Update], kind: str, trim_fraction: float = 0.1
) -> State:
    """Per tensor, the coordinate-wise ``median`` or ``trimmed-mean`` (dropping the
    ``⌊trim_fraction·n⌋`` largest and smallest values of each coordinate) of the updates."""
    if kind not in ROBUST:
        raise FedquadError(
            f"robust aggregation {kind!r} is unknown: use one of {', '.join(ROBUST)}"
        )
    stacks: dict[str, list[torch.Tensor]] = {}
    for update in updates:
        for name, value in update.tensors.items():
            old = check_known(name, global_state)
            if value.shape != old.shape:
                raise FedquadError(
                    f"robust aggregation needs full tensors: {name!r} has shape "
                    f"{tuple(value.shape)}, the global one {tuple(old.shape)}"
                )
            stacks.setdefault(name, []).append(value.detach().to(torch.float64))
    new_state = {}
    for name, old in global_state.items():
        if name not in stacks:
            new_state[name] = old.clone()
            continue
        values = torch.stack(stacks[name])
        if kind == "median":
            # mean of the two middle values for an even count (torch.median takes the lower)
            ordered = values.sort(dim=0).values
            n = len(ordered)
            merged = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        else:
            cut = math.floor(trim_fraction * len(values))
            ordered = values.sort(dim=0).values
            merged = ordered[cut : len(values) - cut].mean(dim=0)
        new_state[name] = merged.to(old.dtype)
    return new_state
