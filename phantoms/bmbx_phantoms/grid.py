"""The phantom's scene grid: LPS-aligned voxels (k -> +S, j -> +P, i -> +L)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.volume import Volume

__all__ = ["SceneGrid", "bbox_slices"]


@dataclass(frozen=True, eq=False)
class SceneGrid:
    """An axis-aligned voxel grid in LPS with 1D coordinate vectors per axis.

    The phantom scene is built here, where "posterior" is simply +j; the DICOM writer
    re-orients it for each patient position without interpolation.

    Attributes
    ----------
    origin_lps_mm : (3,) ndarray
        LPS position of voxel (0, 0, 0).
    spacing_kji_mm : (3,) ndarray
        Voxel size along (k, j, i) = (z, y, x), mm.
    shape : tuple of int
        ``(K, J, I)``.
    """

    origin_lps_mm: NDArray[np.float64]
    spacing_kji_mm: NDArray[np.float64]
    shape: tuple[int, int, int]

    @classmethod
    def covering(
        cls,
        lo_lps_mm: NDArray[np.float64],
        hi_lps_mm: NDArray[np.float64],
        *,
        pixel_mm: float,
        slice_mm: float,
    ) -> SceneGrid:
        """Smallest grid with the given spacing whose voxel centres cover ``[lo, hi]``."""
        spacing_xyz = np.array([pixel_mm, pixel_mm, slice_mm])
        counts_xyz = np.ceil((np.asarray(hi_lps_mm) - lo_lps_mm) / spacing_xyz).astype(int) + 1
        shape = (int(counts_xyz[2]), int(counts_xyz[1]), int(counts_xyz[0]))
        return cls(np.asarray(lo_lps_mm, dtype=np.float64), spacing_xyz[::-1].copy(), shape)

    @property
    def x_mm(self) -> NDArray[np.float64]:
        """L coordinate of each column i."""
        return self.origin_lps_mm[0] + self.spacing_kji_mm[2] * np.arange(self.shape[2])

    @property
    def y_mm(self) -> NDArray[np.float64]:
        """P coordinate of each row j."""
        return self.origin_lps_mm[1] + self.spacing_kji_mm[1] * np.arange(self.shape[1])

    @property
    def z_mm(self) -> NDArray[np.float64]:
        """S coordinate of each slice k."""
        return self.origin_lps_mm[2] + self.spacing_kji_mm[0] * np.arange(self.shape[0])

    def volume(self, array: NDArray[np.generic] | None = None) -> Volume:
        """A :class:`Volume` on this grid (an all-zero template when ``array`` is None)."""
        data = np.broadcast_to(np.uint8(0), self.shape) if array is None else array
        return Volume.from_components(
            data, spacing_mm=self.spacing_kji_mm, origin_lps_mm=self.origin_lps_mm
        )

    def index_of(self, point_lps_mm: NDArray[np.float64]) -> tuple[int, int, int]:
        """Nearest voxel index (k, j, i) of one LPS point, clipped into the grid."""
        rel = (np.asarray(point_lps_mm, dtype=np.float64) - self.origin_lps_mm)[::-1]
        idx = np.clip(np.rint(rel / self.spacing_kji_mm), 0, np.array(self.shape) - 1)
        k, j, i = (int(v) for v in idx)
        return k, j, i

    def box_slices(
        self, lo_lps_mm: NDArray[np.float64], hi_lps_mm: NDArray[np.float64]
    ) -> tuple[slice, slice, slice]:
        """Index slices of the voxels whose centres lie in the LPS box ``[lo, hi]``."""
        lo_idx = np.floor((np.asarray(lo_lps_mm) - self.origin_lps_mm)[::-1] / self.spacing_kji_mm)
        hi_idx = np.ceil((np.asarray(hi_lps_mm) - self.origin_lps_mm)[::-1] / self.spacing_kji_mm)
        lo_c = np.clip(lo_idx, 0, self.shape).astype(int)
        hi_c = np.clip(hi_idx + 1, 0, self.shape).astype(int)
        return (slice(lo_c[0], hi_c[0]), slice(lo_c[1], hi_c[1]), slice(lo_c[2], hi_c[2]))

    def coordinates(
        self, box: tuple[slice, slice, slice]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Broadcastable (z, y, x) coordinate arrays (mm) of the voxels in ``box``."""
        z = self.z_mm[box[0]][:, None, None]
        y = self.y_mm[box[1]][None, :, None]
        x = self.x_mm[box[2]][None, None, :]
        return z, y, x


def bbox_slices(mask: NDArray[np.bool_], pad: int) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``pad`` voxels (empty if no voxel)."""
    where = np.nonzero(mask)
    if where[0].size == 0:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    k, j, i = (
        slice(max(int(w.min()) - pad, 0), min(int(w.max()) + pad + 1, n))
        for w, n in zip(where, mask.shape, strict=True)
    )
    return k, j, i
