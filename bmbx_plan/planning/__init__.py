"""Trajectory planning: parameters, distance maps, candidate search and the checker."""

from bmbx_plan.planning.constraints import ConstraintResult
from bmbx_plan.planning.parameters import (
    DEFAULT_MARGINS_MM,
    NEEDLES,
    Needle,
    PlanningParameters,
    Side,
)
from bmbx_plan.planning.planner import Planner, check_trajectory, plan_trajectory
from bmbx_plan.planning.results import Alternative, CrossCheck, Metrics, Plan, PlanSet, Trajectory

__all__ = [
    "DEFAULT_MARGINS_MM",
    "NEEDLES",
    "Alternative",
    "ConstraintResult",
    "CrossCheck",
    "Metrics",
    "Needle",
    "Plan",
    "PlanSet",
    "Planner",
    "PlanningParameters",
    "Side",
    "Trajectory",
    "check_trajectory",
    "plan_trajectory",
]
