"""Scan DICOM files for the header fields the loader needs (never pixels, never identity).

Only the fields listed in :class:`SliceHeader` leave this module: patient name, ID, birth
date, accession number and the like are parsed by pydicom but never copied, so they
cannot reach a note, a repr, an exception message or a log record.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from bmbx_plan.io.errors import InputError

__all__ = [
    "CT_IMAGE_CLASSES",
    "SkippedFile",
    "SliceHeader",
    "iter_files",
    "read_header",
    "scan_files",
]

CT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}


@dataclass(frozen=True)
class SliceHeader:
    """The header of one DICOM image file, reduced to what loading needs.

    Positions and orientations are in LPS mm exactly as written in the file; ``None``
    where the file lacks the element.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    image_type: tuple[str, ...]
    frame_of_reference_uid: str
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    slope: float
    intercept: float
    transfer_syntax: str
    patient_position: str
    manufacturer: str
    slice_thickness: float | None = None

    @property
    def series_key(self) -> tuple[str, str, str]:
        """Groups files into series; falls back to frame of reference and series number
        for files whose SeriesInstanceUID was blanked by an anonymiser."""
        if self.series_uid:
            return (self.series_uid, "", "")
        return ("", self.frame_of_reference_uid, str(self.series_number or ""))

    @property
    def is_localizer(self) -> bool:
        """ImageType says LOCALIZER (a scout / topogram)."""
        return "LOCALIZER" in self.image_type


@dataclass(frozen=True)
class SkippedFile:
    """A file in the input that is not a DICOM image, and why."""

    path: Path
    reason: str


def iter_files(folder: Path) -> Iterator[Path]:
    """All regular files below ``folder``, recursively, in a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root, name)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    return str(value).strip()


def _floats(ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _number(ds: Any, keyword: str, default: float) -> float:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    return float(value)


def _positive(ds: Any, keyword: str) -> float | None:
    """A positive number, or None where the element is absent, empty or not one."""
    try:
        number = float(ds.get(keyword, None))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def read_header(path: Path) -> SliceHeader | SkippedFile:
    """Read one file's header.

    Returns
    -------
    SliceHeader or SkippedFile
        ``SkippedFile`` for files that are not DICOM or hold no image (DICOMDIR,
        structured reports, presentation states ...).

    Raises
    ------
    InputError
        A file that starts like DICOM but cannot be parsed (truncated or corrupt).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return SkippedFile(path, "not a DICOM file")
    except (OSError, EOFError) as exc:
        if isinstance(exc, PermissionError):
            raise InputError(path, "cannot be read (permission denied)") from None
        raise InputError(path, f"truncated or corrupt DICOM file ({type(exc).__name__})") from None
    except Exception as exc:  # pydicom raises many types on garbage; all mean "corrupt"
        raise InputError(path, f"corrupt DICOM header ({type(exc).__name__})") from None
    try:
        return _header_from_dataset(path, ds)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"invalid DICOM header value ({exc})") from None


def _header_from_dataset(path: Path, ds: Any) -> SliceHeader | SkippedFile:
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or (
        _text(meta, "MediaStorageSOPClassUID") if meta else ""
    )
    if not sop_class:
        # every valid DICOM file names its SOP class; pydicom returns what it could parse
        # from a damaged file instead of raising
        raise InputError(path, "corrupt or truncated DICOM file (no SOP Class UID readable)")
    if "Rows" not in ds or "Columns" not in ds:
        if sop_class in CT_IMAGE_CLASSES or _text(ds, "Modality").upper() == "CT":
            raise InputError(path, "truncated or corrupt CT image (no Rows/Columns readable)")
        return SkippedFile(path, "no image in this DICOM file")
    sop_uid = _text(ds, "SOPInstanceUID") or (
        _text(meta, "MediaStorageSOPInstanceUID") if meta else ""
    )
    syntax = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    spacing = _floats(ds, "PixelSpacing", 2)
    position = _floats(ds, "ImagePositionPatient", 3)
    series_number = ds.get("SeriesNumber", None)
    return SliceHeader(
        path=path,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=None if series_number in (None, "") else int(series_number),
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality").upper(),
        image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType", None) or ())),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=None if position is None else (position[0], position[1], position[2]),
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        number_of_frames=int(_number(ds, "NumberOfFrames", 1)),
        samples_per_pixel=int(_number(ds, "SamplesPerPixel", 1)),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        bits_allocated=int(_number(ds, "BitsAllocated", 16)),
        bits_stored=int(_number(ds, "BitsStored", _number(ds, "BitsAllocated", 16))),
        pixel_representation=int(_number(ds, "PixelRepresentation", 0)),
        slope=_number(ds, "RescaleSlope", 1.0),
        intercept=_number(ds, "RescaleIntercept", 0.0),
        transfer_syntax=syntax,
        patient_position=_text(ds, "PatientPosition").upper(),
        manufacturer=_text(ds, "Manufacturer"),
        slice_thickness=_positive(ds, "SliceThickness"),
    )


def scan_files(paths: list[Path]) -> tuple[list[SliceHeader], list[SkippedFile]]:
    """Read the headers of ``paths``; split them into images and skipped files."""
    headers: list[SliceHeader] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        result = read_header(path)
        if isinstance(result, SliceHeader):
            headers.append(result)
        else:
            skipped.append(result)
    return headers, skipped
