"""Load a CT volume from a NIfTI, NRRD or MetaImage file.

SimpleITK reads all of them and already expresses their geometry in LPS (NIfTI's RAS
is converted by ITK on read); :mod:`bmbx_plan.io._sitk` changes the axis order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from bmbx_plan.io._nifti import count_nonfinite
from bmbx_plan.io._sitk import affine_from_sitk
from bmbx_plan.io.errors import InputError
from bmbx_plan.volume import ScanInfo, Volume

__all__ = ["IMAGE_SUFFIXES", "image_format", "load_image"]

#: File name endings :func:`load_image` reads, and the format name used in messages.
IMAGE_SUFFIXES: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}
_INT16 = np.iinfo(np.int16)


def image_format(path: Path) -> str | None:
    """Format name for a supported file ending, else ``None``."""
    name = path.name.lower()
    return next((fmt for suffix, fmt in IMAGE_SUFFIXES.items() if name.endswith(suffix)), None)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with a file:line location; the description follows it.
    useful = [line for line in lines if not line.startswith(("/", "itk::", "sitk::"))]
    return (useful or lines or [type(exc).__name__])[-1][:200]


def _as_hu_array(array: NDArray[Any], path: Path) -> tuple[NDArray[Any], str]:
    """int16 when the values are integers that fit, else float32; refuses NaN/inf."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(path, f"{bad} voxel(s) are NaN or infinite")
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if _INT16.min <= lo and hi <= _INT16.max:
            return array.astype(np.int16, copy=False), ""
        return array.astype(np.float32), f"Converted {array.dtype} voxels to float32."
    if array.dtype != np.float32:
        return array.astype(np.float32), f"Converted {array.dtype} voxels to float32."
    return array, ""


def load_image(path: str | Path) -> Volume:
    """Load a 3D scalar image file (NIfTI, NRRD, MetaImage) as a :class:`Volume`.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.

    Returns
    -------
    Volume
        Values as stored (assumed HU): int16 when they are integers within its range,
        else float32. NIfTI scaling (``scl_slope``/``scl_inter``) is applied by ITK.

    Raises
    ------
    InputError
        Unreadable file, not 3D (2D, 4D with more than one frame), vector pixels,
        NaN or infinite voxels, or sheared geometry.
    """
    path = Path(path)
    fmt = image_format(path) or "image"
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"cannot read {fmt} file ({_first_line(exc)})") from None
    notes = [f"Read {fmt} file with SimpleITK; geometry converted to LPS."]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path,
            f"{image.GetNumberOfComponentsPerPixel()} values per voxel (vector/RGB image), "
            "not a scalar CT volume",
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        notes.append("Dropped the singleton 4th dimension.")
    if image.GetDimension() != 3:
        raise InputError(
            path, f"{image.GetDimension()}D image of size {size}; a CT volume must be 3D"
        )
    if min(image.GetSize()) < 2 and image.GetSize()[2] < 2:
        raise InputError(path, f"a single 2D slice (size {image.GetSize()}), not a 3D volume")
    if fmt == "NIfTI":
        # ITK turns NaN/inf into 0 while reading NIfTI: count them in the raw file
        bad = count_nonfinite(path)
        if bad:
            raise InputError(path, f"{bad} voxel(s) are NaN or infinite")
    array, note = _as_hu_array(sitk.GetArrayFromImage(image), path)
    if note:
        notes.append(note)
    info = ScanInfo(source=str(path), notes=tuple(notes))
    try:
        return Volume(array, affine_from_sitk(image), info)
    except ValueError as exc:
        raise InputError(path, f"unusable geometry: {exc}") from None
