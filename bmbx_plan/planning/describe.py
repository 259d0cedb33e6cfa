"""Full metrics of one evaluated trajectory (the numbers a plan reports)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.geometry import sample_segment
from bmbx_plan.planning.evaluate import CORE_STEP_MM, PATH_STEP_MM, Evaluation
from bmbx_plan.planning.fields import SideFields
from bmbx_plan.planning.parameters import PlanningParameters
from bmbx_plan.planning.results import Metrics, Trajectory

__all__ = ["describe", "trajectory_of"]

FloatArray = NDArray[np.float64]

# Rays from the core toward each table are followed this far (mm).
_TABLE_RAY_MM = 60.0


def trajectory_of(evaluation: Evaluation, parameters: PlanningParameters) -> Trajectory:
    """The four points of row 0 of ``evaluation``."""
    c, d = evaluation.cortex_entry[0], evaluation.direction[0]
    seat = parameters.seat_depth_mm
    return Trajectory(
        skin_entry_lps_mm=c - evaluation.skin_to_cortex_mm[0] * d,
        cortex_entry_lps_mm=c,
        core_start_lps_mm=c + seat * d,
        core_end_lps_mm=c + (seat + evaluation.core_length_mm[0]) * d,
    )


def _table_clearances(
    fields: SideFields, trajectory: Trajectory, radius_mm: float
) -> dict[str, float]:
    """Needle surface to the inner and outer table, along rays from the core axis that
    run perpendicular to the needle in the axial plane."""
    d = trajectory.direction_lps
    across = np.cross(d, [0.0, 0.0, 1.0])
    if np.linalg.norm(across) < 1e-6:  # a vertical needle has no axial cross-direction
        return {}
    # toward the gluteal (outer) table: lateral and posterior of a needle along the wing
    outer = -fields.side.lateral_sign * across / np.linalg.norm(across)
    core = sample_segment(
        trajectory.core_start_lps_mm, trajectory.core_end_lps_mm, step_mm=CORE_STEP_MM
    )
    steps = np.arange(0.0, _TABLE_RAY_MM, 0.5 * CORE_STEP_MM)
    out = {}
    for name, sign in (("outer_table", 1.0), ("inner_table", -1.0)):
        rays = core[:, None, :] + sign * steps[None, :, None] * outer
        flat, on_grid = fields.lookup(rays.astype(np.float32))
        inside = (fields.ilium_depth_mm.reshape(-1)[flat] > 0) & on_grid
        leaves = ~inside
        exit_step = np.where(leaves.any(axis=1), np.argmax(leaves, axis=1), len(steps) - 1)
        out[name] = float(steps[exit_step].min() - 0.5 * CORE_STEP_MM - radius_mm)
    return out


def describe(
    evaluation: Evaluation, parameters: PlanningParameters, fields: SideFields
) -> tuple[Trajectory, Metrics]:
    """Trajectory and metrics of row 0 of ``evaluation``."""
    e = evaluation.take(slice(0, 1))
    trajectory = trajectory_of(e, parameters)
    r = parameters.needle.radius_mm
    needle = np.concatenate(
        [
            sample_segment(
                trajectory.skin_entry_lps_mm, trajectory.cortex_entry_lps_mm, step_mm=PATH_STEP_MM
            ),
            sample_segment(
                trajectory.cortex_entry_lps_mm, trajectory.core_end_lps_mm, step_mm=CORE_STEP_MM
            ),
        ]
    )
    needle = needle[np.all(np.isfinite(needle), axis=1)]
    clearances = {
        "sciatic_notch": float(e.notch_distance_mm[0]),
        "si_joint": float(e.si_distance_mm[0]),
    }
    clearances.update(_table_clearances(fields, trajectory, r))
    half = 0.5 * fields.spacing_mm
    for name, tree in fields.structure_trees.items():
        if name in ("sciatic_notch", "si_joint") or not len(needle):
            continue
        distance, _ = tree.query(needle, k=1)
        clearances[name] = float(distance.min() - half - r)
    skin = trajectory.skin_entry_lps_mm
    metrics = Metrics(
        skin_to_cortex_mm=float(e.skin_to_cortex_mm[0]),
        core_length_mm=float(e.core_length_mm[0]),
        total_depth_mm=float(e.total_depth_mm(parameters)[0]),
        axial_angle_deg=float(e.axial_deg[0]),
        craniocaudal_angle_deg=float(e.craniocaudal_deg[0]),
        cortex_incidence_deg=float(e.incidence_deg[0]),
        core_min_cortex_clearance_mm=float(e.core_clearance_mm[0]),
        core_marrow_fraction=float(e.core_marrow_fraction[0]),
        clearances_mm=clearances,
        table_position_mm=float(skin[2]),
        skin_entry_from_midline_mm=float(
            fields.side.lateral_sign * (skin[0] - fields.midline_x_mm)
        ),
    )
    return trajectory, metrics
