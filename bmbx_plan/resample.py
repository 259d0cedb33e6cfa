"""Resample a volume onto another volume's grid (explicitly: nothing resamples silently)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bmbx_plan.volume import Volume

__all__ = ["resample_to"]

_SNAP = 1e-4  # voxel


def resample_to(
    volume: Volume, reference: Volume, *, order: int = 1, fill_value: float = 0.0
) -> Volume:
    """Values of ``volume`` at the voxel centres of ``reference``.

    Parameters
    ----------
    volume : Volume
        The image to sample.
    reference : Volume
        Gives the output grid (shape and affine) and info.
    order : int
        Spline order: 0 nearest (use for labels), 1 linear.
    fill_value : float
        Value outside ``volume``: for ``order=0`` outside its voxels (a voxel extends half
        a spacing around its centre), for higher orders beyond its outer voxel centres.

    Returns
    -------
    Volume
        On ``reference``'s grid, with ``volume``'s dtype for ``order=0`` and float32
        otherwise. Grids that differ only by flips or axis permutations map voxel
        centres onto voxel centres, so the result is exact.

    >>> src = Volume.from_components(np.arange(24).reshape(2, 3, 4), spacing_mm=(2, 1, 1))
    >>> flipped = src.reoriented(-src.direction)
    >>> bool(np.array_equal(resample_to(flipped, src, order=0).array, src.array))
    True
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    # reference index -> LPS -> volume index
    mapping = np.linalg.inv(volume.affine_lps) @ reference.affine_lps
    matrix = mapping[:3, :3]
    offset = mapping[:3, 3]
    # Grids that match up to flips and permutations map voxel centres onto integer
    # indices; files store geometry in float32 (NIfTI: about 1e-5 mm), so snap values
    # within 1e-4 voxel of an integer, or edge voxels would land a hair outside the grid.
    matrix = np.where(np.abs(matrix - np.rint(matrix)) < _SNAP, np.rint(matrix), matrix)
    offset = np.where(np.abs(offset - np.rint(offset)) < _SNAP, np.rint(offset), offset)
    if order == 0 and np.all(np.count_nonzero(matrix, axis=0) == 1):
        out = _nearest_axis_aligned(volume.array, matrix, offset, reference.shape, fill_value)
        return Volume(out, reference.affine_lps, reference.info)
    source = volume.array if order == 0 else volume.array.astype(np.float32)
    out = ndimage.affine_transform(
        source,
        matrix,
        offset=offset,
        output_shape=reference.shape,
        order=order,
        mode="grid-constant" if order == 0 else "constant",
        cval=fill_value,
        prefilter=order > 1,
    )
    return Volume(out, reference.affine_lps, reference.info)


def _nearest_axis_aligned(
    source: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int, ...],
    fill_value: float,
) -> np.ndarray:
    """Nearest-voxel resampling when every source axis follows one reference axis (the
    grids differ by spacing, shift, flips and permutations only): a gather of whole rows,
    with the rounding of ``ndimage.affine_transform`` (floor(x + 0.5), in the source for
    -0.5 <= x < n - 0.5)."""
    index, valid, axes = [], [], []
    for s, n in enumerate(source.shape):
        a = int(np.flatnonzero(matrix[s])[0])
        i = np.floor(matrix[s, a] * np.arange(shape[a]) + offset[s] + 0.5).astype(np.intp)
        ok = (i >= 0) & (i < n)
        index.append(np.where(ok, i, 0))
        valid.append(ok)
        axes.append(a)
    order = np.argsort(axes)  # source axes in the order of the reference axes
    out = source[np.ix_(*index)].transpose(order)
    if not all(ok.all() for ok in valid):
        inside = np.ones((1,) * source.ndim, bool)
        for s, ok in enumerate(valid):
            inside = inside & ok.reshape([-1 if t == s else 1 for t in range(source.ndim)])
        out = np.where(inside.transpose(order), out, np.asarray(fill_value).astype(source.dtype))
    return np.ascontiguousarray(out)
