"""The aggregation rule by name, as the federation config gives it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedquad.aggregate.hetrank import aggregate_svd, aggregate_zero_padded
from fedquad.aggregate.perlayer import State, Update, aggregate_per_layer
from fedquad.errors import FedquadError
from fedquad.methods_registry import Aggregation

Rule = Callable[[State, Sequence[Update], str], State]

RULES: dict[Aggregation, Rule] = {
    "perlayer": aggregate_per_layer,
    "zeropad": aggregate_zero_padded,
    "svd": aggregate_svd,
}


def aggregate(
    rule: str, global_state: State, updates: Sequence[Update], weighting: str = "samples"
) -> State:
    """The new global state by the named rule (``perlayer``, ``zeropad`` or ``svd``)."""
    if rule not in RULES:
        raise FedquadError(f"aggregation rule '{rule}' is unknown: use one of {', '.join(RULES)}")
    return RULES[rule](global_state, updates, weighting)
