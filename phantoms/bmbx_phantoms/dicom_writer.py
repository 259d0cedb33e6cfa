"""Write a :class:`~bmbx_plan.volume.Volume` as a CT series the way a scanner stores it.

The phantom's volume lives in LPS with any axis-aligned geometry. A scanner writes
axial slices whose in-plane axes depend on the patient position:

======== ========================== =================== ==========================
position ImageOrientationPatient    slice normal (LPS)  instance 1 is
======== ========================== =================== ==========================
HFS      ``[1, 0, 0, 0, 1, 0]``     +z (head)           the most superior slice
HFP      ``[-1, 0, 0, 0, -1, 0]``   +z                  the most superior slice
FFS      ``[-1, 0, 0, 0, 1, 0]``    -z (feet)           the most superior slice
FFP      ``[1, 0, 0, 0, -1, 0]``    -z                  the most superior slice
======== ========================== =================== ==========================

Instance numbers follow the table travel of a cranio-caudal helical scan (superior to
inferior, like the Siemens series in ``shared/data/real``), so head-first series are
numbered against their slice normal and feet-first series along it: a reader that
sorts by file name or instance number instead of position gets one of them wrong.

The array is only flipped and transposed (exact, no interpolation). Oblique volumes
(direction cosines that are not a signed permutation) are written as stored: array
axis ``i`` is the row direction, ``j`` the column direction, ``k`` the stacking axis.

Values are stored as integers with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024,
after rounding to the nearest HU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from bmbx_plan.volume import Volume

__all__ = ["COMPRESSIONS", "PATIENT_POSITIONS", "scanner_orientation", "write_ct_series"]

#: Row and column direction cosines (LPS) a scanner writes for each patient position.
PATIENT_POSITIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}

#: Compression name -> transfer syntax. Both encode losslessly with pydicom 3 and the
#: pylibjpeg plugins the project depends on (JPEG-LS would need pyjpegls).
COMPRESSIONS: dict[str, UID] = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless}

_HU_INTERCEPT = -1024
_J2K_MIN_PIXELS = 32
# Positions are written with 6 decimals: plenty for sub-micrometre geometry and well
# inside the 16-character limit of a DS value for any realistic scanner coordinate.
_DS_DECIMALS = 6


def scanner_orientation(patient_position: str) -> NDArray[np.float64]:
    """Direction matrix of the stored slices for a patient position.

    Parameters
    ----------
    patient_position : {"HFS", "HFP", "FFS", "FFP"}

    Returns
    -------
    (3, 3) ndarray
        Columns are the LPS unit vectors of the stored array axes ``(k, j, i)``:
        slice normal, column direction (down the rows), row direction.

    >>> scanner_orientation("FFS")[:, 0]
    array([ 0.,  0., -1.])
    """
    try:
        row, col = PATIENT_POSITIONS[patient_position]
    except KeyError:
        raise ValueError(
            f"patient_position must be one of {sorted(PATIENT_POSITIONS)}, "
            f"got {patient_position!r}"
        ) from None
    normal = np.cross(row, col)
    return np.column_stack([normal, col, row])


def _is_signed_permutation(direction: NDArray[np.float64]) -> bool:
    return bool(np.allclose(np.abs(direction).round(), np.abs(direction), atol=1e-6))


def _reorient(
    array: NDArray[Any], direction: NDArray[np.float64], target: NDArray[np.float64]
) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """Flip/transpose ``array`` (axes with LPS directions ``direction``) to ``target`` axes.

    Returns the new array and, for each new axis, the source axis it came from.
    """
    # source axis whose direction is parallel to each target axis, and the sign
    overlap = direction.T @ target  # (source, target)
    source_axes = np.argmax(np.abs(overlap), axis=0)
    out = np.transpose(array, source_axes)
    for new_axis, src in enumerate(source_axes):
        if overlap[src, new_axis] < 0:
            out = np.flip(out, axis=new_axis)
    return out, source_axes


def _ds_str(values: Sequence[float]) -> list[str]:
    return [f"{v:.{_DS_DECIMALS}f}".rstrip("0").rstrip(".") or "0" for v in values]


def write_ct_series(
    volume: Volume,
    out_dir: str | os.PathLike[str],
    *,
    patient_position: str = "HFS",
    seed: int | str = 0,
    slice_thickness_mm: float | None = None,
    series_description: str = "bmbx_phantoms CT",
    series_number: int = 1,
    patient_name: str = "PHANTOM^BMBX",
    patient_id: str = "PHANTOM",
    compress: str | None = None,
    storage_dtype: str = "uint16",
    window_center_hu: float = 40.0,
    window_width_hu: float = 400.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    file_prefix: str = "CT",
    extra_elements: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``volume`` (HU) as a single-frame CT Image Storage series.

    Parameters
    ----------
    volume : Volume
        ``(K, J, I)`` values in HU with any axis-aligned LPS geometry (or any oblique,
        non-sheared geometry, written as stored).
    out_dir : path
        Existing or new folder; files are written into it (one per slice). Each file is
        written under a temporary name and renamed, so a reader never sees half a file.
    patient_position : {"HFS", "HFP", "FFS", "FFP"}
        Sets ``PatientPosition`` and, for axis-aligned volumes, the stored orientation.
    seed : int or str
        Entropy for the UIDs: the same seed and geometry give the same UIDs.
    slice_thickness_mm : float, optional
        ``SliceThickness``; default the slice spacing.
    series_description, series_number : str, int
    patient_name, patient_id : str
        Fake identity to put in the files (tests check that it never leaks).
    compress : {None, "rle", "jpeg2000"}
        Lossless transfer syntax to encode with; ``None`` writes Explicit VR Little Endian.
    storage_dtype : {"uint16", "int16"}
        Stored integer type; values are ``HU + 1024``, clipped to the type's range.
    window_center_hu, window_width_hu : float
        Default display window.
    image_type : sequence of str
        ``ImageType`` values (use ``("ORIGINAL", "PRIMARY", "LOCALIZER")`` for a scout).
    file_prefix : str
        File names are ``{file_prefix}{instance:05d}.dcm``.
    extra_elements : dict, optional
        Keyword -> value set on every slice after everything else (test hook for
        unusual headers, e.g. ``{"Modality": "MR"}``).

    Returns
    -------
    list of Path
        The written files in instance-number order.

    Examples
    --------
    >>> import tempfile
    >>> vol = Volume.from_components(np.zeros((3, 4, 5)), spacing_mm=(2.0, 1.0, 1.0))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     files = write_ct_series(vol, tmp, patient_position="FFP")
    ...     len(files), pydicom.dcmread(files[0]).ImageOrientationPatient
    (3, [1, 0, 0, 0, -1, 0])
    """
    if compress is not None and compress not in COMPRESSIONS:
        raise ValueError(f"compress must be None or one of {sorted(COMPRESSIONS)}")
    if storage_dtype not in ("uint16", "int16"):
        raise ValueError(f"storage_dtype must be 'uint16' or 'int16', got {storage_dtype!r}")
    direction = volume.direction
    if _is_signed_permutation(direction):
        target = scanner_orientation(patient_position)
        array, source_axes = _reorient(np.asarray(volume.array), direction, target)
        spacing = volume.spacing_mm[source_axes]
        # LPS position of the stored voxel (0, 0, 0): the source corner it came from
        corner = np.zeros(3)
        for new_axis, src in enumerate(source_axes):
            if float(direction[:, src] @ target[:, new_axis]) < 0:
                corner[src] = volume.shape[src] - 1
        origin = volume.index_to_lps(corner)[0]
    else:
        scanner_orientation(patient_position)  # validates the name
        normal = np.cross(direction[:, 2], direction[:, 1])
        if not np.allclose(normal, direction[:, 0], atol=1e-6):
            raise ValueError("oblique volumes must have k = i x j (right-handed, not sheared)")
        target = direction
        array = np.asarray(volume.array)
        spacing = volume.spacing_mm
        origin = volume.origin_lps_mm

    stored = _to_stored(array, storage_dtype)
    n_slices, rows, cols = stored.shape
    if compress == "jpeg2000" and min(rows, cols) < _J2K_MIN_PIXELS:
        # OpenJPEG's default 6 resolution levels need 2**5 pixels per side
        raise ValueError(f"JPEG 2000 needs slices of at least {_J2K_MIN_PIXELS}x{_J2K_MIN_PIXELS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    uid = _UidMaker(seed, origin, spacing, stored.shape, patient_position)
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    ds = _template(
        rows=rows,
        cols=cols,
        storage_dtype=storage_dtype,
        bits_stored=16 if storage_dtype == "int16" or stored.max(initial=0) > 4095 else 12,
    )
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientPosition = patient_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesDescription = series_description
    ds.SeriesNumber = series_number
    ds.ImageType = list(image_type)
    ds.ImageOrientationPatient = _ds_str([*target[:, 2], *target[:, 1]])
    ds.PixelSpacing = _ds_str([spacing[1], spacing[2]])  # row spacing, column spacing
    ds.SliceThickness = _ds_str([slice_thickness_mm or spacing[0]])[0]
    ds.SpacingBetweenSlices = _ds_str([spacing[0]])[0]
    ds.WindowCenter = _ds_str([window_center_hu])[0]
    ds.WindowWidth = _ds_str([window_width_hu])[0]
    for keyword, value in (extra_elements or {}).items():
        setattr(ds, keyword, value)

    syntax = COMPRESSIONS[compress] if compress else ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = syntax
    encoder = get_encoder(syntax) if compress else None

    normal = target[:, 0]
    # cranio-caudal table travel: instance 1 is the most superior slice
    order = np.arange(n_slices) if normal[2] < 0 else np.arange(n_slices)[::-1]
    paths: list[Path] = []
    for instance, k in enumerate(order, start=1):
        position = origin + k * spacing[0] * normal
        sop_uid = uid(f"image{k}")
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = _ds_str(position)
        ds.SliceLocation = _ds_str([float(position @ normal)])[0]
        frame = np.ascontiguousarray(stored[k])
        if encoder is None:
            ds.PixelData = frame.tobytes()
        else:
            ds.PixelData = encapsulate([encoder.encode(frame, **_encode_kwargs(ds))])
        ds["PixelData"].VR = "OB" if encoder is not None else "OW"
        path = out / f"{file_prefix}{instance:05d}.dcm"
        tmp = path.with_name(path.name + ".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _to_stored(array: NDArray[Any], storage_dtype: str) -> NDArray[Any]:
    info = np.iinfo(np.dtype(storage_dtype))
    hu = np.rint(np.asarray(array, dtype=np.float64)) - _HU_INTERCEPT
    return np.clip(hu, info.min, info.max).astype(storage_dtype)


def _encode_kwargs(ds: Dataset) -> dict[str, Any]:
    return {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": 1,
        "bits_allocated": ds.BitsAllocated,
        "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation,
        "photometric_interpretation": ds.PhotometricInterpretation,
        "number_of_frames": 1,
    }


class _UidMaker:
    """Deterministic UIDs from a seed and the series geometry."""

    def __init__(self, seed: int | str, *parts: object) -> None:
        self._base = f"bmbx_phantoms|{seed}|" + "|".join(
            np.array2string(np.asarray(p), precision=6) if not isinstance(p, str) else p
            for p in parts
        )

    def __call__(self, what: str) -> UID:
        return generate_uid(entropy_srcs=[self._base, what])


def _template(*, rows: int, cols: int, storage_dtype: str, bits_stored: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "bmbx_phantoms"
    ds.ManufacturerModelName = "synthetic"
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "PELVIS"
    ds.KVP = "120"
    ds.GantryDetectorTilt = "0"
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if storage_dtype == "int16" else 0
    ds.RescaleIntercept = str(_HU_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds
