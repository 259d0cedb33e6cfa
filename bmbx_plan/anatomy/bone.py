"""Bone from its cortical shell: threshold the dense shell, then fill what it encloses.

Marrow is not defined by HU: fatty marrow of older adults sits near 0 HU, like muscle.
A single bone threshold therefore leaves holes; the dense shell is closed over small
gaps and everything it encloses in 3D becomes bone. Contrast-filled vessels, as dense as
marrow, are told from it by their shape, uniformity and surroundings and left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_plan.anatomy._grid import (
    ball,
    bounding_box,
    closing,
    components,
    enclosed,
    holes_per_slice,
    in_slabs,
)
from bmbx_plan.distance import distance_mm
from bmbx_plan.volume import Volume

__all__ = [
    "DEFAULT_BONE_THRESHOLD_HU",
    "bounding_box",
    "contrast_lumina",
    "cortical_band",
    "partial_volume_rim",
    "segment_bone",
]

Mask = NDArray[np.bool_]

#: Cortical bone and dense trabecular bone lie above this; soft tissue and fatty marrow
#: below. Partial volume in thin iliac wings keeps the cortex above it at 1-3 mm voxels.
DEFAULT_BONE_THRESHOLD_HU = 130.0
# Pieces of dense tissue smaller than this are calcifications, contrast or noise.
_MIN_PIECE_ML = 0.5
# Gaps in the shell up to about this size are bridged before filling.
_CLOSING_MM = 1.5
# Half-width of the region around the midline where sagittal holes are filled (sacrum).
_SACRUM_HALF_WIDTH_MM = 55.0
# Largest hole inside one axial slice that is taken as marrow: more than a sacral body
# (about 45 x 30 mm), far less than the pelvic inlet.
_MAX_HOLE_MM2 = 2500.0
# Contrast-filled vessels (150-450 HU in venous and arterial phase) are as dense as marrow
# and join the bone they lie against. Cortex is denser than this, except where a thin
# cortex blurs into its neighbours ...
_LUMEN_MAX_HU = 500.0
# ... and a lumen is thicker than this on every side (radius, mm: the smallest iliac
# branches near bone are 2.5 mm), where that blur is thinner.
_LUMEN_RADIUS_MM = 2.0
# They are looked for on a grid about this coarse (blocks of voxels of a finer CT) ...
_LUMEN_GRID_MM = 1.5
# ... where a lumen meets soft tissue on most of its surface (phantoms: 0.71-0.91), a
# piece of marrow or trabecular bone of that density on less (phantoms: at most 0.24;
# real bone without soft tissue around it: up to 0.53) ...
_LUMEN_OUTSIDE_SHARE = 0.6
# ... and is as uniform as the noise (standard deviation of the blocks: phantoms 14-23 HU),
# where trabecular bone is not (real bone: 40-95 HU; phantom marrow has no trabecular
# texture, so only its surface tells it from a lumen).
_LUMEN_MAX_SD_HU = 35.0


def _ball(radius_vox: NDArray[np.float64]) -> Mask:
    """Ellipsoidal structuring element with the given radius (voxels) per axis."""
    r = np.maximum(np.floor(radius_vox).astype(int), 0)
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    dist = sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grid, radius_vox, strict=True))
    return np.asarray(dist <= 1.0)


def segment_bone(
    ct: Volume,
    *,
    body: Mask | None = None,
    bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU,
) -> Mask:
    """Bone (cortex and marrow) of a CT.

    Parameters
    ----------
    ct : Volume
        HU.
    body : (K, J, I) bool ndarray, optional
        Only bone inside the body is kept (the table's dense shell is not bone).
    bone_threshold_hu : float
        Shell threshold.

    Returns
    -------
    (K, J, I) bool ndarray
        Contrast-filled vessels that lie against the bone are not part of it
        (:func:`contrast_lumina`).
    """
    hu = np.asarray(ct.array)
    dense = hu >= bone_threshold_hu
    if body is not None:
        dense &= body
    if not dense.any():
        return dense
    bone = _fill_shell(dense, ct)
    lumina = contrast_lumina(hu, dense, bone, ct.spacing_mm)
    if lumina.any():
        bone = _fill_shell(dense & ~lumina, ct)
    return bone


def contrast_lumina(
    hu: NDArray[np.floating], dense: Mask, bone: Mask, spacing_mm: NDArray[np.float64]
) -> Mask:
    """Contrast-filled vessel lumina among the ``dense`` voxels (the shell threshold).

    A lumen is a uniform piece of marrow-like density (below :data:`_LUMEN_MAX_HU`),
    thicker than :data:`_LUMEN_RADIUS_MM` on every side, that meets what ``bone`` (the
    first fill) leaves outside on most of its surface; marrow and trabecular bone of
    that density are enclosed by cortex, and trabecular bone is not uniform. On a CT
    finer than :data:`_LUMEN_GRID_MM` the pieces are looked for on blocks of voxels.
    """
    lumina = np.zeros_like(dense)
    box = bounding_box(dense, 1)
    moderate = dense[box] & (hu[box] < _LUMEN_MAX_HU)
    step = np.maximum(np.rint(_LUMEN_GRID_MM / np.asarray(spacing_mm)), 1).astype(int)
    found = _lumen_pieces(
        _blocks(hu[box], step, np.mean),
        # a block is of marrow-like density only if all of it is: a thin cortex between
        # a vessel and the marrow still parts them
        _blocks(moderate, step, np.all),
        # and outside where any of it is: a lumen's blurred rim is dense, so part of
        # the first fill, and fills the blocks around it up to the soft tissue
        _blocks(~bone[box], step, np.any),
        spacing_mm * step,
    )
    if not found.any():
        return lumina
    # back on the CT's voxels, with the lumen's blurred rim: the voxels of marrow-like
    # density it reaches through such voxels (not through a cortex to the marrow behind)
    index = np.ix_(
        *(
            np.minimum(np.arange(n) // k, m - 1)
            for n, k, m in zip(moderate.shape, step, found.shape, strict=True)
        )
    )
    lumen = found[index] & moderate
    near = bounding_box(lumen, int(step.max()) + 1)
    lumina[box][near] = ndimage.binary_dilation(
        lumen[near], iterations=int(step.max()), mask=moderate[near]
    )
    return lumina


def _blocks(
    array: NDArray[Any], step: NDArray[np.int_], reduce: Callable[..., NDArray[Any]]
) -> NDArray[Any]:
    """``reduce`` over blocks of ``step`` voxels (the last incomplete blocks dropped)."""
    if (step == 1).all():
        return array
    counts = [n // k for n, k in zip(array.shape, step, strict=True)]
    whole = array[tuple(slice(0, c * k) for c, k in zip(counts, step, strict=True))]
    shape = [v for c, k in zip(counts, step, strict=True) for v in (c, int(k))]
    return np.asarray(reduce(whole.reshape(shape), axis=(1, 3, 5)))


def _lumen_pieces(
    hu: NDArray[np.floating], moderate: Mask, outside: Mask, spacing_mm: NDArray[np.float64]
) -> Mask:
    """The thick parts of ``moderate`` that are lumina (see :func:`contrast_lumina`)."""
    core = distance_mm(moderate, spacing_mm) > _LUMEN_RADIUS_MM
    if not core.any():
        return core
    thick = distance_mm(~core, spacing_mm) <= _LUMEN_RADIUS_MM
    pieces, count = components(thick)
    owner = pieces[thick]
    values = hu[thick].astype(np.float64)
    sizes = np.bincount(owner, minlength=count + 1)
    mean = np.bincount(owner, weights=values, minlength=count + 1) / np.maximum(sizes, 1)
    spread = np.bincount(owner, weights=(values - mean[owner]) ** 2, minlength=count + 1)
    sd = np.sqrt(spread / np.maximum(sizes, 1))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    candidates = (sizes * voxel_ml >= _MIN_PIECE_ML) & (sd <= _LUMEN_MAX_SD_HU)
    candidates[0] = False
    found = np.zeros(count + 1, bool)
    for label, where in enumerate(ndimage.find_objects(pieces), start=1):
        if where is None or not candidates[label]:
            continue
        grown = tuple(
            slice(max(w.start - 1, 0), min(w.stop + 1, n))
            for w, n in zip(where, pieces.shape, strict=True)
        )
        piece = pieces[grown] == label
        ring = ndimage.binary_dilation(piece) & ~piece
        found[label] = outside[grown][ring].mean() >= _LUMEN_OUTSIDE_SHARE
    return found[pieces]


def _fill_shell(dense: Mask, ct: Volume) -> Mask:
    """Bone from its dense shell: the shell, closed over small gaps, with what it
    encloses (see :func:`segment_bone`)."""
    box = bounding_box(dense, 3)
    shell = dense[box]
    radius = np.maximum(_CLOSING_MM / ct.spacing_mm, 1.0)
    closed = closing(shell, _ball(radius))
    cavity = enclosed(closed)
    # Shells with openings (sacral canal and foramina, nutrient canals, thin places
    # below the threshold) leak in 3D; holes inside single axial slices still show the
    # marrow. Small ones only: the pelvic ring encloses the pelvic cavity in some slices.
    axial, _ = ct.axis_of(2)
    in_plane = np.delete(ct.spacing_mm, axial)
    cavity |= holes_per_slice(closed, axial, max_pixels=_MAX_HOLE_MM2 / float(np.prod(in_plane)))
    # The sacrum's marrow leaks through its foramina and a thin anterior cortex; in
    # sagittal slices its body is still enclosed. Only the posterior half near the
    # midline: further out and anterior, sagittal slices enclose the obturator foramen.
    cavity |= _sagittal_holes(closed, ct, box)
    # The closing seals the shell, but it also bridges narrow clefts between neighbouring
    # bones (SI joints, hip joints). Keep what the closing added only where it is
    # connected to an enclosed cavity (the inner side of the shell), not the bridges
    # outside the cortex.
    added = (closed & ~shell) | cavity
    pieces, _ = components(added)
    inner = np.unique(pieces[cavity])
    keep = np.zeros(int(pieces.max()) + 1, bool)
    keep[inner[inner > 0]] = True
    filled = shell | keep[pieces]
    # Small pieces (noise, calcifications, contrast) are dropped only now: a thin cortex
    # at the threshold breaks into small pieces that still enclose their marrow slices.
    # Pieces touching along an edge or a corner are one piece: a thin oblique cortex is
    # often connected only diagonally.
    labels, count = components(filled, corners=True)
    sizes = np.bincount(labels[filled], minlength=count + 1)
    big = sizes >= _MIN_PIECE_ML * 1000.0 / ct.voxel_volume_mm3
    big[0] = False
    bone = np.zeros_like(dense)
    bone[box] = big[labels]
    return bone


def _sagittal_holes(closed: Mask, ct: Volume, box: tuple[slice, ...]) -> Mask:
    """Small holes of the sagittal slices of ``closed`` (the voxels of ``box``) in the
    posterior half of the bone near its midline; only the slices that reach that region
    are searched."""
    sagittal, _ = ct.axis_of(0)
    max_pixels = _MAX_HOLE_MM2 / float(np.prod(np.delete(ct.spacing_mm, sagittal)))
    region = _posterior_midline(closed, ct, box)
    others = tuple(a for a in range(3) if a != sagittal)
    used = np.flatnonzero(np.broadcast_to(region, closed.shape).any(axis=others))
    out = np.zeros_like(closed)
    if len(used) == 0:
        return out
    span: list[slice] = [slice(None)] * 3
    span[sagittal] = slice(int(used[0]), int(used[-1]) + 1)
    part = tuple(span)
    out[part] = holes_per_slice(closed[part], sagittal, max_pixels=max_pixels)
    out[part] &= np.broadcast_to(region, closed.shape)[part]
    return out


def _posterior_midline(shell: Mask, ct: Volume, box: tuple[slice, ...]) -> Mask:
    """Voxels of ``box`` in the posterior half of the bone and within reach of its
    mid-sagittal plane (where the sacrum is)."""
    origin = np.array([s.start for s in box])
    index = np.argwhere(shell)
    sample = index[:: max(len(index) // 20000, 1)] + origin
    points = ct.index_to_lps(sample)
    mid_x, mid_y = float(np.median(points[:, 0])), float(np.median(points[:, 1]))
    x, y = ct.lps_coordinate(0, box), ct.lps_coordinate(1, box)
    return np.asarray((np.abs(x - mid_x) < _SACRUM_HALF_WIDTH_MM) & (y > mid_y))


#: Denser than any marrow (red marrow reaches about 350 HU, sclerotic foci somewhat more):
#: bone this dense deep inside a wing is cortex, e.g. where a thin wing's two tables meet.
DEEP_CORTEX_HU = 700.0


def cortical_band(
    bone: Mask,
    ct: Volume,
    *,
    cortex_threshold_hu: float = 400.0,
    max_depth_mm: float = 3.0,
    deep_cortex_hu: float = DEEP_CORTEX_HU,
) -> Mask:
    """The cortical shell of ``bone``: its outermost voxel layer, the dense voxels
    within ``max_depth_mm`` of its surface, and cortical-density voxels at any depth.

    Returns
    -------
    (K, J, I) bool ndarray, a subset of ``bone``.
    """
    band = np.zeros_like(bone)
    if not bone.any():
        return band
    structure = ball(max_depth_mm, ct.spacing_mm)
    # One background voxel around the bone, and more than the ball's reach in all.
    box = bounding_box(bone, max(structure.shape) // 2 + 1)
    sub = bone[box]
    outer = sub & ~ndimage.binary_erosion(sub, border_value=0)
    # Within max_depth_mm of the surface = not in the erosion by that ball (the scan's
    # edge is no surface: border_value=1, as in a distance transform).
    deep = in_slabs(
        lambda part: ndimage.binary_erosion(part, structure=structure, border_value=1),
        sub,
        structure.shape[0] // 2,
    )
    shallow = sub & ~deep
    hu = np.asarray(ct.array)[box]
    shallow &= hu >= cortex_threshold_hu
    band[box] = outer | shallow | (sub & (hu >= deep_cortex_hu))
    return band


# The rim's reference values are looked for among the neighbours within this many voxels:
# the densest bone among the nearest (the cortex the rim is blurred from) ...
_PEAK_REACH = 1
# ... and the soft tissue a little further out (beyond most of the blur).
_SOFT_REACH = 2
# Outer voxels are judged in chunks of this many (each gathers (2 * 2 + 1)^3 neighbours).
_RIM_CHUNK = 1 << 16


def partial_volume_rim(bone: Mask, ct: Volume, *, threshold_hu: float) -> Mask:
    """The voxels of ``bone``'s outermost layer whose centres lie outside its edge.

    A CT blurs a bone's edge over its point spread and, on thick slices, over the
    slice: the soft tissue beside an oblique cortex rises above a fixed shell threshold,
    and a bone taken at that threshold grows by up to a voxel layer (phantoms on 2.5 mm
    thick slices: 9 % of the hip bone's volume, the tables about 2 mm further out). A
    voxel's centre lies inside a blurred edge where its value is above half-way between
    the two sides. So an outer voxel of the dense shell (at least ``threshold_hu``) is
    in the rim when its HU is below the mean of the densest bone voxel among its 26
    neighbours (the cortex it is blurred from) and the soft tissue (below
    ``threshold_hu``, not ``bone``) within two voxels of it. Filled-in marrow below
    the threshold is never in the rim, nor is a voxel with no soft tissue near it.

    Returns
    -------
    (K, J, I) bool ndarray, a subset of ``bone``.
    """
    rim = np.zeros_like(bone)
    if not bone.any():
        return rim
    box = bounding_box(bone, _SOFT_REACH)
    pad = _SOFT_REACH
    # padded beyond the scan's edge, where nothing is known: no neighbour and no surface
    sub = np.pad(bone[box], pad)
    beyond = np.ones(sub.shape, bool)
    beyond[(slice(pad, -pad),) * 3] = False
    hu = np.pad(np.asarray(ct.array)[box].astype(np.float32), pad)
    soft = ~sub & ~beyond & (hu < threshold_hu)
    outer = sub & ~ndimage.binary_erosion(sub | beyond) & (hu >= threshold_hu)
    at = np.flatnonzero(outer)
    near, around = (_offsets(sub.shape, reach) for reach in (_PEAK_REACH, _SOFT_REACH))
    flat_bone, flat_hu, flat_soft = sub.reshape(-1), hu.reshape(-1), soft.reshape(-1)
    found = np.zeros(at.shape, bool)
    for start in range(0, len(at), _RIM_CHUNK):
        voxels = at[start : start + _RIM_CHUNK, None]
        neighbours = voxels + near
        peak = np.where(flat_bone[neighbours], flat_hu[neighbours], -np.inf).max(axis=1)
        others = voxels + around
        weights = flat_soft[others]
        count = weights.sum(axis=1)
        total = np.where(weights, flat_hu[others], 0.0).sum(axis=1)
        level = 0.5 * (peak + total / np.maximum(count, 1))
        found[start : start + _RIM_CHUNK] = (count > 0) & (flat_hu[voxels[:, 0]] < level)
    inner = np.zeros_like(sub)
    inner.reshape(-1)[at[found]] = True
    rim[box] = inner[(slice(pad, -pad),) * 3]
    return rim


def _offsets(shape: tuple[int, ...], reach: int) -> NDArray[np.intp]:
    """Flat-index offsets of the voxels within ``reach`` along every axis of an array of
    ``shape`` (C order)."""
    steps = np.arange(-reach, reach + 1)
    k, j, i = np.meshgrid(steps, steps, steps, indexing="ij")
    return np.asarray((k * shape[1] + j) * shape[2] + i, np.intp).reshape(1, -1)
