"""Read CT volumes: DICOM series, NIfTI, NRRD and MetaImage, always into LPS.

All conversion from file conventions (SimpleITK's x,y,z order, NIfTI's RAS, DICOM's
rescale) happens in this package; everything downstream sees a :class:`~bmbx_plan.Volume`.
The loaders only read: they never write, cache or modify anything on disk.
"""

from __future__ import annotations

from pathlib import Path

from bmbx_plan.io.dicom import SeriesSummary, list_dicom_series, load_dicom
from bmbx_plan.io.errors import InputError
from bmbx_plan.io.images import IMAGE_SUFFIXES, image_format, load_image
from bmbx_plan.volume import Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "SeriesSummary",
    "list_dicom_series",
    "load_ct",
    "load_dicom",
    "load_image",
]


def load_ct(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Load a CT volume in HU with its LPS geometry.

    Parameters
    ----------
    path : str or Path
        One of

        - a folder with DICOM files (searched recursively; non-DICOM files are ignored);
        - one DICOM file: its whole series is read from the files in the same folder;
        - a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
          (``.mha``, ``.mhd``) file.
    series_uid : str, optional
        SeriesInstanceUID to load from a folder holding several series. By default the
        loader picks the CT series most likely to cover the pelvis: axial, then
        ORIGINAL/PRIMARY, then largest extent, thinnest spacing, most slices. The pick
        and its reason are in ``volume.info.notes``.

    Returns
    -------
    Volume
        ``(K, J, I)`` array in HU, ``int16`` when the rescale is exact in int16 (the
        usual CT case), otherwise ``float32``; ``affine_lps`` from the headers;
        ``info`` with series UID, modality, patient position, manufacturer and notes on
        every decision (series picked, localizers skipped, slices resampled). No patient
        identity is ever copied into the result.

    Raises
    ------
    InputError
        Anything that makes the input unusable, with the file or folder and the
        problem: missing path, empty folder, no DICOM, not CT (MR, secondary capture,
        colour), a single 2D image, duplicate slice positions from different instances,
        gantry tilt (refused with its angle; reformat the series first), gaps larger
        than twice the slice spacing or more than a few irregular steps (smaller ones
        are linearly interpolated onto a regular grid and noted), corrupt or truncated
        files, undecodable compression, NaN/inf voxels, images that are not 3D.

    Examples
    --------
    >>> load_ct("/no/such/folder")
    Traceback (most recent call last):
    ...
    bmbx_plan.io.errors.InputError: /no/such/folder: no such file or folder
    """
    source = Path(path)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    if source.is_dir():
        return load_dicom(source, series_uid=series_uid)
    fmt = image_format(source)
    if fmt is None:
        return load_dicom(source, series_uid=series_uid)
    if series_uid is not None:
        raise InputError(source, f"series_uid applies to DICOM input, this is a {fmt} file")
    return load_image(source)
