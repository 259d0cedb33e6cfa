"""The soft score that orders feasible trajectories, distinct alternatives and the
Pareto set.

The score is a weighted sum of terms, each scaled to [0, 1] (higher is better):

=================  ======  ==========================================================
term               weight  1 when
=================  ======  ==========================================================
core clearance     0.25    the core keeps 4 mm more than the cortex margin to the tables
SI joint           0.15    the needle keeps 20 mm more than its margin to the SI joint
sciatic notch      0.10    the needle in bone keeps 20 mm more than its margin to the notch
core length        0.15    the full planned core fits
depth              0.10    short skin-to-core-end depth (relative to the needle length)
incidence          0.05    the needle meets the cortex along its normal
in-plane           0.10    no cranio-caudal tilt
wing alignment     0.10    the needle runs along the wing (PSIS toward ASIS)
=================  ======  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.planning.evaluate import Evaluation
from bmbx_plan.planning.fields import SideFields
from bmbx_plan.planning.parameters import PlanningParameters

__all__ = ["SCORE_WEIGHTS", "distinct", "pareto_front", "score"]

FloatArray = NDArray[np.float64]

SCORE_WEIGHTS: dict[str, float] = {
    "core_clearance": 0.25,
    "si_joint": 0.15,
    "sciatic_notch": 0.10,
    "core_length": 0.15,
    "depth": 0.10,
    "incidence": 0.05,
    "in_plane": 0.10,
    "wing_alignment": 0.10,
}
# Clearance beyond the margin at which a term saturates (mm).
_CORE_SPARE_MM = 4.0
_FAR_SPARE_MM = 20.0
# Two alternatives are distinct when their cortex entries are this far apart or their
# directions differ by this much.
DISTINCT_ENTRY_MM = 8.0
DISTINCT_ANGLE_DEG = 10.0


def score(
    evaluation: Evaluation, parameters: PlanningParameters, fields: SideFields
) -> FloatArray:
    """The soft score of every trajectory (higher is better, at most 1)."""
    m = parameters.margins_mm
    e = evaluation
    depth = e.total_depth_mm(parameters)
    wing = fields.landmarks_lps_mm["asis"] - fields.landmarks_lps_mm["psis"]
    wing = wing / np.linalg.norm(wing)
    terms = {
        "core_clearance": (e.core_clearance_mm - m["cortex"]) / _CORE_SPARE_MM,
        "si_joint": (e.si_distance_mm - m["si_joint"]) / _FAR_SPARE_MM,
        "sciatic_notch": (e.notch_distance_mm - m["sciatic_notch"]) / _FAR_SPARE_MM,
        "core_length": e.core_length_mm / parameters.core_length_mm,
        "depth": 1.0 - np.nan_to_num(depth, nan=np.inf) / parameters.needle.usable_length_mm,
        "incidence": 1.0 - e.incidence_deg / parameters.max_incidence_deg,
        "in_plane": 1.0
        - np.abs(e.craniocaudal_deg) / max(parameters.max_craniocaudal_limit_deg, 1.0),
        "wing_alignment": e.direction @ wing,
    }
    total = np.zeros(e.count)
    for name, weight in SCORE_WEIGHTS.items():
        total += weight * np.clip(np.nan_to_num(terms[name], nan=0.0), 0.0, 1.0)
    return total


def distinct(
    evaluation: Evaluation,
    order: NDArray[np.intp],
    count: int,
    accept: Callable[[int], bool] | None = None,
) -> list[int]:
    """Up to ``count`` rows taken in ``order`` (best first), each distinct from all taken
    before (cortex entry or direction differs enough) and, if given, ``accept``-ed."""
    chosen: list[int] = []
    cos_limit = np.cos(np.radians(DISTINCT_ANGLE_DEG))
    for index in order:
        c, d = evaluation.cortex_entry[index], evaluation.direction[index]
        if all(
            np.linalg.norm(c - evaluation.cortex_entry[j]) >= DISTINCT_ENTRY_MM
            or float(d @ evaluation.direction[j]) <= cos_limit
            for j in chosen
        ) and (accept is None or accept(int(index))):
            chosen.append(int(index))
            if len(chosen) == count:
                break
    return chosen


def pareto_front(evaluation: Evaluation, parameters: PlanningParameters) -> NDArray[np.intp]:
    """Rows no other row beats on every objective: core clearance, SI joint and notch
    distances, core length (higher is better), depth, incidence and tilt (lower is
    better)."""
    e = evaluation
    objectives = np.stack(
        [
            e.core_clearance_mm,
            e.si_distance_mm,
            e.notch_distance_mm,
            e.core_length_mm,
            -e.total_depth_mm(parameters),
            -e.incidence_deg,
            -np.abs(e.craniocaudal_deg),
        ],
        axis=1,
    )
    objectives = np.nan_to_num(objectives, nan=-np.inf)
    keep = []
    for i in range(len(objectives)):
        row = objectives[i]
        dominated = np.all(objectives >= row, axis=1) & np.any(objectives > row, axis=1)
        if not dominated.any():
            keep.append(i)
    return np.array(keep, dtype=np.intp)
