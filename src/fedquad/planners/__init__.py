"""Planners: pure functions from a round's devices to each device's config (docs/methods.md §4)."""

from fedquad.planners.base import Plan, PlanContext
from fedquad.planners.methods import METHODS, fallback_config, global_ranks, method, plan_round
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
