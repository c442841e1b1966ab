"""Per-layer aggregation: each tensor is averaged over the devices that trained it this round.

A tensor nobody trained keeps its previous value. Weights are sample counts (or uniform).
Updates carry full tensors: truncated LoRA ranks need the zero-padded or SVD rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedquad.errors import FedquadError

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Update:
    tensors: State
    num_samples: int


def update_weight(update: Update, weighting: str) -> float:
    return float(update.num_samples) if weighting == "samples" else 1.0


def check_known(name: str, global_state: State) -> torch.Tensor:
    """The global tensor of that name; a clear error when the global state has none."""
    if name not in global_state:
        raise FedquadError(f"update carries tensor '{name}' that the global state does not have")
    return global_state[name]


def aggregate_per_layer(
    global_state: State, updates: Sequence[Update], weighting: str = "samples"
) -> State:
    """The new global state: per tensor, the weighted mean of the updates that carry it."""
    sums: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    for update in updates:
        w = update_weight(update, weighting)
        for name, value in update.tensors.items():
            old = check_known(name, global_state)
            if value.shape != old.shape:
                raise FedquadError(
                    f"update tensor '{name}' has shape {tuple(value.shape)}, the global one "
                    f"{tuple(old.shape)}: per-layer aggregation needs full tensors, "
                    "use zeropad or svd for truncated ranks"
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
