"""Rank-heterogeneous aggregation: zero-padded mean (HetLoRA), SVD of the mean product (FlexLoRA).

A device of rank ``r_i`` uploads the truncation of the global LoRA it trained: the first ``r_i``
rows of each ``A`` (``r × in``) and columns of each ``B`` (``out × r``). Both rules keep the global
per-block ranks ``r_l`` and PEFT's scale ``alpha / r_l``: every device ran its truncation with that
same scale (:mod:`fedquad.models.lora`), so updates of different ranks are in the same units and
are averaged as they are. Tensors outside LoRA (the head) are averaged per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedquad.aggregate.perlayer import (
    State,
    Update,
    aggregate_per_layer,
    check_known,
    update_weight,
)
from fedquad.errors import FedquadError

# PEFT's parameter names: ``<module>.lora_A.<adapter>.weight`` and ``<module>.lora_B.…``
_LORA_A, _LORA_B = ".lora_A.", ".lora_B."

Factors = tuple[torch.Tensor, torch.Tensor]
"""One LoRA module's ``(B, A)``."""


def aggregate_zero_padded(
    global_state: State, updates: Sequence[Update], weighting: str = "samples"
) -> State:
    """HetLoRA (Cho et al., EMNLP 2024): zero-pad each truncated tensor, then the per-layer mean.

    Each LoRA tensor is averaged over the devices that trained it, the components beyond a
    device's rank counting as zeros; a tensor nobody trained keeps its value, and so do the
    components beyond every rank trained this round (as a layer nobody trained does): averaging
    them to zero would zero both factors of those components, and a component with both factors
    zero gets no gradient again, so a round without a top-rank device would lose them for good.
    """
    padded = [
        Update(
            {name: _padded(name, value, global_state) for name, value in u.tensors.items()},
            u.num_samples,
        )
        for u in updates
    ]
    new_state = aggregate_per_layer(global_state, padded, weighting)
    covered: dict[str, int] = {}
    for update in updates:
        for name, value in update.tensors.items():
            axis = _rank_axis(name)
            if axis is not None:
                covered[name] = max(covered.get(name, 0), value.shape[axis])
    for name, rank in covered.items():
        axis = _rank_axis(name)
        assert axis is not None
        old = global_state[name]
        if rank < old.shape[axis]:
            rest = old.shape[axis] - rank
            new_state[name].narrow(axis, rank, rest).copy_(old.narrow(axis, rank, rest))
    return new_state


def aggregate_svd(
    global_state: State, updates: Sequence[Update], weighting: str = "samples"
) -> State:
    """FlexLoRA (Bai et al., NeurIPS 2024): per LoRA module, the SVD of the mean product ``B·A``.

    The weighted mean of the devices' products ``B_i A_i`` (over the devices that trained the
    module) is factorised back to the global rank ``r`` by truncated SVD, the singular values
    split evenly: ``B = U_r √S_r``, ``A = √S_r V_rᵀ``. The first ``r_i`` components are then the
    best rank-``r_i`` approximation, which is what a device of rank ``r_i`` receives. A module
    nobody trained keeps its values. Arithmetic in float64, results in the global dtype.
    """
    others = [
        Update({n: t for n, t in u.tensors.items() if _rank_axis(n) is None}, u.num_samples)
        for u in updates
    ]
    new_state = aggregate_per_layer(global_state, others, weighting)
    terms: dict[str, list[tuple[float, Factors]]] = {}
    for update in updates:
        w = update_weight(update, weighting)
        for a_name, factors in _modules(update.tensors, global_state).items():
            terms.setdefault(a_name, []).append((w, factors))
    for a_name, module_terms in terms.items():
        total = sum(w for w, _ in module_terms)
        if total <= 0:
            continue
        b_name = _partner(a_name)
        b, a = _refactorised(module_terms, total, rank=global_state[a_name].shape[0])
        new_state[b_name] = b.to(global_state[b_name].dtype)
        new_state[a_name] = a.to(global_state[a_name].dtype)
    return new_state


def _rank_axis(name: str) -> int | None:
    if _LORA_A in name:
        return 0
    if _LORA_B in name:
        return 1
    return None


def _partner(name: str) -> str:
    if _LORA_A in name:
        return name.replace(_LORA_A, _LORA_B, 1)
    return name.replace(_LORA_B, _LORA_A, 1)


def _checked(name: str, value: torch.Tensor, global_state: State) -> torch.Tensor:
    """The update tensor, after checking it is the global one or its rank truncation."""
    old = check_known(name, global_state)
    axis = _rank_axis(name)
    if axis is None:
        return value  # per-layer checks full tensors
    allowed = list(old.shape)
    if value.dim() == old.dim():
        allowed[axis] = value.shape[axis]
    if list(value.shape) != allowed or value.shape[axis] > old.shape[axis]:
        raise FedquadError(
            f"update tensor '{name}' has shape {tuple(value.shape)}: it must be the global "
            f"{tuple(old.shape)} or its truncation along the rank axis {axis}"
        )
    return value


def _padded(name: str, value: torch.Tensor, global_state: State) -> torch.Tensor:
    value = _checked(name, value, global_state)
    old = global_state[name]
    axis = _rank_axis(name)
    if axis is None or value.shape == old.shape:
        return value
    out = torch.zeros(old.shape, dtype=value.dtype, device=value.device)
    out.narrow(axis, 0, value.shape[axis]).copy_(value)
    return out


def _modules(tensors: State, global_state: State) -> dict[str, Factors]:
    """The update's LoRA modules, by their ``A`` name: ``(B, A)`` of one rank each."""
    modules = {}
    for name, value in tensors.items():
        axis = _rank_axis(name)
        if axis is None:
            continue
        _checked(name, value, global_state)
        partner = _partner(name)
        if partner not in tensors:
            raise FedquadError(
                f"update carries '{name}' without '{partner}': the svd rule needs both factors"
            )
        if axis == 0:
            b = _checked(partner, tensors[partner], global_state)
            if b.shape[1] != value.shape[0]:
                raise FedquadError(
                    f"update tensor '{name}' has rank {value.shape[0]} but its B has "
                    f"{b.shape[1]}: send both factors at the same rank"
                )
            modules[name] = (b, value)
    return modules


def _refactorised(terms: list[tuple[float, Factors]], total: float, rank: int) -> Factors:
    """``(B, A)`` of rank ``rank`` from the truncated SVD of ``Σ (w/total) B_i A_i``."""
    left = torch.cat([b.to(torch.float64) * (w / total) for w, (b, _) in terms], dim=1)
    right = torch.cat([a.to(torch.float64) for _, (_, a) in terms], dim=0)
    u, s, vh = _svd_of_product(left, right)
    kept = min(rank, s.numel())
    root = s[:kept].sqrt()
    b = left.new_zeros(left.shape[0], rank)
    a = right.new_zeros(rank, right.shape[1])
    b[:, :kept] = u[:, :kept] * root
    a[:kept] = root[:, None] * vh[:kept]
    return b, a


def _svd_of_product(
    left: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ``left @ right`` without forming it: the product has rank ≤ Σ r_i.

    With ``left = Q₁R₁`` and ``rightᵀ = Q₂R₂``, ``left @ right = Q₁ (R₁R₂ᵀ) Q₂ᵀ``, so the SVD of
    the small core gives the product's exactly, at a cost linear in ``out`` and ``in``.
    """
    q1, r1 = torch.linalg.qr(left)
    q2, r2 = torch.linalg.qr(right.T)
    u, s, vh = torch.linalg.svd(r1 @ r2.T, full_matrices=False)
    return q1 @ u, s, vh @ q2.T
