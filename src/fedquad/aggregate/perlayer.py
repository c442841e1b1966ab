"""Per-layer aggregation: each tensor is averaged over the devices that trained it this round.

A tensor nobody trained keeps its previous value. Weights are sample counts (or uniform).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Update:
    tensors: State
    num_samples: int


def aggregate_per_layer(
    global_state: State, updates: Sequence[Update], weighting: str = "samples"
) -> State:
    """The new global state: per tensor, the weighted mean of the updates that carry it."""
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    for update in updates:
        w = float(update.num_samples) if weighting == "samples" else 1.0
        for name, value in update.tensors.items():
            if name not in global_state:
                raise KeyError(
                    f"update carries tensor {name!r} that the global state does not have"
                )
            acc = value.detach().to(torch.float64) * w
            sums[name] = sums[name] + acc if name in sums else acc
            weights[name] = weights.get(name, 0.0) + w
    new_state = {}
    for name, old in global_state.items():
        if name in sums and weights[name] > 0:
            new_state[name] = (sums[name] / weights[name]).to(old.dtype)
        else:
            new_state[name] = old.clone()
    return new_state
