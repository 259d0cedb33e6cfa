"""A coarse working grid for the expensive bone-separation passes, and the way back.

Watersheds and depth maps cost time and memory per voxel of their bounding box: at
0.7 mm a pelvis box holds 40 M voxels, at 1.5 mm 5 M. Which bone a voxel belongs to is
therefore decided on blocks of about 1.5 mm (:class:`WorkGrid`), and carried back to the
CT's voxels by :func:`to_full_resolution`: a voxel whose block has one bone in its
neighbourhood takes that bone, and only where bones meet is the cut re-drawn at full
resolution.

Also here, the mask operations of the segmentation at the cost of one pass: connected
components, enclosed cavities and the holes inside every slice by labelling (instead of
hole filling that crawls through the volume), closings and erosions on overlapping slabs
in parallel, and Euclidean balls (so that "within r mm" is a small morphological
operation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.segmentation import watershed

from bmbx_plan.distance import THREADS, distance_mm
from bmbx_plan.volume import Volume

__all__ = [
    "WorkGrid",
    "ball",
    "ball_around",
    "bounding_box",
    "closing",
    "components",
    "enclosed",
    "holes_per_slice",
    "in_slabs",
    "to_full_resolution",
]

Mask = NDArray[np.bool_]
Box = tuple[slice, ...]

#: Target voxel size of the working grid (mm). Coarser loses the 2-3 mm joint clefts
#: between bones in the first pass; finer costs as much as the CT grid.
WORK_SPACING_MM = 1.5
# Blocks this many blocks away from a meeting of two bones are re-decided at full
# resolution (besides the blocks that see two bones themselves).
_BAND_BLOCKS = 1


def bounding_box(mask: Mask, pad: int) -> Box:
    """Slices of the bounding box of ``mask`` grown by ``pad`` voxels (mask not empty)."""
    plane = np.any(mask, axis=0)
    where = (
        np.nonzero(mask.any(axis=(1, 2)))[0],
        np.nonzero(plane.any(axis=1))[0],
        np.nonzero(plane.any(axis=0))[0],
    )
    return tuple(
        slice(max(int(w.min()) - pad, 0), min(int(w.max()) + pad + 1, n))
        for w, n in zip(where, mask.shape, strict=True)
    )


def grown_box(box: Box, pad: int | Sequence[int], shape: Sequence[int]) -> tuple[Box, Box]:
    """``box`` grown by ``pad`` voxels (one number, or one per axis) within an array of
    ``shape``, and where ``box`` lies inside the grown box."""
    pads = [pad] * len(box) if isinstance(pad, int) else list(pad)
    grown = tuple(
        slice(max(b.start - p, 0), min(b.stop + p, n))
        for b, p, n in zip(box, pads, shape, strict=True)
    )
    inner = tuple(
        slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown, strict=True)
    )
    return grown, inner


def components(mask: Mask, *, corners: bool = False) -> tuple[NDArray[np.integer], int]:
    """Connected pieces of ``mask``: labels 1..count (0 off the mask) and their count,
    numbered as :func:`scipy.ndimage.label` numbers them. Voxels touching by a face
    connect; with ``corners`` also those touching by an edge or a corner."""
    labels, count = cc3d.connected_components(
        np.asarray(mask, bool), connectivity=26 if corners else 6, return_N=True
    )
    return labels, int(count)


def enclosed(mask: Mask) -> Mask:
    """Background of ``mask`` not 6-connected to the edge of the array: what
    :func:`scipy.ndimage.binary_fill_holes` adds, by one labelling instead of a dilation
    that crawls through the whole box."""
    labels, count = components(~mask)
    outside = np.zeros(count + 1, bool)
    outside[0] = True
    for axis in range(3):
        outside[labels.take(0, axis=axis)] = True
        outside[labels.take(-1, axis=axis)] = True
    return np.asarray(~outside[labels])


def in_slabs(operation: Callable[[Mask], Mask], mask: Mask, reach: int) -> Mask:
    """``operation(mask)`` computed in slabs along the first axis on
    :data:`~bmbx_plan.distance.THREADS` threads (ndimage's morphology releases the GIL).

    ``operation`` must give each voxel a value that depends only on the mask within
    ``reach`` voxels of it along the first axis: slabs overlapping by that much then give
    exactly the result of the whole.
    """
    n = mask.shape[0]
    count = min(THREADS, max(n // (4 * reach + 1), 1))
    cuts = np.linspace(0, n, count + 1).astype(int)

    def slab(part: tuple[int, int]) -> Mask:
        low, high = max(part[0] - reach, 0), min(part[1] + reach, n)
        return np.asarray(operation(mask[low:high])[part[0] - low : part[1] - low])

    if count == 1:
        return np.asarray(operation(mask))
    with ThreadPoolExecutor(max_workers=count) as workers:
        return np.concatenate(list(workers.map(slab, pairwise(cuts))), axis=0)


def closing(mask: Mask, structure: Mask) -> Mask:
    """``scipy.ndimage.binary_closing(mask, structure, border_value=0)``, in slabs (a
    closing reaches twice as far as its structuring element)."""
    return in_slabs(
        lambda part: ndimage.binary_closing(part, structure=structure, border_value=0),
        mask,
        2 * (structure.shape[0] // 2),
    )


def ball(radius_mm: float | NDArray[np.float64], spacing_mm: NDArray[np.float64]) -> Mask:
    """Offsets within ``radius_mm`` of the centre voxel, as a structuring element.

    Eroding a mask by it keeps the voxels farther than ``radius_mm`` from the background
    (a thresholded distance transform), at a fraction of the cost for small radii. A
    radius per array axis gives the ellipsoid with those semi-axes.
    """
    spacing = np.asarray(spacing_mm, np.float64)
    radius = np.broadcast_to(np.asarray(radius_mm, np.float64), spacing.shape)
    reach = np.floor(radius / spacing + 1e-9).astype(int)
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in reach)]
    scaled = sum((g * s / r) ** 2 for g, s, r in zip(grid, spacing, radius, strict=True))
    return np.asarray(scaled <= 1.0 + 1e-9)


def holes_per_slice(mask: Mask, axis: int, *, max_pixels: float | None = None) -> Mask:
    """Holes of ``mask`` inside each slice along ``axis``: background pixels not
    4-connected within their slice to the slice's edge (as
    :func:`scipy.ndimage.binary_fill_holes` on every slice), optionally only holes of at
    most ``max_pixels`` pixels.

    Parameters
    ----------
    mask : (K, J, I) bool ndarray
    axis : int
        Array axis the slices are perpendicular to.
    max_pixels : float, optional
        Largest hole kept (pixels).

    Returns
    -------
    (K, J, I) bool ndarray
    """
    out = np.zeros_like(mask)
    slices = np.moveaxis(mask, axis, 0)
    holes = np.moveaxis(out, axis, 0)  # a view: writing it fills ``out``
    for n, plane in enumerate(slices):
        labels, count = cc3d.connected_components(~plane, connectivity=4, return_N=True)
        if count == 0:
            continue
        hole = np.ones(count + 1, bool)
        hole[0] = False
        for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            hole[edge] = False
        if max_pixels is not None and hole.any():
            hole &= np.bincount(labels.ravel(), minlength=count + 1) <= max_pixels
        if hole.any():
            holes[n] = hole[labels]
    return out


def ball_around(
    index: NDArray[np.int64], radius_mm: float, ct: Volume
) -> tuple[tuple[slice, ...], Mask]:
    """The voxels within ``radius_mm`` of voxel ``index``: their box on the grid and the
    ball clipped to it."""
    structure = ball(radius_mm, ct.spacing_mm)
    reach = np.array(structure.shape) // 2
    lo = np.maximum(index - reach, 0)
    hi = np.minimum(index + reach + 1, np.array(ct.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    crop = tuple(
        slice(int(a - i + r), int(b - i + r))
        for a, b, i, r in zip(lo, hi, index, reach, strict=True)
    )
    return box, structure[crop].copy()


@dataclass(frozen=True, eq=False)
class WorkGrid:
    """Blocks of ``step`` CT voxels per axis, as the voxels of a coarser grid.

    Attributes
    ----------
    fine : Volume
        The CT.
    coarse : Volume
        Geometry of the blocks (voxel centres at the block centres; covers the whole CT,
        the last block of an axis may be partial). Its array is a zero placeholder.
    step : (3,) tuple of int
        CT voxels per block along ``(k, j, i)``.
    """

    fine: Volume
    coarse: Volume
    step: tuple[int, int, int]

    @classmethod
    def of(cls, ct: Volume, spacing_mm: float = WORK_SPACING_MM) -> WorkGrid:
        """The working grid of ``ct`` with blocks of about ``spacing_mm`` (never finer
        than the CT: grids of 1.5 mm and coarser are used as they are)."""
        step = tuple(int(max(1, round(spacing_mm / s))) for s in ct.spacing_mm)
        shape = tuple(-(-n // s) for n, s in zip(ct.shape, step, strict=True))
        scale = np.diag([*step, 1]).astype(np.float64)
        scale[:3, 3] = 0.5 * (np.asarray(step) - 1)
        placeholder = np.broadcast_to(np.zeros((), np.uint8), shape)
        coarse = Volume(placeholder, ct.affine_lps @ scale, ct.info)
        return cls(ct, coarse, (step[0], step[1], step[2]))

    @property
    def is_identity(self) -> bool:
        """Whether blocks are single voxels (the CT is already coarse)."""
        return self.step == (1, 1, 1)

    def fine_box(self, coarse_box: Box) -> Box:
        """The CT voxels of the blocks in ``coarse_box``."""
        return tuple(
            slice(c.start * s, min(c.stop * s, n))
            for c, s, n in zip(coarse_box, self.step, self.fine.shape, strict=True)
        )

    def pool(self, mask: Mask, *, min_fraction: float) -> Mask:
        """Blocks in which at least ``min_fraction`` of the voxels are in ``mask``
        (``0`` means any voxel), on the coarse grid."""
        out = np.zeros(self.coarse.shape, bool)
        if not mask.any():
            return out
        fine = bounding_box(mask, 0)
        coarse_box = tuple(
            slice(f.start // s, -(-f.stop // s)) for f, s in zip(fine, self.step, strict=True)
        )
        crop = mask[self.fine_box(coarse_box)]
        blocks = [c.stop - c.start for c in coarse_box]
        padding = [(0, b * s - n) for b, s, n in zip(blocks, self.step, crop.shape, strict=True)]
        if any(p for _, p in padding):
            crop = np.pad(crop, padding)
        counts = crop.reshape(
            blocks[0], self.step[0], blocks[1], self.step[1], blocks[2], self.step[2]
        ).sum(axis=(1, 3, 5), dtype=np.uint16)
        need = max(min_fraction * float(np.prod(self.step)), 1.0)
        out[coarse_box] = counts >= need
        return out

    def upsample(self, coarse: NDArray[np.generic], coarse_box: Box) -> NDArray[np.generic]:
        """``coarse`` (the values of the blocks in ``coarse_box``) on the CT voxels of
        :meth:`fine_box` ``(coarse_box)``: each voxel gets its block's value."""
        n = coarse.shape
        s = self.step
        spread = np.broadcast_to(
            coarse[:, None, :, None, :, None], (n[0], s[0], n[1], s[1], n[2], s[2])
        ).reshape(n[0] * s[0], n[1] * s[1], n[2] * s[2])
        fine = self.fine_box(coarse_box)
        return spread[tuple(slice(0, f.stop - f.start) for f in fine)]


def to_full_resolution(
    work: WorkGrid,
    labels: NDArray[np.uint8],
    bone: Mask,
    clefts: Callable[[Box], Mask],
) -> NDArray[np.uint8]:
    """Carry a label map of the working grid back to the bone voxels of the CT.

    A bone voxel whose block sees one label within one block takes it. Where two labels
    meet, the voxels of the blocks around the meeting are re-decided by a watershed at
    full resolution on the depth below the bone surface (joint clefts count as surface),
    seeded by the decided voxels around them, one meeting place at a time. Bone voxels
    with no label within one block (pieces the coarse pass dropped) stay unlabelled.

    Parameters
    ----------
    work : WorkGrid
    labels : (K', J', I') uint8 ndarray
        Labels ``1..n`` on ``work.coarse`` (0 = no bone).
    bone : (K, J, I) bool ndarray
        Bone on the CT grid.
    clefts : callable
        Box of the CT grid -> the joint clefts inside it (bool, shape of the box).

    Returns
    -------
    (K, J, I) uint8 ndarray
        Labels on the CT grid, non-zero only on ``bone``.
    """
    if work.is_identity:
        return labels.copy()
    out = np.zeros(work.fine.shape, np.uint8)
    if not labels.any():
        return out
    coarse_box = bounding_box(labels > 0, 1 + _BAND_BLOCKS)
    single, mixed = _neighbour_labels(labels[coarse_box])
    fine_box = work.fine_box(coarse_box)
    fine_bone = bone[fine_box]
    fine_labels = np.asarray(work.upsample(single, coarse_box), dtype=np.uint8).copy()
    fine_labels[~fine_bone] = 0
    band = ndimage.binary_dilation(mixed, iterations=_BAND_BLOCKS)
    places, _ = components(ndimage.binary_dilation(band), corners=True)
    origin = [b.start for b in coarse_box]
    for n, place in enumerate(ndimage.find_objects(places), start=1):
        if place is None:
            continue
        own = places[place] == n
        local = tuple(slice(p.start + o, p.stop + o) for p, o in zip(place, origin, strict=True))
        _redraw(work, local, own & band[place], own, fine_labels, fine_bone, fine_box, clefts)
    out[fine_box] = fine_labels
    return out


def _neighbour_labels(labels: NDArray[np.uint8]) -> tuple[NDArray[np.uint8], Mask]:
    """Per block: the one label within one block (0 if none or several), and whether
    several labels are within one block.

    The largest and the smallest label in each 3x3x3 neighbourhood (separable filters,
    no pass per label) differ exactly where several labels meet.
    """
    high = ndimage.maximum_filter(labels, size=3, mode="constant", cval=0)
    empty = np.iinfo(np.uint8).max
    low = ndimage.minimum_filter(
        np.where(labels == 0, empty, labels).astype(np.uint8), size=3, mode="constant", cval=empty
    )
    single = np.where(high == low, high, 0).astype(np.uint8)
    return single, (low != empty) & (high != low)


def _redraw(
    work: WorkGrid,
    coarse_box: Box,
    undecided: Mask,
    place: Mask,
    fine_labels: NDArray[np.uint8],
    fine_bone: Mask,
    fine_box: Box,
    clefts: Callable[[Box], Mask],
) -> None:
    """Re-decide the bone voxels of the ``undecided`` blocks of one meeting place at full
    resolution (in place in ``fine_labels``, which covers ``fine_box`` of the CT)."""
    box = work.fine_box(coarse_box)
    local = tuple(
        slice(b.start - f.start, b.stop - f.start) for b, f in zip(box, fine_box, strict=True)
    )
    bone = fine_bone[local]
    open_ = np.asarray(work.upsample(undecided, coarse_box)) & bone
    domain = np.asarray(work.upsample(place, coarse_box)) & bone
    if not open_.any():
        return
    view = fine_labels[local]
    markers = np.where(domain & ~open_, view, 0).astype(np.int32)
    if not markers.any():
        return
    depth = distance_mm(bone & ~clefts(box), work.fine.spacing_mm)
    regions = watershed(-depth.astype(np.float32), markers, mask=domain)
    view[open_] = regions[open_]
