"""LEGEND's rank distribution over the top ``D`` blocks (docs/methods.md §4.2)."""

from __future__ import annotations

from fedquad.errors import FedquadError


def rank_distribution(total: int, depth: int, kind: str = "halving") -> list[int]:
    """Ranks from the output (``[r_{L-1}, r_{L-2}, …]``) summing to ``total``, non-increasing.

    ``halving``: slot 1 gets ``⌊R/2⌋``, each next slot half of the rest, the last the remainder
    (``R=192, D=6 → 96, 48, 24, 12, 6, 6``); ``uniform``: equal shares; ``linear``: shares
    proportional to ``D, D-1, …, 1``. Every rank is at least 1, so ``R ≥ D`` is required.
    """
    if depth < 1:
        raise FedquadError(f"LEGEND depth = {depth} is not allowed: use >= 1")
    if total < depth:
        raise FedquadError(
            f"rank total R = {total} is not allowed with depth {depth}: use R >= {depth}"
        )
    if kind == "halving":
        ranks, rest = [], total
        for slot in range(depth - 1):
            # at least 1 for this slot and for each slot still to come
            share = max(1, min(rest // 2, rest - (depth - 1 - slot)))
            ranks.append(share)
            rest -= share
        ranks.append(rest)
    elif kind == "uniform":
        ranks = [total // depth + (1 if i < total % depth else 0) for i in range(depth)]
    elif kind == "linear":
        weights = list(range(depth, 0, -1))
        ranks = [max(1, total * w // sum(weights)) for w in weights]
        ranks[0] += total - sum(ranks)
    else:
        raise FedquadError(
            f"rank distribution {kind!r} is not allowed: use halving, uniform or linear"
        )
    # the remainder can exceed its neighbour (R=10, D=3: 5, 2, 3): move the excess up
    for i in range(len(ranks) - 1, 0, -1):
        if ranks[i] > ranks[i - 1]:
            excess = ranks[i] - ranks[i - 1]
            ranks[i] -= excess
            ranks[i - 1] += excess
    return sorted(ranks, reverse=True)
