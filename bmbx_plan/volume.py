"""The one image type: a read-only array with one 4x4 affine to LPS millimetres."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bmbx_plan import geometry

__all__ = ["ScanInfo", "Volume"]

# Direction cosines must be orthonormal to this precision; DICOM headers store them with
# about 6 decimals, so 1e-4 accepts real files and rejects sheared or scaled matrices.
_ORTHONORMAL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ScanInfo:
    """What a plan needs to know about where a volume came from.

    No patient identity is ever stored here: name, ID, birth date and accession number
    stay in the source files.

    Attributes
    ----------
    source : str
        The path the volume was read from (or a description for in-memory volumes).
    series_instance_uid, modality, patient_position, manufacturer : str
        From the DICOM header where there is one, else empty (``patient_position``
        is one of ``HFS``, ``HFP``, ``FFS``, ``FFP`` ... or ``""`` when unknown).
    slice_thickness_mm : float or None
        The thickness each slice was reconstructed with (DICOM SliceThickness), when
        the source records it: slices may be thicker than their spacing.
    notes : tuple of str
        Sentences describing anything the loader decided (a series picked among
        several, a localizer skipped, a small gap resampled).
    """

    source: str = ""
    series_instance_uid: str = ""
    modality: str = ""
    patient_position: str = ""
    manufacturer: str = ""
    slice_thickness_mm: float | None = None
    notes: tuple[str, ...] = ()

    def with_note(self, note: str) -> ScanInfo:
        """Return a copy with ``note`` appended to :attr:`notes`."""
        return replace(self, notes=(*self.notes, note))


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its geometry in LPS millimetres.

    Parameters
    ----------
    array : (K, J, I) ndarray
        Voxel values in numpy order (slice, row, column). Stored read-only.
    affine_lps : (4, 4) ndarray
        Maps homogeneous array indices ``(k, j, i, 1)`` to LPS mm. Its upper-left 3x3
        block must be an orthogonal matrix times positive spacings.
    info : ScanInfo
        Provenance and scan metadata.

    Examples
    --------
    >>> vol = Volume.from_components(np.zeros((2, 3, 4)), spacing_mm=(2.0, 1.0, 0.5))
    >>> vol.index_to_lps([[1, 1, 1]])
    array([[0.5, 1. , 2. ]])
    """

    array: NDArray[Any]
    affine_lps: NDArray[np.float64]
    info: ScanInfo = field(default_factory=ScanInfo)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (K, J, I), got shape {array.shape}")
        if min(array.shape) < 1:
            raise ValueError(f"Volume array must not be empty, got shape {array.shape}")
        affine = np.array(self.affine_lps, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine_lps must be 4x4, got {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise ValueError("affine_lps must be finite")
        if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"affine_lps last row must be [0, 0, 0, 1], got {affine[3]}")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"affine_lps has a zero-length axis (spacing {spacing})")
        direction = affine[:3, :3] / spacing
        if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
            raise ValueError("affine_lps axes are not orthogonal (sheared geometry)")
        frozen = array.view()
        frozen.flags.writeable = False
        affine.flags.writeable = False
        object.__setattr__(self, "array", frozen)
        object.__setattr__(self, "affine_lps", affine)

    @classmethod
    def from_components(
        cls,
        array: ArrayLike,
        *,
        spacing_mm: ArrayLike,
        origin_lps_mm: ArrayLike = (0.0, 0.0, 0.0),
        direction: ArrayLike | None = None,
        info: ScanInfo | None = None,
    ) -> Volume:
        """Build a volume from spacing, origin and direction cosines.

        Parameters
        ----------
        array : (K, J, I) array_like
        spacing_mm : (3,) array_like
            Voxel size along the array axes ``(k, j, i)``, in mm.
        origin_lps_mm : (3,) array_like
            LPS position of voxel ``(0, 0, 0)``.
        direction : (3, 3) array_like, optional
            Column ``n`` is the LPS unit vector of array axis ``n`` (k, j, i). Default:
            k -> +S, j -> +P, i -> +L (an axial HFS-like grid).
        """
        spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
        if direction is None:
            direction_m = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        else:
            direction_m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction_m * spacing
        affine[:3, 3] = np.asarray(origin_lps_mm, dtype=np.float64).reshape(3)
        return cls(np.asarray(array), affine, info if info is not None else ScanInfo())

    def with_array(self, array: ArrayLike) -> Volume:
        """Same geometry and info, new voxel values of the same shape."""
        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise ValueError(f"with_array needs shape {self.shape}, got {arr.shape}")
        return Volume(arr, self.affine_lps, self.info)

    def with_info(self, info: ScanInfo) -> Volume:
        """Same voxels and geometry, new :class:`ScanInfo`."""
        return Volume(self.array, self.affine_lps, info)

    def reoriented(self, direction: ArrayLike) -> Volume:
        """The same voxels stored with the axes pointing along ``direction``.

        Only flips and axis permutations: exact, no interpolation. ``direction`` is a 3x3
        matrix whose column ``n`` is the wanted LPS unit vector of new array axis ``n``;
        every column must be (anti)parallel to one of this volume's axes.

        >>> vol = Volume.from_components(np.arange(6).reshape(1, 2, 3), spacing_mm=(1, 1, 1))
        >>> flipped = vol.reoriented(vol.direction * [1.0, -1.0, 1.0])  # flip rows (j)
        >>> bool(np.allclose(flipped.index_to_lps([[0, 0, 0]]), vol.index_to_lps([[0, 1, 0]])))
        True
        >>> int(flipped.array[0, 0, 2]) == int(vol.array[0, 1, 2])
        True
        """
        target = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        overlap = self.direction.T @ target  # (old axis, new axis)
        source = np.argmax(np.abs(overlap), axis=0)
        if sorted(source.tolist()) != [0, 1, 2] or not np.allclose(
            np.abs(overlap[source, [0, 1, 2]]), 1.0, atol=_ORTHONORMAL_TOLERANCE
        ):
            raise ValueError("reoriented needs a direction that permutes/flips the volume's axes")
        array = np.transpose(self.array, source)
        start = np.zeros(3)
        for new_axis, old_axis in enumerate(source):
            if overlap[old_axis, new_axis] < 0:
                array = np.flip(array, axis=new_axis)
                start[old_axis] = self.shape[old_axis] - 1
        affine = np.eye(4)
        affine[:3, :3] = target * self.spacing_mm[source]
        affine[:3, 3] = self.index_to_lps(start)[0]
        return Volume(np.ascontiguousarray(array), affine, self.info)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(K, J, I)``."""
        k, j, i = self.array.shape
        return (k, j, i)

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        """Voxel size along ``(k, j, i)`` in mm."""
        return np.linalg.norm(self.affine_lps[:3, :3], axis=0)

    @property
    def direction(self) -> NDArray[np.float64]:
        """3x3 matrix whose column ``n`` is the LPS unit vector of array axis ``n``."""
        return self.affine_lps[:3, :3] / self.spacing_mm

    @property
    def origin_lps_mm(self) -> NDArray[np.float64]:
        """LPS position of voxel ``(0, 0, 0)`` in mm."""
        return self.affine_lps[:3, 3].copy()

    @property
    def resolution_mm(self) -> float:
        """The coarsest scale the image blurs over: its largest voxel dimension, or the
        slice thickness its source records where that is larger."""
        return max(float(self.spacing_mm.max()), self.info.slice_thickness_mm or 0.0)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic mm."""
        return float(np.prod(self.spacing_mm))

    def index_to_lps(self, index_kji: ArrayLike) -> NDArray[np.float64]:
        """``(N, 3)`` array indices ``(k, j, i)`` to LPS mm."""
        return geometry.index_to_lps(self.affine_lps, index_kji)

    def lps_to_index(self, points_lps_mm: ArrayLike) -> NDArray[np.float64]:
        """``(N, 3)`` LPS points (mm) to fractional indices ``(k, j, i)``."""
        return geometry.lps_to_index(self.affine_lps, points_lps_mm)

    def lps_coordinate(
        self, lps_axis: int, box: tuple[slice, ...] | None = None
    ) -> NDArray[np.float64]:
        """LPS coordinate ``lps_axis`` (0 = x, 1 = y, 2 = z; mm) of every voxel (of the
        voxels in ``box`` if given), as an array broadcastable to ``(K, J, I)``.

        The result only extends along the array axes the coordinate changes on:
        ``(K, 1, 1)`` for z on an axial grid, so no full volume of float64 is made
        (oblique grids still get a full box).

        >>> vol = Volume.from_components(np.zeros((2, 3, 4)), spacing_mm=(2.0, 1.0, 0.5))
        >>> vol.lps_coordinate(2)[:, 0, 0]
        array([0., 2.])
        >>> vol.lps_coordinate(2).shape
        (2, 1, 1)
        """
        full = box if box is not None else tuple(slice(0, n) for n in self.shape)
        row = self.affine_lps[lps_axis]
        out = np.full((1, 1, 1), row[3])
        for axis, part in enumerate(full):
            if row[axis] == 0.0:
                continue
            shape = [1, 1, 1]
            start = part.start or 0
            shape[axis] = part.stop - start
            index = np.arange(start, part.stop, dtype=np.float64).reshape(shape)
            out = out + row[axis] * index
        return out

    def corners_lps_mm(self) -> NDArray[np.float64]:
        """The eight outer voxel centres in LPS mm, shape ``(8, 3)``."""
        k, j, i = (np.array([0, n - 1]) for n in self.shape)
        grid = np.stack(np.meshgrid(k, j, i, indexing="ij"), axis=-1).reshape(-1, 3)
        return self.index_to_lps(grid)

    def bounds_lps_mm(self) -> NDArray[np.float64]:
        """Axis-aligned LPS bounding box of the voxel centres, ``[[min xyz], [max xyz]]``."""
        corners = self.corners_lps_mm()
        return np.stack([corners.min(axis=0), corners.max(axis=0)])

    def axis_of(self, lps_axis: int) -> tuple[int, int]:
        """Array axis most aligned with LPS axis ``lps_axis`` (0=x, 1=y, 2=z), and its sign.

        The sign is +1 when increasing the array index moves toward +x/+y/+z.
        """
        row = self.direction[lps_axis]
        axis = int(np.argmax(np.abs(row)))
        return axis, int(np.sign(row[axis]))

    def contains_lps(self, points_lps_mm: ArrayLike) -> NDArray[np.bool_]:
        """Whether each LPS point lies inside the voxel grid (within half a voxel)."""
        idx = self.lps_to_index(points_lps_mm)
        upper = np.asarray(self.shape, dtype=np.float64) - 0.5
        return np.all((idx >= -0.5) & (idx <= upper), axis=1)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in self.spacing_mm)
        origin = ", ".join(f"{o:.1f}" for o in self.origin_lps_mm)
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing_mm=({spacing}), "
            f"origin_lps_mm=({origin}), position={self.info.patient_position or '?'})"
        )
