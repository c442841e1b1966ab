"""Planners: pure functions from a round's devices to each device's config (docs/methods.md §4)."""

from fedquad.methods_registry import METHODS, method
from fedquad.planners.base import Plan, PlanContext
from fedquad.planners.methods import fallback_config, global_ranks, plan_round
from fedquad.planners.ranks import rank_distribution

__all__ = [
    "METHODS",
    "Plan",
    "PlanContext",
    "fallback_config",
    "global_ranks",
    "method",
    "plan_round",
    "rank_distribution",
]
