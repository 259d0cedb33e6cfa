"""Candidate trajectories: cortex entries on the posterior iliac surface around the PSIS
times a cone of directions along the wing."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.mesh import mesh_from_mask
from bmbx_plan.planning.fields import SideFields
from bmbx_plan.planning.parameters import PlanningParameters

__all__ = ["direction_grid", "directions_from_angles", "entry_points"]

FloatArray = NDArray[np.float64]

#: Spacing of cortex entries (mm) and of directions (deg) on the search grid; the best
#: candidate is then refined below both.
ENTRY_SPACING_MM = 1.25
AXIAL_STEP_DEG = 3.0
CRANIOCAUDAL_STEP_DEG = 5.0
IN_PLANE_STEP_DEG = 1.5


def directions_from_angles(
    axial_deg: NDArray[np.floating], craniocaudal_deg: NDArray[np.floating], lateral_sign: float
) -> FloatArray:
    """Unit directions (N, 3) pointing anteriorly, ``axial_deg`` toward the lateral side
    and ``craniocaudal_deg`` cranially (the inverse of
    :func:`bmbx_plan.geometry.axial_and_craniocaudal_angles_deg`)."""
    a = np.radians(np.asarray(axial_deg, float))
    c = np.radians(np.asarray(craniocaudal_deg, float))
    return np.stack(
        [lateral_sign * np.sin(a) * np.cos(c), -np.cos(a) * np.cos(c), np.sin(c)], axis=-1
    )


def direction_grid(fields: SideFields, parameters: PlanningParameters) -> FloatArray:
    """The search cone: 0 deg (straight anterior) to ``max_axial_angle_deg`` laterally,
    within the cranio-caudal limit."""
    axial = np.arange(0.0, parameters.max_axial_angle_deg + 1e-6, AXIAL_STEP_DEG)
    limit = parameters.max_craniocaudal_limit_deg
    step = IN_PLANE_STEP_DEG if parameters.in_plane_only else CRANIOCAUDAL_STEP_DEG
    half = np.arange(0.0, limit + 1e-6, step)
    cranio = np.unique(np.concatenate([-half, half]))
    a, c = np.meshgrid(axial, cranio, indexing="ij")
    return directions_from_angles(a.ravel(), c.ravel(), fields.side.lateral_sign)


def entry_points(
    fields: SideFields,
    parameters: PlanningParameters,
    *,
    spacing_mm: float | None = ENTRY_SPACING_MM,
) -> tuple[FloatArray, FloatArray]:
    """Points on the posterior surface of the ilium within the search radius of the PSIS.

    Returns
    -------
    points : (M, 3) ndarray
        On the ilium surface (marching cubes of the planning grid), LPS mm.
    normals : (M, 3) ndarray
        Outward unit normals; only posterior-facing surface is kept.
    spacing_mm : float or None
        Thin the points to about one per this distance (None: every surface vertex).
    """
    grid = fields.grid
    psis = fields.landmarks_lps_mm["psis"]
    radius = parameters.entry_search_radius_mm
    reach = radius + 3.0 * fields.spacing_mm
    centres = [grid.lps_coordinate(axis) for axis in range(3)]
    near = sum((c - v) ** 2 for c, v in zip(centres, psis, strict=True)) <= reach**2
    ilium = (fields.entry_depth_mm > 0) & near  # the bone as the needle meets it
    if not ilium.any():
        return np.zeros((0, 3)), np.zeros((0, 3))
    points = mesh_from_mask(ilium, grid).vertices_lps_mm
    # the sphere that cut the mask leaves an artificial surface at its rim
    points = points[np.linalg.norm(points - psis, axis=1) <= radius]
    normals: FloatArray = fields.normals_at(points.astype(np.float32)).astype(np.float64)
    keep = normals[:, 1] > 0.0  # posterior-facing: reachable from the back
    points = np.asarray(points[keep], np.float64)
    normals = np.asarray(normals[keep], np.float64)
    if spacing_mm is not None and len(points):
        _, first = np.unique(
            np.rint(points / spacing_mm).astype(np.int64), axis=0, return_index=True
        )
        points, normals = points[np.sort(first)], normals[np.sort(first)]
    return points, normals
