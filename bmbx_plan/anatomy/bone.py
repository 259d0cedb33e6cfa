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
    Box,
    ball,
    bounding_box,
    closing,
    components,
    enclosed,
    grown_box,
    holes_per_slice,
    in_slabs,
)
from bmbx_plan.distance import distance_mm
from bmbx_plan.volume import Volume

__all__ = [
    "DEFAULT_BONE_THRESHOLD_HU",
    "bone_and_lumina",
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
# ... and is as uniform as the noise within its core (standard deviation of the blocks:
# phantoms 14-23 HU), where trabecular bone is not (real bone: 40-95 HU; phantom marrow
# has no trabecular texture, so only its surface tells it from a lumen).
_LUMEN_MAX_SD_HU = 35.0
# Pools of contrast denser than cortex can be (positive oral contrast in the bowel,
# 200-1500 HU; an excretory bladder, up to 2000 HU) are the same kind of piece among the
# voxels above this: a band overlapping the first, so that a pool whose noise straddles
# _LUMEN_MAX_HU lies whole in one of them. A cortex is too thin to be such a piece.
_POOL_MIN_HU = 400.0
# A pool's surface is judged beyond its blurred edge: up to this many voxels (of the
# search's grid) out from it, through dense voxels no denser than it.
_POOL_RIM_STEPS = 3
# ... and, on the CT's voxels, its edge and rim are the voxels within this of the soft
# tissue (mm; the edge the uniform test leaves out, one block, and the blur beyond).
_POOL_RIM_MM = 3.0
# Lumina change what the bone encloses, and loops of bowel against each other are seen
# only once their neighbours are gone: the search is repeated up to this many times.
_LUMEN_PASSES = 3


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
    """Bone (cortex and marrow) of a CT: the first of :func:`bone_and_lumina`."""
    return bone_and_lumina(ct, body=body, bone_threshold_hu=bone_threshold_hu)[0]


def bone_and_lumina(
    ct: Volume,
    *,
    body: Mask | None = None,
    bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU,
) -> tuple[Mask, Mask]:
    """Bone (cortex and marrow) of a CT, and the contrast-filled lumina left out of it.

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
    bone, lumina : (K, J, I) bool ndarrays
        Contrast-filled vessels, bowel and bladder (:func:`contrast_lumina`) are no bone;
        ``lumina`` holds them (empty on an unenhanced CT).
    """
    hu = np.asarray(ct.array)
    dense = hu >= bone_threshold_hu
    if body is not None:
        dense &= body
    lumina = np.zeros_like(dense)
    if not dense.any():
        return dense, lumina
    bone = _fill_shell(dense, ct)
    for _ in range(_LUMEN_PASSES):
        found = contrast_lumina(hu, dense & ~lumina, bone, ct.spacing_mm)
        if not found.any():
            break
        lumina |= found
        bone = _fill_shell(dense & ~lumina, ct)
    return bone, lumina & ~bone


def contrast_lumina(
    hu: NDArray[np.floating], dense: Mask, bone: Mask, spacing_mm: NDArray[np.float64]
) -> Mask:
    """Contrast-filled lumina among the ``dense`` voxels (the shell threshold): vessels,
    and bowel and bladder with contrast in them.

    A lumen is a uniform piece of marrow-like density (below :data:`_LUMEN_MAX_HU`), or
    of any density above :data:`_POOL_MIN_HU`, thicker than :data:`_LUMEN_RADIUS_MM` on
    every side, that meets what ``bone`` (the first fill) leaves outside on most of its
    surface; marrow and trabecular bone of that density are enclosed by cortex,
    trabecular bone is not uniform, and a cortex is not that thick. On a CT finer than
    :data:`_LUMEN_GRID_MM` the pieces are looked for on blocks of voxels.
    """
    lumina = np.zeros_like(dense)
    if not dense.any():
        return lumina
    box = bounding_box(dense, 1)
    step = np.maximum(np.rint(_LUMEN_GRID_MM / np.asarray(spacing_mm)), 1).astype(int)
    # the blocks the first fill leaves outside where any of their voxels is: a lumen's
    # blurred rim is dense, so part of the first fill, and fills the blocks around it up
    # to the soft tissue
    outside = _blocks(~bone[box], step, np.any)
    mean = _blocks(hu[box], step, np.mean)
    moderate = dense[box] & (hu[box] < _LUMEN_MAX_HU)
    pool = dense[box] & (hu[box] >= _POOL_MIN_HU)
    # a block is in a band only if all of it is: a thin cortex between a vessel and the
    # marrow still parts them
    blocks = [_blocks(moderate, step, np.all), _blocks(pool, step, np.all)]
    # and in the dense band only where its neighbourhood is uniform: a cortex (its blocks
    # between marrow and soft tissue) is not, nor the seam where a pool meets one
    blocks[1] &= _uniform(mean, blocks[1])
    # a vessel's rim is grown into through voxels of marrow-like density only (not
    # through a cortex to the marrow behind); a pool's rim spans every density between it
    # and the soft tissue
    dense_blocks = _blocks(dense[box], step, np.any)
    reach = int(step.max())
    for band, in_band, rim in ((moderate, blocks[0], None), (pool, blocks[1], dense_blocks)):
        found = _lumen_pieces(mean, in_band, outside, spacing_mm * step, rim=rim)
        if not found.any():
            continue
        # back on the CT's voxels
        index = np.ix_(
            *(
                np.minimum(np.arange(n) // k, m - 1)
                for n, k, m in zip(band.shape, step, found.shape, strict=True)
            )
        )
        lumen = found[index] & band
        if rim is not None:  # a pool
            steps = (_POOL_RIM_STEPS + 1) * reach
            near = bounding_box(lumen, steps + 1)
            lumina[box][near] |= _pool_with_rim(
                lumen[near],
                hu[box][near],
                dense[box][near],
                _near_soft(bone[box], near, spacing_mm),
                steps,
            )
        else:
            near = bounding_box(lumen, reach + 1)
            lumina[box][near] |= ndimage.binary_dilation(
                lumen[near], iterations=reach, mask=moderate[near]
            )
    return lumina


def _near_soft(bone: Mask, box: Box, spacing_mm: NDArray[np.float64]) -> Mask:
    """The voxels of ``box`` within :data:`_POOL_RIM_MM` of a voxel outside ``bone`` (a
    pool's edge and rim: not a cortex it lies against, which it may be denser than)."""
    pad = int(np.ceil(_POOL_RIM_MM / float(np.min(spacing_mm)))) + 1
    grown, inner = grown_box(box, pad, bone.shape)
    return np.asarray(distance_mm(bone[grown], spacing_mm)[inner] <= _POOL_RIM_MM)


def _pool_with_rim(
    lumen: Mask, hu: NDArray[np.floating], dense: Mask, rim: Mask, iterations: int
) -> Mask:
    """``lumen`` (pools of contrast) grown through the rest of each pool and, in ``rim``,
    its blurred edge (see :func:`_flood`)."""
    pieces, count = components(lumen)
    means = np.asarray(ndimage.mean(hu, pieces, np.arange(1, count + 1)), np.float32)
    level = np.full(lumen.shape, -np.inf, np.float32)
    level[lumen] = means[pieces[lumen] - 1]
    return _flood(level, hu, dense, iterations, rim=rim)


def _flood(
    level: NDArray[np.float32],
    hu: NDArray[np.floating],
    dense: Mask,
    iterations: int,
    *,
    rim: Mask | None = None,
) -> Mask:
    """Pools (where ``level``, their HU, is finite) grown ``iterations`` voxels through
    the ``dense`` voxels no denser than the pool they are reached from (but for twice
    :data:`_LUMEN_MAX_SD_HU` of noise): a pool's blurred edge and rim down to the soft
    tissue, not a denser cortex behind it. Outside ``rim`` (if given) only through the
    voxels as dense as the pool, within that noise: not a cortex it is denser than."""
    level = level.copy()
    noise = np.float32(2 * _LUMEN_MAX_SD_HU)
    values = np.where(dense, hu, np.inf).astype(np.float32)
    for _ in range(iterations):
        reached = ndimage.maximum_filter(level, size=3, mode="constant", cval=-np.inf)
        grow = (level == -np.inf) & (reached > values - noise)
        if rim is not None:
            grow &= rim | (values > reached - noise)
        if not grow.any():
            break
        level[grow] = reached[grow]
    return np.asarray(level > -np.inf)


def _uniform(values: NDArray[np.floating], where: Mask) -> Mask:
    """The voxels of ``where`` whose 3 x 3 x 3 neighbourhood in ``values`` varies by no
    more than :data:`_LUMEN_MAX_SD_HU` (standard deviation; the array's edge repeats)."""
    out = np.zeros_like(where)
    if not where.any():
        return out
    box = bounding_box(where, 1)
    part = values[box].astype(np.float64)
    mean = ndimage.uniform_filter(part, 3, mode="nearest")
    square = ndimage.uniform_filter(part * part, 3, mode="nearest")
    out[box] = where[box] & (square - mean * mean <= _LUMEN_MAX_SD_HU**2)
    return out


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
    hu: NDArray[np.floating],
    band: Mask,
    outside: Mask,
    spacing_mm: NDArray[np.float64],
    *,
    rim: Mask | None = None,
) -> Mask:
    """The thick parts of ``band`` that are lumina (see :func:`contrast_lumina`).

    With ``rim`` (the dense voxels), a pool's surface is judged beyond its blurred edge:
    it is first grown by :data:`_POOL_RIM_STEPS` voxels through them (:func:`_flood`).
    """
    core = distance_mm(band, spacing_mm) > _LUMEN_RADIUS_MM
    if not core.any():
        return core
    thick = distance_mm(~core, spacing_mm) <= _LUMEN_RADIUS_MM
    pieces, count = components(thick)
    sizes = np.bincount(pieces[thick], minlength=count + 1)
    # uniform within its core: a piece's edge may take in a denser neighbour of the band
    owner = pieces[core]
    values = hu[core].astype(np.float64)
    counted = np.maximum(np.bincount(owner, minlength=count + 1), 1)
    mean = np.bincount(owner, weights=values, minlength=count + 1) / counted
    spread = np.bincount(owner, weights=(values - mean[owner]) ** 2, minlength=count + 1)
    sd = np.sqrt(spread / counted)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    candidates = (sizes * voxel_ml >= _MIN_PIECE_ML) & (sd <= _LUMEN_MAX_SD_HU)
    candidates[0] = False
    found = np.zeros(count + 1, bool)
    steps = 0 if rim is None else _POOL_RIM_STEPS
    for label, where in enumerate(ndimage.find_objects(pieces), start=1):
        if where is None or not candidates[label]:
            continue
        around, _ = grown_box(where, 1 + steps, pieces.shape)
        piece = pieces[around] == label
        if rim is not None:
            level = np.where(piece, np.float32(mean[label]), np.float32(-np.inf))
            piece = _flood(level, hu[around], rim[around], steps)
        ring = ndimage.binary_dilation(piece) & ~piece
        found[label] = outside[around][ring].mean() >= _LUMEN_OUTSIDE_SHARE
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
