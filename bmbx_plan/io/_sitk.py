"""The one place that converts between SimpleITK's image conventions and :class:`Volume`.

SimpleITK indexes pixels as ``(x, y, z) = (i, j, k)`` and its numpy arrays as
``(z, y, x) = (k, j, i)``; ``GetDirection()`` is a row-major 3x3 matrix whose columns are
the LPS directions of the x, y, z index axes. Its physical space is already LPS (ITK
converts NIfTI's RAS on read), so only the axis order changes here.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from bmbx_plan.volume import ScanInfo, Volume

__all__ = ["affine_from_sitk", "sitk_to_volume", "volume_to_sitk"]


def affine_from_sitk(image: sitk.Image) -> NDArray[np.float64]:
    """4x4 affine mapping numpy index ``(k, j, i)`` of a 3D ``image`` to LPS mm.

    >>> img = sitk.Image([4, 3, 2], sitk.sitkInt16)  # x=4, y=3, z=2
    >>> img.SetSpacing([0.5, 1.0, 2.0])
    >>> affine_from_sitk(img)[:3, :3]
    array([[0. , 0. , 0.5],
           [0. , 1. , 0. ],
           [2. , 0. , 0. ]])
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    scaled = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = scaled[:, ::-1]  # columns x, y, z -> k, j, i
    affine[:3, 3] = image.GetOrigin()
    return affine


def sitk_to_volume(image: sitk.Image, info: ScanInfo) -> Volume:
    """Wrap a 3D scalar SimpleITK image as a :class:`Volume` (the array is copied)."""
    return Volume(sitk.GetArrayFromImage(image), affine_from_sitk(image), info)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The inverse of :func:`sitk_to_volume` (geometry and voxels; not the info)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    spacing = volume.spacing_mm
    direction = volume.direction
    image.SetSpacing([float(v) for v in spacing[::-1]])
    image.SetDirection([float(v) for v in direction[:, ::-1].ravel()])
    image.SetOrigin([float(v) for v in volume.origin_lps_mm])
    return image
