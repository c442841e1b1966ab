"""Activation checkpointing of a device's chosen blocks (docs/methods.md §4.4).

transformers' per-layer gradient checkpointing wraps a block's ``forward``, not its
``__call__``, so the saved-tensor meter's block hooks stay outside the checkpoint: inside a
checkpointed block they see only the inputs the checkpoint keeps to recompute the block in
backward, and the recomputation runs no hooks at all. Non-reentrant checkpointing: the reentrant
kind gives the LoRA of a span's lowest block no gradient (its input does not require grad). The
RNG state is preserved, so dropout draws the same masks when the block is recomputed.

The frozen model is shared by the devices trained in one process: checkpointing is switched on
for one device's training and restored after.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.utils.checkpoint
import transformers
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from fedquad.errors import FedquadError

_ATTRIBUTES = ("gradient_checkpointing", "_gradient_checkpointing_func")
"""What transformers sets on a layer to checkpoint it."""
_UNSET = object()

CHECKPOINT = functools.partial(
    torch.utils.checkpoint.checkpoint, use_reentrant=False, preserve_rng_state=True
)


def check_checkpointable(blocks: nn.ModuleList, indices: Iterable[int]) -> None:
    for index in indices:
        block = blocks[index]
        if not isinstance(block, GradientCheckpointingLayer):
            raise FedquadError(
                f"block {index} ({type(block).__name__}) does not support activation "
                "checkpointing: use planner.infeasible = 'sit-out' or 'ignore' with this model"
            )
    if "__call__" in vars(GradientCheckpointingLayer):
        # older transformers checkpoint the whole call, hooks included: the meter would count
        # the block's tensors in its recomputation
        raise FedquadError(
            f"transformers {transformers.__version__} checkpoints a layer's __call__, not its "
            "forward: activation checkpointing needs the version in constraints.txt"
        )


@contextmanager
def checkpointed(blocks: nn.ModuleList, indices: Iterable[int]) -> Iterator[None]:
    """Blocks ``indices`` run under activation checkpointing inside the context (in train
    mode, as transformers checkpoints only then); every block is as it was after."""
    chosen = sorted(set(indices))
    check_checkpointable(blocks, chosen)
    before: dict[int, dict[str, Any]] = {
        i: {name: vars(blocks[i]).get(name, _UNSET) for name in _ATTRIBUTES} for i in chosen
    }
    try:
        for i in chosen:
            block: Any = blocks[i]  # transformers' own attributes of a layer
            block.gradient_checkpointing = True
            block._gradient_checkpointing_func = CHECKPOINT
        yield
    finally:
        for i, values in before.items():
            for name, value in values.items():
                if value is _UNSET:
                    vars(blocks[i]).pop(name, None)
                else:
                    setattr(blocks[i], name, value)
