"""Split the bone of a pelvic CT into hip bones, sacrum, lumbar spine and femurs.

Left and right come from LPS (+x is the patient's left), never from array axes. Bones
touch where joints are narrow or partly fused; a marker-based watershed on the distance
to the bone surface cuts them at the narrowest neck between the markers, which is where
a joint is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.segmentation import watershed

from bmbx_plan.anatomy._grid import Box, ball, bounding_box, components, grown_box
from bmbx_plan.distance import distance_mm
from bmbx_plan.volume import Volume

__all__ = ["PelvisBones", "joint_clefts", "joint_sheets", "low_density_bone", "split_pelvis"]

Mask = NDArray[np.bool_]

# Pieces of bone smaller than this are fragments, osteophytes or calcifications.
_MIN_PIECE_ML = 2.0
# Half-width of the midline slab that seeds the sacrum and spine.
_MIDLINE_SLAB_MM = 12.0
# Bone this far from the midline seeds the hip bone of that side.
_LATERAL_SEED_MM = 65.0
# Low-density sheets up to twice this thick inside the filled bone are joint clefts.
_CLEFT_HALF_WIDTH_MM = 1.5
# A joint space has dense bone on both sides within this distance along one axis.
_SHEET_REACH_MM = 3.0
# A joint narrower than the scanner's blur (1-2 mm, or a 1 mm grid) stays above the
# threshold at its centre; it shows as a valley between two cortices within this distance
# along one axis ...
_VALLEY_REACH_MM = 2.0
# ... denser than any marrow (red marrow reaches about 350 HU) ...
_VALLEY_CORTEX_HU = 500.0
# ... and it is looked for in slabs of this many slices (the temporaries stay small).
_VALLEY_SLAB = 32
# A femur is a piece on one side whose top lies this far below the top of the hip bone.
_FEMUR_BELOW_CREST_MM = 60.0
# The femoral shaft: bone in the lowest slices of the scan, this far from the midline
# (lateral of the ischial tuberosities).
_SHAFT_SEED_MM = 10.0
_SHAFT_LATERAL_MM = 70.0


@dataclass(frozen=True, eq=False)
class PelvisBones:
    """Exclusive bone masks on the CT grid."""

    ilium_left: Mask
    ilium_right: Mask
    sacrum: Mask
    lumbar_spine: Mask
    femur_left: Mask
    femur_right: Mask
    midline_x_mm: float
    notes: tuple[str, ...]


def _drop_small(mask: Mask, min_voxels: float) -> Mask:
    labels, count = components(mask)
    if count == 0:
        return mask
    keep = np.bincount(labels[mask], minlength=count + 1) >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels])


def _components(mask: Mask) -> list[Mask]:
    labels, count = components(mask)
    return [labels == n for n in range(1, count + 1)]


def joint_clefts(
    bone: Mask, ct: Volume, *, bone_threshold_hu: float, low: Mask | None = None
) -> Mask:
    """Thin sheets of filled, low-density bone: joint clefts enclosed between two
    cortices (and the outer layer of marrow).

    These are the low-density voxels of ``bone`` (below the threshold, or a valley between
    two cortices that the blur lifts above it, see :func:`_low_density`) that lie within
    ``_CLEFT_HALF_WIDTH_MM`` of a voxel that is not, and always those next to one: on a
    grid coarser than the half-width a 2 mm cleft is one voxel between two cortices (a
    small erosion, see :func:`_cleft_structure`: a distance transform of the whole bone
    box would cost 20 times more).

    Parameters
    ----------
    bone : (K, J, I) bool ndarray
        Bone (cortex and marrow) on ``ct``'s grid.
    ct : Volume
        HU and geometry.
    bone_threshold_hu : float
        The shell threshold the bone mask was made with.
    low : (K, J, I) bool ndarray, optional
        :func:`low_density_bone` of ``bone``, when it is already at hand.

    Returns
    -------
    (K, J, I) bool ndarray, a subset of ``bone``.
    """
    out = np.zeros(bone.shape, bool)
    if not bone.any():
        return out
    structure = _cleft_structure(ct.spacing_mm)
    # Background beyond the bone's box must be seen: pad by more than the ball's reach.
    box = bounding_box(bone, max(structure.shape) // 2 + 1)
    sub = bone[box] & _low_density(ct, box, bone_threshold_hu) if low is None else low[box]
    # border_value=1: like the distance transform, the edge of the scan is no background.
    out[box] = sub & ~ndimage.binary_erosion(sub, structure=structure, border_value=1)
    return out


def _cleft_structure(spacing_mm: NDArray[np.float64]) -> Mask:
    """The erosion element of :func:`joint_clefts`: the ball of ``_CLEFT_HALF_WIDTH_MM``,
    stretched to the next voxel along the axes whose spacing exceeds it.

    A voxel next to the cortex is within half its size of it; the plain ball would hold
    only its centre on a 2 mm grid, and no cleft would ever be found there.
    """
    return ball(np.maximum(_CLEFT_HALF_WIDTH_MM, spacing_mm), spacing_mm)


def joint_sheets(
    bone: Mask,
    ct: Volume,
    *,
    bone_threshold_hu: float,
    box: Box | None = None,
    low: Mask | None = None,
) -> Mask:
    """Joint spaces: low-density voxels of ``bone`` (as in :func:`joint_clefts`) with
    dense bone on both sides along one grid axis within ``_SHEET_REACH_MM`` (the nearest
    whole number of voxels, at least one).

    Unlike :func:`joint_clefts` this leaves out the outer layer of thick marrow, which has
    cortex on one side only; marrow thinner than twice the reach (a thin wing) does count.

    Parameters
    ----------
    bone : (K, J, I) bool ndarray
        Bone (cortex and marrow) on ``ct``'s grid.
    ct : Volume
        HU and geometry.
    bone_threshold_hu : float
        The shell threshold the bone mask was made with.
    box : tuple of slice, optional
        Look only here (the whole grid by default).
    low : (K, J, I) bool ndarray, optional
        :func:`low_density_bone` of ``bone``, when it is already at hand.

    Returns
    -------
    (K, J, I) bool ndarray, a subset of ``bone`` inside ``box``.
    """
    out = np.zeros(bone.shape, bool)
    box = tuple(slice(0, n) for n in bone.shape) if box is None else box
    low = bone[box] & _low_density(ct, box, bone_threshold_hu) if low is None else low[box]
    if not low.any():
        return out
    dense = bone[box] & ~low
    sheet = np.zeros(low.shape, bool)
    for axis, spacing in enumerate(ct.spacing_mm):
        steps = max(1, int(_SHEET_REACH_MM / float(spacing) + 0.5))
        sheet |= _highest_within(dense, axis, steps, 1) & _highest_within(dense, axis, steps, -1)
    out[box] = low & sheet
    return out


def low_density_bone(bone: Mask, ct: Volume, *, bone_threshold_hu: float) -> Mask:
    """The voxels of ``bone`` that :func:`joint_clefts` and :func:`joint_sheets` treat as
    low-density (see :func:`_low_density`), on the whole grid: compute it once when both
    are needed."""
    out = np.zeros(bone.shape, bool)
    if bone.any():
        box = bounding_box(bone, 0)
        out[box] = bone[box] & _low_density(ct, box, bone_threshold_hu)
    return out


def _valley_steps(spacing_mm: NDArray[np.float64]) -> list[int]:
    """:data:`_VALLEY_REACH_MM` in whole voxels along each axis, at least one."""
    return [max(1, int(_VALLEY_REACH_MM / float(s) + 0.5)) for s in spacing_mm]


def _low_density(ct: Volume, box: Box, bone_threshold_hu: float) -> Mask:
    """Voxels of ``box`` below the threshold, or darker than half-way between it and the
    cortex on both sides of them along one grid axis: a joint cleft whose centre the blur
    lifts above the threshold (see :data:`_VALLEY_REACH_MM`). The sides are looked for on
    the whole CT, beyond the box too."""
    ct_hu = np.asarray(ct.array)
    out = ct_hu[box] < bone_threshold_hu
    steps = _valley_steps(ct.spacing_mm)
    # the box grown by the reach across the slabs, clipped to the CT
    grown, inner = grown_box(box, steps, ct_hu.shape)
    crop = inner[1:]
    for start in range(box[0].start, box[0].stop, _VALLEY_SLAB):
        stop = min(start + _VALLEY_SLAB, box[0].stop)
        # the slab and the slices within reach of it
        lo, hi = max(start - steps[0], 0), min(stop + steps[0], ct_hu.shape[0])
        slab = np.asarray(ct_hu[(slice(lo, hi), *grown[1:])], dtype=np.float32)
        valley = np.zeros(slab.shape, bool)
        for axis, reach in enumerate(steps):
            sides = np.minimum(
                _highest_within(slab, axis, reach, 1), _highest_within(slab, axis, reach, -1)
            )
            valley |= (sides >= _VALLEY_CORTEX_HU) & (slab < 0.5 * (sides + bone_threshold_hu))
        first = start - box[0].start
        out[first : first + stop - start] |= valley[(slice(start - lo, stop - lo), *crop)]
    return out


def _highest_within(values: NDArray, axis: int, steps: int, direction: int) -> NDArray:
    """The highest of ``values`` 1 to ``steps`` voxels from each voxel along ``axis`` in
    ``direction`` (+1: higher indices); the lowest value of the dtype (False, -inf) where
    nothing lies within the array."""
    lowest = False if values.dtype == bool else -np.inf
    out = np.full(values.shape, lowest, dtype=values.dtype)
    n = values.shape[axis]
    for step in range(1, min(steps, n - 1) + 1):
        near: list[slice] = [slice(None)] * values.ndim
        far: list[slice] = [slice(None)] * values.ndim
        near[axis], far[axis] = (slice(0, n - step), slice(step, n))[::direction]
        np.maximum(out[tuple(near)], values[tuple(far)], out=out[tuple(near)])
    return out


def split_pelvis(
    bone: Mask, ct: Volume, *, bone_threshold_hu: float, clefts: Mask | None = None
) -> PelvisBones:
    """Hip bones, sacrum, lumbar spine and femurs from a bone mask.

    Parameters
    ----------
    bone : (K, J, I) bool ndarray
        Bone (cortex and marrow) on ``ct``'s grid.
    ct : Volume
        HU and geometry (only the geometry when ``clefts`` is given).
    bone_threshold_hu : float
        The shell threshold the bone mask was made with; voxels of ``bone`` below it were
        filled in (marrow, or a joint cleft enclosed by two cortices).
    clefts : (K, J, I) bool ndarray, optional
        The :func:`joint_clefts` of ``bone``, when they come from elsewhere (e.g. from a
        finer grid, where 2 mm clefts are still visible); computed from ``ct`` if omitted.
    """
    notes: list[str] = []
    min_voxels = _MIN_PIECE_ML * 1000.0 / ct.voxel_volume_mm3
    bone = _drop_small(bone, min_voxels)
    if not bone.any():
        empty = np.zeros(ct.shape, bool)
        return PelvisBones(empty, empty, empty, empty, empty, empty, float("nan"), ("no bone",))
    if clefts is None:
        clefts = joint_clefts(bone, ct, bone_threshold_hu=bone_threshold_hu)
    box = bounding_box(bone, 2)
    sub = bone[box]
    x, y, z = (ct.lps_coordinate(axis, box) for axis in range(3))
    midline = float(np.median(np.broadcast_to(x, sub.shape)[sub]))
    dx = x - midline
    posterior = y > float(np.median(np.broadcast_to(y, sub.shape)[sub]))

    # Markers: a posterior midline column (sacrum, spine), and lateral bone on each side.
    markers = np.zeros(sub.shape, np.int32)
    markers[sub & (np.abs(dx) < _MIDLINE_SLAB_MM) & posterior] = 1
    markers[sub & (dx > _LATERAL_SEED_MM)] = 2
    markers[sub & (dx < -_LATERAL_SEED_MM)] = 3
    # Joint clefts do not count as depth, so the watershed line between the markers runs
    # through them.
    depth = distance_mm(sub & ~clefts[box], ct.spacing_mm)
    regions = watershed(-depth, markers, mask=sub)
    # Pieces no marker reached (separate fragments near the midline, e.g. a pubic
    # symphysis piece): by side.
    unreached = sub & (regions == 0)
    regions[unreached & (dx >= 0)] = 2
    regions[unreached & (dx < 0)] = 3

    sacrum, spine = _split_axial(regions == 1, regions, z, min_voxels, notes)
    parts = {"sacrum": sacrum, "lumbar_spine": spine}
    for value, side in ((2, "left"), (3, "right")):
        hip, femur = _split_side(regions == value, z, dx, -depth, min_voxels)
        parts[f"ilium_{side}"], parts[f"femur_{side}"] = hip, femur
        if not hip.any():
            notes.append(f"no {side} hip bone found")
    full = {}
    for name, part in parts.items():
        mask = np.zeros(ct.shape, bool)
        mask[box] = part
        full[name] = mask
    return PelvisBones(**full, midline_x_mm=midline, notes=tuple(notes))


def _split_axial(
    axial: Mask,
    regions: NDArray[np.int32],
    z: NDArray[np.float64],
    min_voxels: float,
    notes: list[str],
) -> tuple[Mask, Mask]:
    """The sacrum is the midline piece in widest contact with the hip bones; pieces above
    it are lumbar vertebrae (pieces below, the coccyx, stay with the sacrum)."""
    pieces = [p for p in _components(axial) if p.sum() >= min_voxels]
    if not pieces:
        notes.append("no sacrum found near the midline")
        return np.zeros_like(axial), np.zeros_like(axial)
    hips = ndimage.binary_dilation((regions == 2) | (regions == 3), iterations=3)
    contact = [int((p & hips).sum()) for p in pieces]
    best = int(np.argmax(contact))
    sacrum = pieces[best].copy()
    top = float(np.broadcast_to(z, axial.shape)[sacrum].max())
    spine = np.zeros_like(axial)
    for n, piece in enumerate(pieces):
        if n == best:
            continue
        centre_z = float(np.broadcast_to(z, axial.shape)[piece].mean())
        if centre_z > top - 10.0:
            spine |= piece
        else:
            sacrum |= piece
    return sacrum, spine


def _split_side(
    side: Mask,
    z: NDArray[np.float64],
    dx: NDArray[np.float64],
    elevation: NDArray[np.floating],
    min_voxels: float,
) -> tuple[Mask, Mask]:
    """Hip bone and femur of one side.

    The hip bone is the piece reaching highest. Where the femoral head touches the
    acetabulum (narrow joint, partial volume) the femur is cut off by a watershed from
    the femoral shaft (far lateral bone in the lowest slices) against the iliac wing.
    """
    pieces = [p for p in _components(side) if p.sum() >= min_voxels]
    if not pieces:
        return np.zeros_like(side), np.zeros_like(side)
    zz = np.broadcast_to(z, side.shape)
    tops = [float(zz[p].max()) for p in pieces]
    hip_index = int(np.argmax(tops))
    crest = tops[hip_index]
    hip = pieces[hip_index].copy()
    femur = np.zeros_like(side)
    for n, piece in enumerate(pieces):
        if n == hip_index:
            continue
        if tops[n] < crest - _FEMUR_BELOW_CREST_MM:
            femur |= piece
        else:
            hip |= piece
    bottom = float(zz[side].min())
    shaft = hip & (zz < bottom + _SHAFT_SEED_MM) & (np.abs(dx) > _SHAFT_LATERAL_MM)
    if not femur.any() and shaft.sum() >= 10:
        markers = np.zeros(side.shape, np.int32)
        markers[hip & (zz > crest - _FEMUR_BELOW_CREST_MM)] = 1
        markers[shaft] = 2
        regions = watershed(elevation, markers, mask=hip)
        femur = regions == 2
        hip = regions == 1
    return hip, femur
