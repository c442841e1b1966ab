"""Aggregation rules (METHODS.md §5)."""

from fedquad.aggregate.perlayer import Update, aggregate_per_layer

__all__ = ["Update", "aggregate_per_layer"]
