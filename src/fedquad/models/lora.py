"""LoRA structure (global depth ``D``, per-block ranks) on a PEFT model, and per-device depth.

Blocks are indexed ``0 … L-1`` from the input (the Hugging Face order). The top ``D`` blocks carry
LoRA; a device with depth ``d`` trains the LoRA of blocks ``L-d … L-1`` plus the task head (or,
for FedRA, a subset of them whose lowest is ``L-d``), and nothing below its cut ``L-d`` requires
grad, so autograd stores nothing there and backward stops at the cut.

Rank truncation (HetLoRA, FlexLoRA): a device of rank ``r`` trains the first ``r`` rows of each
``A`` and columns of each ``B``; the rest are zero on the device. PEFT scales every LoRA module
by ``alpha_l / r_l`` with ``r_l`` the block's *global* rank, whatever the device rank: one scale
for the whole federation, so a truncated update and a full one add up in the same units.

LoRA scale (docs/methods.md §5): by default every block has ``alpha_l = scale · r_l``, so every
block of every method trains at the same ``alpha_l / r_l = scale``; with one fixed ``alpha`` a
block's learning speed would depend on its rank, and a comparison of rank distributions would be
a comparison of learning rates. A fixed ``alpha`` for every block remains available.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.hooks import RemovableHandle

from fedquad.errors import FedquadError
from fedquad.models.registry import ModelParts

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoraStructure:
    """Which blocks carry LoRA and with which rank."""

    num_blocks: int
    ranks: tuple[int, ...]
    """Rank distribution from the output: ``ranks[0]`` is block ``L-1``; ``len(ranks) == D``."""
    alpha: float | None = None
    """One fixed ``alpha`` for every block; unset: ``alpha_l = scale · r_l``."""
    dropout: float = 0.0
    scale: float = 2.0
    """``alpha_l / r_l`` of every block (unless ``alpha`` is set)."""

    @property
    def depth(self) -> int:
        return len(self.ranks)

    @property
    def lora_blocks(self) -> range:
        return range(self.num_blocks - self.depth, self.num_blocks)

    def rank_of(self, block: int) -> int:
        return self.ranks[self.num_blocks - 1 - block]

    def alpha_of(self, block: int) -> float:
        """PEFT's ``lora_alpha`` of the block: ``scale · r_l``, or the fixed ``alpha``."""
        return self.alpha if self.alpha is not None else self.scale * self.rank_of(block)

    def scale_of(self, block: int) -> float:
        """The block's LoRA scale ``alpha_l / r_l`` (of its global rank)."""
        return self.alpha_of(block) / self.rank_of(block)

    def span(self, depth: int) -> range:
        """Blocks at and above a device's cut: what its backward pass reaches."""
        self.check_depth(depth)
        return range(self.num_blocks - depth, self.num_blocks)

    def trained(self, depth: int, blocks: Collection[int] | None = None) -> tuple[int, ...]:
        """Blocks whose LoRA a device trains: its whole span, or a FedRA subset of it (checked)."""
        span = self.span(depth)
        if blocks is None:
            return tuple(span)
        chosen = tuple(blocks)
        if list(chosen) != sorted(set(chosen)):
            raise FedquadError(
                f"device blocks {chosen} are not allowed: list them sorted, once each"
            )
        outside = [b for b in chosen if b not in self.lora_blocks]
        if outside:
            raise FedquadError(
                f"device block {outside[0]} carries no LoRA: use blocks "
                f"{self.lora_blocks.start} to {self.lora_blocks.stop - 1}"
            )
        if chosen[:1] != (span.start,):
            raise FedquadError(
                f"device blocks {chosen} do not match depth {depth}: "
                f"the lowest must be {span.start}"
            )
        return chosen

    def check_depth(self, depth: int) -> None:
        if not 1 <= depth <= self.depth:
            raise FedquadError(
                f"device depth {depth} is not allowed: use 1 to the global LoRA depth {self.depth}"
            )


def build_structure(
    num_blocks: int,
    depth: int | None = None,
    rank: int = 8,
    ranks: list[int] | None = None,
    alpha: float | None = None,
    dropout: float = 0.0,
    scale: float = 2.0,
) -> LoraStructure:
    """A structure from the config: uniform ``rank`` unless a per-block ``ranks`` list is given."""
    if ranks is not None:
        depth = len(ranks) if depth is None else depth
    depth = num_blocks if depth is None else depth
    if not 1 <= depth <= num_blocks:
        raise FedquadError(
            f"lora.depth = {depth} is not allowed: the model has {num_blocks} blocks, "
            f"use 1 to {num_blocks}"
        )
    if ranks is not None and len(ranks) != depth:
        raise FedquadError(
            f"lora.ranks has {len(ranks)} entries: give one per LoRA block ({depth})"
        )
    chosen = tuple(ranks) if ranks is not None else (rank,) * depth
    return LoraStructure(
        num_blocks=num_blocks, ranks=chosen, alpha=alpha, dropout=dropout, scale=scale
    )


def block_linear_targets(parts: ModelParts) -> list[str]:
    """Dotted names (relative to a block) of every linear module of a block: the LoRA targets."""
    return sorted(
        name.removesuffix(".base_layer")  # a block already wrapped by PEFT: the wrapped linear
        for name, module in parts.blocks[0].named_modules()
        # the LoRA factors inside a wrapped block are linears too: not targets
        if isinstance(module, nn.Linear) and "lora_" not in name
    )


def attach_lora(model: nn.Module, parts: ModelParts, structure: LoraStructure) -> PeftModel:
    """Wrap ``model`` with PEFT LoRA on the top ``D`` blocks, per-block ranks and alphas,
    trainable head."""
    prefix = re.escape(parts.block_prefix)

    def key(block: int) -> str:
        return rf"{prefix}\.{block}\..*"

    # PEFT takes the first pattern that matches a module: both patterns share their keys, so a
    # module's rank and alpha always come from the same block.
    rank_pattern = {key(block): structure.rank_of(block) for block in structure.lora_blocks}
    alpha_pattern = {key(block): structure.alpha_of(block) for block in structure.lora_blocks}
    top = structure.num_blocks - 1
    config = LoraConfig(
        r=structure.rank_of(top),
        lora_alpha=structure.alpha_of(top),  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=structure.dropout,
        target_modules=block_linear_targets(parts),
        layers_to_transform=list(structure.lora_blocks),
        layers_pattern=parts.block_prefix.rsplit(".", 1)[-1],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=False,  # the scale is alpha_l / r_l, not alpha_l / sqrt(r_l)
        modules_to_save=list(parts.head_names) or None,
    )
    return get_peft_model(model, config)


# --------------------------------------------------------------------------- named LoRA state


def _block_regex(parts: ModelParts) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(parts.block_prefix)}\.(\d+)\.")


def block_of(name: str, parts: ModelParts) -> int | None:
    """Block index of a parameter name, or None outside the blocks (e.g. the head)."""
    match = _block_regex(parts).search(name)
    return int(match.group(1)) if match else None


def is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def is_head_param(name: str) -> bool:
    return ".modules_to_save." in name


def federated_param_names(model: nn.Module) -> list[str]:
    """Names of everything the federation exchanges: all LoRA tensors and the head."""
    return [n for n, _ in model.named_parameters() if is_lora_param(n) or is_head_param(n)]


def get_state(model: nn.Module, names: list[str] | None = None) -> State:
    """A detached host copy of the named federated tensors (all of them by default)."""
    params = dict(model.named_parameters())
    wanted = federated_param_names(model) if names is None else names
    return {n: params[n].detach().to("cpu", copy=True) for n in wanted}


def load_state(model: nn.Module, state: State) -> None:
    """Copy tensors into the model's parameters in place (the base model stays shared).

    A LoRA tensor cut to a device's rank (see :func:`rank_slice`) fills the first components of
    its parameter and zeroes the rest, as the device trains that truncation anyway.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target: torch.Tensor = params[name]
            axis = rank_axis(name)
            if axis is not None and value.shape != target.shape:
                target.zero_()
                target = target.narrow(axis, 0, value.shape[axis])
            target.copy_(value)


def span_param_names(model: nn.Module, parts: ModelParts, blocks: Collection[int]) -> list[str]:
    """The LoRA tensors of ``blocks`` plus the head: what a device trains and uploads."""
    names = []
    for name in federated_param_names(model):
        block = block_of(name, parts)
        if is_head_param(name) or (block is not None and block in blocks):
            names.append(name)
    return names


def set_trainable(model: nn.Module, names: list[str]) -> None:
    """Exactly ``names`` require grad; everything else (base, LoRA below the span) is frozen."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


# --------------------------------------------------------------------------- rank truncation


def rank_axis(name: str) -> int | None:
    """The rank axis of a LoRA tensor: rows of ``A`` (r × in), columns of ``B`` (out × r)."""
    if ".lora_A." in name:
        return 0
    if ".lora_B." in name:
        return 1
    return None


def check_rank(rank: int) -> None:
    if rank < 1:
        raise FedquadError(f"device rank {rank} is not allowed: use a rank of 1 or more")


def rank_slice(name: str, tensor: torch.Tensor, rank: int | None) -> torch.Tensor:
    """The first ``rank`` components of a LoRA tensor; all of it if its rank is ≤ ``rank``."""
    axis = rank_axis(name)
    if axis is None or rank is None or tensor.shape[axis] <= rank:
        return tensor
    return tensor.narrow(axis, 0, rank)


def truncate_rank(model: nn.Module, names: list[str], rank: int) -> list[RemovableHandle]:
    """Turn the LoRA tensors ``names`` into their rank-``rank`` truncation and keep them so.

    Components ``rank:`` are zeroed in both factors, which already gives them zero gradients;
    the gradients are masked as well so that they stay exactly zero whatever else touches them.
    The module's scale stays PEFT's ``alpha_l / r_l`` of the global rank (see the module
    docstring). Remove the returned hooks when the device is done.
    """
    check_rank(rank)
    params = dict(model.named_parameters())
    handles = []
    for name in names:
        axis = rank_axis(name)
        param = params[name]
        if axis is None or param.shape[axis] <= rank:
            continue
        keep = torch.zeros(param.shape[axis], dtype=param.dtype, device=param.device)
        keep[:rank] = 1
        keep = keep[:, None] if axis == 0 else keep[None, :]
        with torch.no_grad():
            param.mul_(keep)
        handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
    return handles
