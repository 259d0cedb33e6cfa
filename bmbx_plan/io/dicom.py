"""Load a CT volume from a DICOM folder or file.

The work is split by concept: :mod:`._dicom_headers` scans headers (pydicom, no pixels),
:mod:`._dicom_series` groups and picks a series, :mod:`._dicom_stack` sorts the slices
and checks their geometry, :mod:`._dicom_pixels` decodes and rescales to HU. The geometry
of the result always comes from the headers (``ImageOrientationPatient``,
``ImagePositionPatient``, ``PixelSpacing``), never from file names or instance numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bmbx_plan.io._dicom_headers import SliceHeader, iter_files, read_header, scan_files
from bmbx_plan.io._dicom_pixels import read_stack
from bmbx_plan.io._dicom_series import SeriesSummary, choose_series, group_series
from bmbx_plan.io._dicom_stack import plan_stack
from bmbx_plan.io.errors import InputError
from bmbx_plan.io.images import IMAGE_SUFFIXES
from bmbx_plan.volume import ScanInfo, Volume

__all__ = ["SeriesSummary", "list_dicom_series", "load_dicom"]

logger = logging.getLogger(__name__)


def _scan(path: Path) -> tuple[list[SliceHeader], list[str], Path | None]:
    """Headers of the images at ``path`` (a folder, or a file and its folder)."""
    if path.is_dir():
        files = list(iter_files(path))
        if not files:
            raise InputError(path, "the folder is empty")
        headers, skipped = scan_files(files)
        if not headers:
            raise InputError(
                path, f"no DICOM images in this folder ({len(files)} file(s), none DICOM images)"
            )
        notes = [f"Ignored {len(skipped)} file(s) that are not DICOM images."] if skipped else []
        return headers, notes, None
    first = read_header(path)
    if not isinstance(first, SliceHeader):
        raise InputError(
            path,
            f"{first.reason}; expected a DICOM image, a DICOM folder or one of "
            f"{', '.join(IMAGE_SUFFIXES)}",
        )
    siblings = [p for p in sorted(path.parent.iterdir()) if p.is_file() and p != path]
    headers, _ = scan_files(siblings)
    same = [h for h in headers if h.series_key == first.series_key]
    return [first, *same], [], path


def list_dicom_series(path: str | Path) -> list[SeriesSummary]:
    """Summaries of the DICOM series under ``path`` (a folder, searched recursively).

    Raises
    ------
    InputError
        The path does not exist, is empty or holds no DICOM images.
    """
    folder = Path(path)
    if not folder.exists():
        raise InputError(folder, "no such file or folder")
    headers, _, _ = _scan(folder)
    return group_series(headers)


def load_dicom(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Load one CT series from a DICOM folder (recursive) or from one of its files.

    See :func:`bmbx_plan.io.load_ct` for the rules; this is its DICOM branch.

    Parameters
    ----------
    path : str or Path
        A folder, or one file (its series is read from the files next to it).
    series_uid : str, optional
        SeriesInstanceUID to load; default: picked by the rule in
        :mod:`bmbx_plan.io._dicom_series`.

    Returns
    -------
    Volume
        HU (int16 when exact, else float32) on the ``(K, J, I)`` grid of the slices.
    """
    path = Path(path)
    headers, notes, single_file = _scan(path)
    series = group_series(headers)
    if (
        single_file is not None
        and series_uid is not None
        and series[0].series_instance_uid != series_uid
    ):
        raise InputError(
            path,
            f"this file belongs to series {series[0].series_instance_uid or '(none)'}, "
            f"not {series_uid}",
        )
    chosen, pick_notes = choose_series(series, str(path), series_uid=series_uid)
    geometry = plan_stack(list(chosen.slices))
    array, pixel_notes = read_stack(geometry)
    first = geometry.slices[0]
    all_notes = (*notes, *pick_notes, *chosen.notes, *geometry.notes, *pixel_notes)
    info = ScanInfo(
        source=str(path),
        series_instance_uid=chosen.series_instance_uid,
        modality=first.modality or "CT",
        patient_position=first.patient_position,
        manufacturer=first.manufacturer,
        slice_thickness_mm=_slice_thickness(geometry.slices),
        notes=all_notes,
    )
    for note in all_notes:
        logger.info("%s: %s", path, note)
    return Volume(array, geometry.affine_lps, info)


def _slice_thickness(slices: Sequence[SliceHeader]) -> float | None:
    """The slices' usual SliceThickness (their median), None where none records one."""
    values = [h.slice_thickness for h in slices if h.slice_thickness is not None]
    return float(np.median(values)) if values else None
