"""Proximal femurs: the acetabulum fitted on a hip-bone mesh and an analytic femur in it.

The acetabulum is found geometrically, so it works on any hip mesh (atlas cases, shape
model samples, posed shapes), not only on meshes in atlas correspondence:

1. Every hip vertex within :data:`_SEARCH_MM` of the AIIS votes for the centres of the
   spheres it could lie on, ``v + r n`` for its outward normal ``n`` and each radius ``r``
   of a plausible cup. On a concave spherical cup the outward normals point at the centre,
   so the cup's votes pile up at one point while those of other concave parts (iliac
   fossa, sciatic notch, obturator rim) spread over lines or circles.
2. From the densest vote, a sphere is fitted by least squares to the vertices facing it
   (normal toward the centre) within a band around the radius, and the fit is iterated.
3. The fit is validated (radius, cup coverage, residual, position below the AIIS and on
   its own side) and a :class:`AcetabulumError` is raised otherwise.

The femur (head, neck, greater trochanter, shaft) is a union of spheres and tapered
capsules with fixed adult proportions scaled by the head radius, oriented in the scanner
frame (the legs lie straight on the table whatever the pelvic tilt):

* neck-shaft angle 130 deg, anatomical shaft axis 7 deg from vertical (distal end
  medial), so the neck descends about 47 deg below the horizontal from the head;
* femoral anteversion 12 deg: the head and neck point anteriorly, so from the head the
  neck runs lateral, inferior and slightly *posterior* (+y in LPS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_phantoms.grid import SceneGrid, bbox_slices
from bmbx_plan.mesh import Mesh

__all__ = [
    "AcetabulumError",
    "ProximalFemur",
    "acetabulum",
    "carve_joint_space",
    "femur_masks",
    "proximal_femur",
]

Mask = NDArray[np.bool_]
Point = NDArray[np.float64]

# Plausible cup radii for the vote (mm); adults are 20-30 mm, the band leaves room for
# small and large shapes of the model.
_VOTE_RADII_MM = np.arange(16.0, 36.0, 1.0)
_VOTE_BIN_MM = 3.0
# The cup centre is ~55 mm from the AIIS and the cup ~25 mm deep around it.
_SEARCH_MM = 100.0
# Vertices taken as the cup: facing the centre within this angle, within the band of
# the radius (the acetabular fossa, a few mm deeper than the lunate surface, drops out).
_FACING_COS = float(np.cos(np.radians(35.0)))
_BAND_MM = 4.0
_FIT_ITERATIONS = 20
# Validation limits.
_RADIUS_RANGE_MM = (16.0, 34.0)
_MIN_CUP_VERTICES = 40
_MAX_RESIDUAL_MM = 2.5
_AIIS_DISTANCE_MM = (25.0, 90.0)


class AcetabulumError(ValueError):
    """The acetabulum could not be found on a hip mesh (the message says why)."""


def _sphere_fit(points: Point) -> tuple[Point, float]:
    """Least-squares sphere through ``points`` (P, 3): (centre (3,), radius) in mm.

    The algebraic form ``|p|^2 = 2 c.p + (r^2 - |c|^2)`` is linear in its unknowns.
    """
    a = np.column_stack([2.0 * points, np.ones(len(points))])
    b = np.einsum("ij,ij->i", points, points)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 0.0)))
    return centre, radius


def _vote_peak(vertices: Point, normals: Point) -> tuple[Point, float]:
    """Densest point of the sphere-centre votes ``v + r n`` (mm), and the median radius
    of the votes that make it up (the starting radius of the fit)."""
    votes = (vertices[None, :, :] + _VOTE_RADII_MM[:, None, None] * normals[None]).reshape(-1, 3)
    lo = votes.min(axis=0)
    bins = np.floor((votes - lo) / _VOTE_BIN_MM).astype(np.int64)
    counts = np.zeros(tuple(bins.max(axis=0) + 1), np.float64)
    np.add.at(counts, tuple(bins.T), 1.0)
    # A peak split over neighbouring bins must still win: sum over 3x3x3 bins.
    density = ndimage.uniform_filter(counts, size=3, mode="constant")
    peak = np.array(np.unravel_index(int(np.argmax(density)), density.shape))
    near = np.all(np.abs(bins - peak) <= 1, axis=1)
    radii = np.repeat(_VOTE_RADII_MM, len(vertices))
    return np.asarray(votes[near].mean(axis=0), dtype=np.float64), float(np.median(radii[near]))


def _cup(vertices: Point, normals: Point, centre: Point, radius: float) -> NDArray[np.bool_]:
    """Vertices on the cup of the sphere (centre, radius): facing it, within the band."""
    to_centre = centre - vertices
    dist = np.linalg.norm(to_centre, axis=1)
    facing = np.einsum("ij,ij->i", normals, to_centre) > _FACING_COS * dist
    return np.asarray(facing & (np.abs(dist - radius) <= _BAND_MM))


def acetabulum(hip: Mesh, *, aiis_lps_mm: Point, side: str) -> tuple[Point, float]:
    """Centre and radius of the acetabular cup of one hip bone.

    Parameters
    ----------
    hip : Mesh
        Closed hip-bone surface, LPS mm, outward-facing triangles (either winding is
        handled), in any pose close to supine (within a few tens of degrees).
    aiis_lps_mm : (3,) ndarray, keyword-only
        Anterior inferior iliac spine of this hip (see :func:`bmbx_phantoms.atlas.landmarks`);
        only the region within 100 mm of it is searched.
    side : {"left", "right"}, keyword-only
        The side of ``hip``; the cup must open toward it (+x for left, -x for right).

    Returns
    -------
    centre_lps_mm : (3,) ndarray of float64
        Centre of the best-fit sphere of the cup, LPS mm.
    radius_mm : float
        Its radius, mm.

    Raises
    ------
    AcetabulumError
        No plausible cup: radius outside 16-34 mm, fewer than 40 cup vertices, a ragged
        fit (RMS residual above 2.5 mm), a centre not 25-90 mm from and below the AIIS, or
        a cup opening toward the wrong side.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    aiis = np.asarray(aiis_lps_mm, dtype=np.float64).reshape(3)
    normals = hip.vertex_normals()
    near = np.linalg.norm(hip.vertices_lps_mm - aiis, axis=1) <= _SEARCH_MM
    verts, normals = hip.vertices_lps_mm[near], normals[near]
    if len(verts) < _MIN_CUP_VERTICES:
        raise AcetabulumError(f"{side} hip: only {len(verts)} vertices near the AIIS")
    centre, radius = _vote_peak(verts, normals)
    cup = np.zeros(len(verts), bool)
    for _ in range(_FIT_ITERATIONS):
        new_cup = _cup(verts, normals, centre, radius)
        if new_cup.sum() < _MIN_CUP_VERTICES:
            break
        centre, radius = _sphere_fit(verts[new_cup])
        if np.array_equal(new_cup, cup):
            break
        cup = new_cup
    _validate(verts[cup], normals[cup], centre, radius, aiis=aiis, side=side)
    return centre, radius


def _validate(
    cup: Point, normals: Point, centre: Point, radius: float, *, aiis: Point, side: str
) -> None:
    """Raise :class:`AcetabulumError` unless the fitted cup is a plausible acetabulum."""
    where = f"{side} acetabulum (centre {np.round(centre, 1).tolist()} mm, radius {radius:.1f} mm)"
    if len(cup) < _MIN_CUP_VERTICES:
        raise AcetabulumError(f"{where}: only {len(cup)} vertices on the cup")
    if not _RADIUS_RANGE_MM[0] <= radius <= _RADIUS_RANGE_MM[1]:
        raise AcetabulumError(f"{where}: radius outside {_RADIUS_RANGE_MM} mm")
    rms = float(np.sqrt(np.mean((np.linalg.norm(cup - centre, axis=1) - radius) ** 2)))
    if rms > _MAX_RESIDUAL_MM:
        raise AcetabulumError(f"{where}: the cup is not spherical (RMS residual {rms:.1f} mm)")
    offset = centre - aiis
    distance = float(np.linalg.norm(offset))
    if not _AIIS_DISTANCE_MM[0] <= distance <= _AIIS_DISTANCE_MM[1] or offset[2] >= 0:
        raise AcetabulumError(
            f"{where}: centre not 25-90 mm below the AIIS (offset {np.round(offset, 1)} mm)"
        )
    # The outward normals of a cup point into its cavity, hence on average out of it.
    opening = normals.mean(axis=0)
    lateral = 1.0 if side == "left" else -1.0
    if opening[0] * lateral <= 0:
        raise AcetabulumError(f"{where}: the cup does not open toward the {side}")


# ------------------------------------------------------------------ femur geometry


@dataclass(frozen=True)
class ProximalFemur:
    """Analytic proximal femur of one side, LPS mm.

    A union of a head sphere, tapered capsules (``(start, end, start radius, end
    radius)``: every point within the linearly interpolated radius of the segment) and
    spheres (``(centre, radius)``). The shaft capsule ends far below any scan.

    Attributes
    ----------
    side : str
        ``"left"`` or ``"right"``.
    head_centre_lps_mm : (3,) ndarray
        Centre of the femoral head (the acetabulum's centre).
    head_radius_mm : float
        Radius of the head (the acetabulum's radius minus the joint space).
    capsules : tuple of (ndarray, ndarray, float, float)
        Neck, metaphysis and shaft.
    spheres : tuple of (ndarray, float)
        Head, greater and lesser trochanters.
    """

    side: str
    head_centre_lps_mm: Point
    head_radius_mm: float
    capsules: tuple[tuple[Point, Point, float, float], ...]
    spheres: tuple[tuple[Point, float], ...]

    def bounds_lps_mm(self) -> Point:
        """``[[min xyz], [max xyz]]`` (2, 3) of all parts, mm (the shaft included)."""
        lows = [c - r for c, r in self.spheres]
        highs = [c + r for c, r in self.spheres]
        for a, b, ra, rb in self.capsules:
            lows += [a - ra, b - rb]
            highs += [a + ra, b + rb]
        return np.stack([np.min(lows, axis=0), np.max(highs, axis=0)])

    def contains(self, x: Point, y: Point, z: Point) -> Mask:
        """Whether the points ``(x, y, z)`` (broadcastable arrays, mm) are inside."""
        inside = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        for centre, radius in self.spheres:
            inside |= (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= (
                radius**2
            )
        for a, b, ra, rb in self.capsules:
            axis = b - a
            length2 = float(axis @ axis)
            t = ((x - a[0]) * axis[0] + (y - a[1]) * axis[1] + (z - a[2]) * axis[2]) / length2
            t = np.clip(t, 0.0, 1.0)
            d2 = (
                (x - a[0] - t * axis[0]) ** 2
                + (y - a[1] - t * axis[1]) ** 2
                + (z - a[2] - t * axis[2]) ** 2
            )
            inside |= d2 <= (ra + t * (rb - ra)) ** 2
        return inside


def _unit(v: Point) -> Point:
    return np.asarray(v / np.linalg.norm(v), dtype=np.float64)


def proximal_femur(
    head_centre_lps_mm: Point,
    acetabulum_radius_mm: float,
    *,
    side: str,
    joint_space_mm: float = 2.5,
    neck_shaft_angle_deg: float = 130.0,
    anteversion_deg: float = 12.0,
    shaft_tilt_deg: float = 7.0,
    shaft_length_mm: float = 400.0,
) -> ProximalFemur:
    """An adult proximal femur sitting in the acetabulum.

    Parameters
    ----------
    head_centre_lps_mm : (3,) array_like
        Centre of the head, LPS mm (the fitted acetabulum centre).
    acetabulum_radius_mm : float
        Radius of the cup, mm; the head is smaller by ``joint_space_mm``.
    side : {"left", "right"}, keyword-only
    joint_space_mm : float, keyword-only
        Cartilage space between head and cup, mm.
    neck_shaft_angle_deg, anteversion_deg : float, keyword-only
        Angle between neck and shaft axes, and forward rotation of the neck from the
        coronal plane, degrees.
    shaft_tilt_deg : float, keyword-only
        Angle of the anatomical shaft axis from vertical (distal end medial), degrees.
    shaft_length_mm : float, keyword-only
        Length of the shaft below the neck, mm (long enough to leave any pelvic scan).

    Returns
    -------
    ProximalFemur
        Part sizes scale with the head radius ``R``: neck radius 0.65 R (0.8 R at its
        base) and length 2.3 R to the shaft axis, greater trochanter radius 0.75 R with
        its top about level with the head centre, shaft radius 0.6 R.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    head_radius = float(acetabulum_radius_mm) - joint_space_mm
    if head_radius <= 5.0:
        raise ValueError(f"femoral head radius {head_radius:.1f} mm is too small")
    r = head_radius
    centre = np.asarray(head_centre_lps_mm, dtype=np.float64).reshape(3)
    lateral = np.array([1.0 if side == "left" else -1.0, 0.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    posterior = np.array([0.0, 1.0, 0.0])
    tilt = np.radians(shaft_tilt_deg)
    down = _unit(-np.cos(tilt) * up - np.sin(tilt) * lateral)  # distal end medial
    # From the head the neck descends by (neck-shaft angle - 90 deg) plus the shaft tilt;
    # anteversion turns the head forward, so the neck runs backward from the head.
    drop = np.radians(neck_shaft_angle_deg - 90.0 + shaft_tilt_deg)
    turn = np.radians(anteversion_deg)
    horizontal = np.cos(turn) * lateral + np.sin(turn) * posterior
    neck = _unit(np.cos(drop) * horizontal - np.sin(drop) * up)
    base = centre + 2.3 * r * neck  # on the shaft axis
    shaft_top = base - 0.5 * r * down
    metaphysis_end = base + 2.5 * r * down
    greater = base - 0.9 * r * down + 0.45 * r * lateral + 0.15 * r * posterior
    lesser = base + 1.2 * r * down - 0.5 * r * lateral + 0.3 * r * posterior
    return ProximalFemur(
        side=side,
        head_centre_lps_mm=centre,
        head_radius_mm=head_radius,
        capsules=(
            (centre, base, 0.65 * r, 0.8 * r),
            (shaft_top, metaphysis_end, 0.85 * r, 0.6 * r),
            (metaphysis_end, metaphysis_end + shaft_length_mm * down, 0.6 * r, 0.6 * r),
        ),
        spheres=((centre, r), (greater, 0.75 * r), (lesser, 0.35 * r)),
    )


# ------------------------------------------------------------------ voxelisation


def _reach_mm(spacing_mm: NDArray[np.float64], gap_mm: float) -> float:
    """Distance between femur and hip voxel centres up to which femur voxels go: it
    leaves a cleft of ``gap_mm`` between the voxel faces and no neighbour (not even a
    corner neighbour) on the other bone, however coarse or anisotropic the voxels."""
    return max(gap_mm + float(spacing_mm.min()), float(np.linalg.norm(spacing_mm)))


def carve_joint_space(
    femur: Mask, hip: Mask, spacing_mm: NDArray[np.float64], *, gap_mm: float
) -> Mask:
    """``femur`` without the voxels too close to ``hip``: a cleft of at least ``gap_mm``.

    Parameters
    ----------
    femur, hip : (K, J, I) ndarray of bool
        Masks on one (local) grid. Hip voxels outside the arrays are not seen: pad them
        by :func:`_reach_mm` beyond the femur.
    spacing_mm : (3,) ndarray
        Voxel size along (k, j, i), mm.
    gap_mm : float, keyword-only
        Smallest distance between the voxel faces of the two bones, mm.

    Returns
    -------
    (K, J, I) ndarray of bool
        A voxel is kept when its centre is farther than ``gap_mm`` plus the smallest
        voxel size from every hip voxel centre, and farther than the voxel diagonal (so
        none of its 26 neighbours is hip bone).
    """
    reach_mm = _reach_mm(spacing_mm, gap_mm)
    pad = int(np.ceil(reach_mm / spacing_mm.min())) + 1
    # Only where both bones' padded boxes overlap can a femur voxel be near the hip.
    box = tuple(
        slice(max(f.start, h.start), min(f.stop, h.stop))
        for f, h in zip(bbox_slices(femur, pad), bbox_slices(hip, pad), strict=True)
    )
    out = femur.copy()
    if any(s.stop <= s.start for s in box) or not hip[box].any():
        return out
    distance = ndimage.distance_transform_edt(~hip[box], sampling=spacing_mm)
    out[box] &= distance > reach_mm
    return out


def femur_masks(
    grid: SceneGrid,
    femur: ProximalFemur,
    *,
    hip: Mask,
    others: Mask,
    cortex_thickness_mm: float,
    gap_mm: float = 2.0,
) -> tuple[Mask, Mask]:
    """Voxelise one proximal femur with its joint cleft and cortical shell.

    All work happens in the femur's padded bounding box (clipped to the grid).

    Parameters
    ----------
    grid : SceneGrid
    femur : ProximalFemur
    hip : (K, J, I) ndarray of bool, keyword-only
        The hip bone of the same side: the femur keeps ``gap_mm`` away from it.
    others : (K, J, I) ndarray of bool, keyword-only
        Voxels the femur must not take (other bones); no cleft is kept to them.
    cortex_thickness_mm : float, keyword-only
        Cortical shell thickness, mm.
    gap_mm : float, keyword-only
        Smallest cleft between femoral head and acetabulum, mm.

    Returns
    -------
    bone, cortex : (K, J, I) ndarray of bool
        The whole femur and its cortical shell (a subset of ``bone``); the shell stays
        open where the shaft leaves the grid.
    """
    from bmbx_phantoms.bones import cortical_shell  # bones imports this module

    spacing = grid.spacing_kji_mm
    # Room for the cleft search and for the shell's closing voxels around the femur.
    margin_mm = _reach_mm(spacing, gap_mm) + 3.0 * float(spacing.max())
    lo, hi = femur.bounds_lps_mm()
    box = grid.box_slices(lo - margin_mm, hi + margin_mm)
    bone = np.zeros(grid.shape, bool)
    cortex = np.zeros(grid.shape, bool)
    if any(s.stop <= s.start for s in box):
        return bone, cortex
    z, y, x = grid.coordinates(box)
    local = femur.contains(x, y, z) & ~others[box]
    local = carve_joint_space(local, hip[box], spacing, gap_mm=gap_mm)
    bone[box] = local
    # The box is padded beyond the femur except where the grid clips it, so the box's
    # edge only cuts the femur at the grid's edge.
    cortex[box] = cortical_shell(local, spacing, cortex_thickness_mm, open_at_grid_edge=True)
    return bone, cortex
