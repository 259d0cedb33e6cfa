"""bmbx_plan: plan CT-guided bone marrow biopsies of the posterior iliac wing.

Research and pre-planning software, not a medical device.

All physical coordinates are DICOM patient coordinates, LPS in millimetres.
"""

from bmbx_plan.anatomy import Anatomy, NoPelvisError, segment_pelvis
from bmbx_plan.io import InputError, load_ct
from bmbx_plan.planning import (
    ConstraintResult,
    Metrics,
    Plan,
    Planner,
    PlanningParameters,
    PlanSet,
    Side,
    Trajectory,
    check_trajectory,
    plan_trajectory,
)
from bmbx_plan.volume import ScanInfo, Volume

__all__ = [
    "Anatomy",
    "ConstraintResult",
    "InputError",
    "Metrics",
    "NoPelvisError",
    "Plan",
    "PlanSet",
    "Planner",
    "PlanningParameters",
    "ScanInfo",
    "Side",
    "Trajectory",
    "Volume",
    "__version__",
    "check_trajectory",
    "load_ct",
    "plan_trajectory",
    "segment_pelvis",
]

__version__ = "0.1.0.dev0"
