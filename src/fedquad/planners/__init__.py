"""Planners: pure functions from the round's devices to each device's config (METHODS.md §4)."""

from fedquad.planners.base import Plan, PlanContext, plan_round

__all__ = ["Plan", "PlanContext", "plan_round"]
