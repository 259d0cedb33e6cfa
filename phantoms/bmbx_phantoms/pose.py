"""Pose and deform a pelvis shape: rotation, per-side scale, posterior wing thinning."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from bmbx_phantoms.atlas import PelvisShape, transformed
from bmbx_plan.mesh import Mesh

__all__ = ["pose_shape", "rotation_matrix", "thin_posterior_wing"]

# The thinned region: full effect within the inner radius of the PSIS, fading to none at
# the outer radius (about the posterior half of the wing the planner samples).
_WING_INNER_MM, _WING_OUTER_MM = 70.0, 100.0
# The auricular surface stays put (the SI joint must stay closed): no thinning within the
# first distance of the sacrum, full thinning beyond the second.
_SACRUM_KEEP_MM, _SACRUM_FREE_MM = 6.0, 16.0
# The greater sciatic notch stays put too: the bone around its apex is no wing but the
# thick body of the ilium above the notch.
_NOTCH_KEEP_MM, _NOTCH_FREE_MM = 15.0, 30.0
# The opposite table is searched along the inward normal within this radius of the line,
# and no farther than the thickest part of the posterior wing: a vertex on the bone's edge
# (the crest, the spine of the PSIS) looks along the wing's plane, and what it meets
# there, up to 150 mm away, is the far edge, not a table.
_OPPOSITE_RADIUS_MM = 3.0
_MAX_THICKNESS_MM = 30.0


def rotation_matrix(*, yaw_deg: float, roll_deg: float, pitch_deg: float) -> NDArray[np.float64]:
    """3x3 rotation: pitch about L-R (x), then roll about A-P (y), then yaw about S-I (z)."""
    a, b, c = np.radians([pitch_deg, roll_deg, yaw_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx)


def _about(matrix: NDArray[np.float64], centre: NDArray[np.float64]) -> NDArray[np.float64]:
    """4x4 affine applying the 3x3 ``matrix`` about ``centre``."""
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = centre - matrix @ centre
    return out


def thin_posterior_wing(
    hip: Mesh,
    psis_lps_mm: NDArray[np.float64],
    scale: float,
    *,
    sacrum: Mesh,
    notch_lps_mm: NDArray[np.float64],
) -> Mesh:
    """Scale the thickness of the iliac wing around the PSIS by ``scale``.

    Each vertex near the PSIS looks along its inward normal for the opposite table and
    moves toward the midpoint between the two, so the local thickness ``t`` becomes
    ``scale * t`` while the mid-surface of the wing stays where it was. The auricular
    surface next to the sacrum is kept; the table opposite it moves the whole way. The
    bone around the apex of the greater sciatic notch (``notch_lps_mm``) is kept.
    """
    if scale == 1.0:
        return hip
    verts = hip.vertices_lps_mm
    normals = hip.vertex_normals()
    weight = np.clip(
        (_WING_OUTER_MM - np.linalg.norm(verts - psis_lps_mm, axis=1))
        / (_WING_OUTER_MM - _WING_INNER_MM),
        0.0,
        1.0,
    )
    gap, _ = cKDTree(sacrum.vertices_lps_mm).query(verts)
    weight *= np.clip((gap - _SACRUM_KEEP_MM) / (_SACRUM_FREE_MM - _SACRUM_KEEP_MM), 0.0, 1.0)
    notch = np.linalg.norm(verts - notch_lps_mm, axis=1)
    weight *= np.clip((notch - _NOTCH_KEEP_MM) / (_NOTCH_FREE_MM - _NOTCH_KEEP_MM), 0.0, 1.0)
    new = verts.copy()
    for idx in np.nonzero(weight > 0)[0]:
        inward = -normals[idx]
        rel = verts - verts[idx]
        along = rel @ inward
        perp = np.linalg.norm(rel - along[:, None] * inward, axis=1)
        facing = normals @ inward > 0.3  # the opposite table faces the other way
        candidates = np.nonzero(
            (along > 0.5) & (along < _MAX_THICKNESS_MM) & (perp < _OPPOSITE_RADIUS_MM) & facing
        )[0]
        if candidates.size == 0:
            continue
        opposite = candidates[np.argmin(along[candidates])]
        thickness = float(along[opposite])
        # Both tables move halfway; where the opposite one is pinned this one moves alone.
        share = 1.0 - 0.5 * weight[opposite]
        new[idx] = verts[idx] + (1.0 - scale) * weight[idx] * share * thickness * inward
    return hip.with_vertices(new)


def pose_shape(
    shape: PelvisShape,
    *,
    marks: dict[str, NDArray[np.float64]],
    yaw_deg: float = 0.0,
    roll_deg: float = 0.0,
    pitch_deg: float = 0.0,
    hip_scale: tuple[float, float] = (1.0, 1.0),
    wing_thickness_scale: tuple[float, float] = (1.0, 1.0),
) -> PelvisShape:
    """Apply wing thinning, per-side scale and a rotation about the pelvis centroid.

    ``marks`` are the landmarks of ``shape`` before posing (:func:`bmbx_phantoms.atlas.
    landmarks`): each side's PSIS anchors its thinned region, its sciatic notch is kept.
    """
    hips = []
    sacrum_tree = cKDTree(shape.sacrum.vertices_lps_mm)
    for side, hip, size, thick in zip(
        ("left", "right"),
        (shape.left_hip, shape.right_hip),
        hip_scale,
        wing_thickness_scale,
        strict=True,
    ):
        hip = thin_posterior_wing(
            hip,
            marks[f"psis_{side}"],
            thick,
            sacrum=shape.sacrum,
            notch_lps_mm=marks[f"sciatic_notch_apex_{side}"],
        )
        if size != 1.0:
            # Scale about the auricular surface so the SI joint stays closed.
            gap, _ = sacrum_tree.query(hip.vertices_lps_mm)
            centre = hip.vertices_lps_mm[np.argsort(gap)[:50]].mean(axis=0)
            hip = hip.transformed(_about(np.eye(3) * size, centre))
        hips.append(hip)
    posed = PelvisShape(hips[0], hips[1], shape.sacrum)
    if yaw_deg or roll_deg or pitch_deg:
        centre = posed.all_vertices_lps_mm().mean(axis=0)
        rot = rotation_matrix(yaw_deg=yaw_deg, roll_deg=roll_deg, pitch_deg=pitch_deg)
        posed = transformed(posed, _about(rot, centre))
    return posed
