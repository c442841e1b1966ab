"""The causal LM's loss computed where it is read: logits at the answer positions only.

The loss of an instruction pair covers its answer tokens, a few of the sequence's positions, but a
causal LM projects every position onto the vocabulary (49,152 outputs per token for SmolLM2) and
autograd keeps the log-softmax of all of them for backward: for SmolLM2 at batch 8 and sequence
96 that is ~150 MiB per step, more than four blocks' activations, and ~10% of the step's time.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from fedquad.data.chat import IGNORE_INDEX


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (PEFT-wrapped) model's forward can limit its logits to given positions."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose next token is an answer token in some row, and the labels they predict.

    Position ``t`` predicts token ``t + 1``; these are the only logits the loss reads.
    """
    following = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    positions = (following != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    return positions, following[:, positions]


def keep_answer_logits(model: nn.Module) -> RemovableHandle | None:
    """Make ``model(..., labels=...)`` compute logits and loss at the answer positions only.

    The loss is unchanged (the same mean over the same tokens). Calls without labels, or that
    choose their own ``logits_to_keep``, are left alone. ``None`` when the model cannot limit
    its logits.
    """
    if not accepts_logits_to_keep(model):
        return None

    def limit(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        labels = kwargs.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or "logits_to_keep" in kwargs:
            return None
        positions, targets = answer_positions(labels)
        if positions.numel() == 0:
            return None
        return args, {**kwargs, "logits_to_keep": positions, "shift_labels": targets}

    return model.register_forward_pre_hook(limit, with_kwargs=True)
