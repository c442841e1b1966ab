"""Aggregation rules (docs/methods.md §5).

``perlayer`` (default): each tensor's weighted mean over the devices that trained it.
``zeropad`` (HetLoRA) and ``svd`` (FlexLoRA): for devices that train rank truncations of the
global LoRA. Every rule keeps the global per-block ranks ``r_l`` and PEFT's scale ``alpha / r_l``,
the scale the trainer uses on every device whatever its rank, so all updates share one unit.
"""

from fedquad.aggregate.hetrank import aggregate_svd, aggregate_zero_padded
from fedquad.aggregate.perlayer import Update, aggregate_per_layer
from fedquad.aggregate.robust import ROBUST, aggregate_robust
from fedquad.aggregate.rules import RULES, aggregate

__all__ = [
    "ROBUST",
    "RULES",
    "Update",
    "aggregate",
    "aggregate_per_layer",
    "aggregate_robust",
    "aggregate_svd",
    "aggregate_zero_padded",
]
