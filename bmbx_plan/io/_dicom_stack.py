"""Geometry of a stack of single-frame DICOM slices: order, spacing, gaps, tilt.

Everything here works on the headers only. Slices are ordered by their position along
the slice normal (``ImagePositionPatient . (row x column)``), never by file name or
``InstanceNumber``.

Rules (documented in :func:`bmbx_plan.io.load_ct`):

- two slices at the same position: dropped when they are the same instance
  (same SOPInstanceUID, e.g. a file copied twice), otherwise refused;
- positions that drift inside the slice plane (gantry tilt or a sheared stack):
  refused, with the tilt angle;
- irregular spacing (missing slices, uneven steps): resampled by linear interpolation
  onto a regular grid when the largest step is at most twice the nominal spacing and
  only a few steps are irregular; refused otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.io._dicom_headers import SliceHeader
from bmbx_plan.io.errors import InputError

__all__ = ["StackGeometry", "plan_stack"]

# Steps are "regular" within 2 % of the nominal spacing (or 1 micrometre): DS values
# carry ~6 significant digits, and scanners round positions to 0.01 mm at worst.
_SPACING_RELATIVE_TOLERANCE = 0.02
_SPACING_ABSOLUTE_TOLERANCE_MM = 1e-3
# In-plane drift of slice origins allowed before calling it tilt: a tenth of a pixel
# over the whole stack is invisible, a real gantry tilt moves several pixels.
_DRIFT_TOLERANCE_PIXELS = 0.1
# Resampling across gaps is allowed up to this many times the nominal spacing ...
_MAX_GAP_FACTOR = 2.0
# Steps within this factor of the smallest one define the nominal spacing.
_NOMINAL_CLUSTER = 1.5
# ... and for at most this many irregular steps (or this fraction of the steps).
_MAX_IRREGULAR_STEPS = 3
_MAX_IRREGULAR_FRACTION = 0.05


@dataclass(frozen=True)
class StackGeometry:
    """Sorted slices and the regular grid they are mapped onto.

    Attributes
    ----------
    slices : tuple of SliceHeader
        The slices in increasing position along ``normal``, duplicates removed.
    positions_mm : (N,) ndarray
        Position of each slice along ``normal`` relative to the first one, in mm.
    affine_lps : (4, 4) ndarray
        Index ``(k, j, i)`` -> LPS mm for the output grid.
    grid_positions_mm : (K,) ndarray or None
        Positions of the output slices along ``normal`` (relative to the first slice)
        when the stack must be resampled; ``None`` when the slices are the grid.
    notes : tuple of str
    """

    slices: tuple[SliceHeader, ...]
    positions_mm: NDArray[np.float64]
    affine_lps: NDArray[np.float64]
    grid_positions_mm: NDArray[np.float64] | None
    notes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape ``(K, J, I)``."""
        first = self.slices[0]
        count = len(self.slices) if self.grid_positions_mm is None else len(self.grid_positions_mm)
        return (count, first.rows, first.columns)


def _unit_axes(first: SliceHeader) -> tuple[NDArray[np.float64], ...]:
    if first.orientation is None:
        raise InputError(first.path, "no ImageOrientationPatient: slice geometry unknown")
    iop = np.asarray(first.orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    if min(np.linalg.norm(row), np.linalg.norm(col)) < 0.5:
        raise InputError(first.path, f"invalid ImageOrientationPatient {list(iop)}")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise InputError(
            first.path, "ImageOrientationPatient row and column directions are not orthogonal"
        )
    return row, col, np.cross(row, col)


def _drop_duplicates(
    slices: list[SliceHeader], s: NDArray[np.float64], tol_mm: float
) -> tuple[list[SliceHeader], NDArray[np.float64], list[str]]:
    keep = [0]
    dropped = 0
    for n in range(1, len(slices)):
        prev = keep[-1]
        if s[n] - s[prev] > tol_mm:
            keep.append(n)
            continue
        a, b = slices[prev], slices[n]
        if a.sop_instance_uid and a.sop_instance_uid == b.sop_instance_uid:
            dropped += 1
            continue
        raise InputError(
            b.path.parent,
            f"two different slices at the same position ({s[n]:.2f} mm along the slice "
            f"normal): {a.path.name} and {b.path.name}; the series mixes acquisitions, "
            "remove one set or export the series again",
        )
    notes = []
    if dropped:
        notes.append(
            f"Dropped {dropped} duplicate file(s) of the same slice (same SOPInstanceUID)."
        )
    return [slices[n] for n in keep], s[keep], notes


def _check_tilt(
    slices: list[SliceHeader],
    origins: NDArray[np.float64],
    row: NDArray[np.float64],
    col: NDArray[np.float64],
    s: NDArray[np.float64],
    pixel_mm: float,
) -> None:
    offsets = origins - origins[0]
    drift = np.hypot(offsets @ row, offsets @ col)
    if float(drift.max()) <= _DRIFT_TOLERANCE_PIXELS * pixel_mm:
        return
    extent = float(s[-1] - s[0])
    tilt_deg = float(np.degrees(np.arctan2(drift[-1], extent))) if extent > 0 else 90.0
    raise InputError(
        slices[0].path.parent,
        f"gantry tilt or sheared stack: slice origins move {drift.max():.1f} mm inside the "
        f"slice plane over {extent:.1f} mm (tilt {tilt_deg:.1f} deg from the slice normal); "
        "bmbx_plan does not reformat tilted stacks, reconstruct the series without tilt "
        "or reformat it (e.g. dcm2niix) first",
    )


def _regular_grid(
    slices: list[SliceHeader], s: NDArray[np.float64]
) -> tuple[float, NDArray[np.float64] | None, list[str]]:
    """Nominal spacing and, when the steps are irregular, the resampling grid."""
    steps = np.diff(s)
    # the nominal spacing is the typical step among the smallest ones: with a few
    # slices a plain median would be pulled up by the gaps it is meant to find
    small = steps[steps <= _NOMINAL_CLUSTER * steps.min()]
    nominal = float(np.median(small))
    tol = max(_SPACING_ABSOLUTE_TOLERANCE_MM, _SPACING_RELATIVE_TOLERANCE * nominal)
    irregular = np.flatnonzero(np.abs(steps - nominal) > tol)
    if irregular.size == 0:
        return float((s[-1] - s[0]) / (len(s) - 1)), None, []
    worst = int(np.argmax(steps))
    where = (
        f"largest step {steps[worst]:.3g} mm between {slices[worst].path.name} and "
        f"{slices[worst + 1].path.name}"
    )
    allowed = max(_MAX_IRREGULAR_STEPS, int(_MAX_IRREGULAR_FRACTION * steps.size))
    if steps[worst] > _MAX_GAP_FACTOR * nominal + tol or irregular.size > allowed:
        raise InputError(
            slices[0].path.parent,
            f"missing slices or uneven slice spacing: {irregular.size} of {steps.size} steps "
            f"differ from the nominal {nominal:.3g} mm ({where}); refusing to interpolate "
            f"more than {allowed} steps or across gaps over {_MAX_GAP_FACTOR:g}x the spacing",
        )
    extent = float(s[-1] - s[0])
    count = round(extent / nominal) + 1
    grid = np.linspace(0.0, extent, count)
    note = (
        f"Slice spacing is irregular ({irregular.size} of {steps.size} steps differ from "
        f"{nominal:.3g} mm, {where}): resampled {len(s)} slices onto {count} slices at "
        f"{extent / (count - 1):.4g} mm by linear interpolation along the slice axis."
    )
    return extent / (count - 1), grid, [note]


def plan_stack(slices: list[SliceHeader]) -> StackGeometry:
    """Sort and validate the slices of one series and derive the output grid.

    Parameters
    ----------
    slices : list of SliceHeader
        Single-frame slices of one series with the same orientation and size.

    Raises
    ------
    InputError
        One slice only, missing positions or spacing, duplicates of different
        instances, gantry tilt, or gaps too large to interpolate.
    """
    first = slices[0]
    folder = first.path.parent
    row, col, normal = _unit_axes(first)
    missing = [h.path.name for h in slices if h.position is None or h.pixel_spacing is None]
    if missing:
        raise InputError(
            folder,
            f"{len(missing)} slice(s) lack ImagePositionPatient or PixelSpacing, "
            f"e.g. {missing[0]}",
        )
    origins = np.array([h.position for h in slices], dtype=np.float64)
    along = origins @ normal
    order = np.argsort(along, kind="stable")
    ordered = [slices[n] for n in order]
    s = along[order]
    pixel = first.pixel_spacing or (1.0, 1.0)
    if len(ordered) < 2:
        raise InputError(first.path, "a single 2D image, not a 3D CT stack")
    ordered, s, notes = _drop_duplicates(ordered, s, _SPACING_ABSOLUTE_TOLERANCE_MM * 10)
    if len(ordered) < 2:
        raise InputError(folder, "all slices are copies of one 2D image, not a 3D CT stack")
    origins = np.array([h.position for h in ordered], dtype=np.float64)
    _check_tilt(ordered, origins, row, col, s, min(pixel))
    spacing, grid, gap_notes = _regular_grid(ordered, s)
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing
    affine[:3, 1] = col * pixel[0]  # PixelSpacing is (row spacing, column spacing)
    affine[:3, 2] = row * pixel[1]
    affine[:3, 3] = origins[0]
    return StackGeometry(
        slices=tuple(ordered),
        positions_mm=s - s[0],
        affine_lps=affine,
        grid_positions_mm=grid,
        notes=(*notes, *gap_notes),
    )
