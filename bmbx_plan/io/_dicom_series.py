"""Group DICOM slices into series, say which are usable CT, and pick one.

Pick rule (when the caller gives no ``series_uid``): among the usable CT series, prefer
axial (slice normal within 30 deg of the patient's z axis), then ORIGINAL/PRIMARY, then
the largest extent along the slice normal (in 5 mm steps, so two reconstructions of one
acquisition tie), then the thinnest slice spacing, then the most slices. "Usable" means
modality CT (or CT Image Storage), not a secondary capture, monochrome, single-frame,
and at least two non-localizer slices of one orientation and size.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from bmbx_plan.io._dicom_headers import CT_IMAGE_CLASSES, SliceHeader
from bmbx_plan.io.errors import InputError

__all__ = ["SeriesSummary", "choose_series", "group_series"]

_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_AXIAL_MAX_ANGLE_DEG = 30.0
_EXTENT_BIN_MM = 5.0


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a DICOM folder (no patient identity).

    Attributes
    ----------
    series_instance_uid : str
        ``""`` when the files carry none (anonymised); such files are grouped by frame
        of reference and series number.
    modality, description : str
    n_files : int
        All image files of the series, localizers included.
    slices : tuple of SliceHeader
        The main stack: non-localizer slices of the most common orientation and size.
    problem : str
        Why the series cannot be loaded as a CT volume; ``""`` when it can.
    notes : tuple of str
        Slices left out of the main stack and why.
    """

    series_instance_uid: str
    modality: str
    description: str
    n_files: int
    slices: tuple[SliceHeader, ...] = field(repr=False)
    problem: str
    notes: tuple[str, ...]

    @property
    def usable(self) -> bool:
        """Whether this series can be loaded as a CT volume."""
        return not self.problem

    @property
    def extent_mm(self) -> float:
        """Extent of the main stack along its slice normal, in mm."""
        if len(self.slices) < 2 or self.slices[0].orientation is None:
            return 0.0
        normal = _normal(self.slices[0])
        along = [np.dot(h.position, normal) for h in self.slices if h.position is not None]
        return float(max(along) - min(along)) if along else 0.0

    @property
    def spacing_mm(self) -> float:
        """Median step between slices along the normal (mm), ``inf`` if unknown."""
        if len(self.slices) < 2 or self.slices[0].orientation is None:
            return float("inf")
        normal = _normal(self.slices[0])
        along = np.sort([np.dot(h.position, normal) for h in self.slices if h.position])
        steps = np.diff(along)
        steps = steps[steps > 1e-3]
        return float(np.median(steps)) if steps.size else float("inf")

    @property
    def axial(self) -> bool:
        """Slice normal within 30 deg of the patient z axis."""
        if not self.slices or self.slices[0].orientation is None:
            return False
        cos = abs(float(_normal(self.slices[0])[2]))
        return cos >= np.cos(np.radians(_AXIAL_MAX_ANGLE_DEG))

    @property
    def original_primary(self) -> bool:
        """ImageType starts with ORIGINAL\\PRIMARY."""
        return bool(self.slices) and self.slices[0].image_type[:2] == ("ORIGINAL", "PRIMARY")

    def describe(self) -> str:
        """One line without patient identity, e.g. for notes and error messages."""
        uid = self.series_instance_uid or "(no SeriesInstanceUID)"
        text = f"{uid} [{self.modality or '?'}, {len(self.slices)} slices"
        if self.usable:
            text += f", {self.spacing_mm:.3g} mm spacing, {self.extent_mm:.0f} mm extent"
        if self.description:
            text += f", '{self.description}'"
        return text + "]"


def _normal(header: SliceHeader) -> np.ndarray:
    iop = np.asarray(header.orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _stack_key(h: SliceHeader) -> tuple[object, ...]:
    iop = tuple(np.round(h.orientation, 3)) if h.orientation else None
    spacing = tuple(np.round(h.pixel_spacing, 4)) if h.pixel_spacing else None
    return (iop, h.rows, h.columns, spacing)


def _problem(first: SliceHeader, stack: list[SliceHeader]) -> str:
    if first.sop_class_uid.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "a secondary capture (screenshot), not CT images"
    is_ct = first.modality == "CT" or (
        not first.modality and first.sop_class_uid in CT_IMAGE_CLASSES
    )
    if not is_ct:
        return f"modality {first.modality or 'unknown'}, not CT"
    if first.samples_per_pixel != 1 or first.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (
            f"colour images (PhotometricInterpretation {first.photometric or '?'}, "
            f"{first.samples_per_pixel} samples per pixel), not CT values"
        )
    if first.number_of_frames > 1:
        return (
            "multi-frame (enhanced) CT, which bmbx_plan does not read; export the series "
            "as single-frame CT Image Storage"
        )
    if not stack:
        return "only localizer (scout) images"
    if len(stack) < 2:
        return "a single 2D image (one slice), not a 3D CT stack"
    return ""


def _summarise(files: list[SliceHeader]) -> SeriesSummary:
    first = files[0]
    notes: list[str] = []
    scouts = [h for h in files if h.is_localizer]
    if scouts:
        notes.append(f"Skipped {len(scouts)} localizer image(s) (ImageType LOCALIZER).")
    groups: dict[tuple[object, ...], list[SliceHeader]] = defaultdict(list)
    for h in files:
        if not h.is_localizer:
            groups[_stack_key(h)].append(h)
    stack: list[SliceHeader] = []
    if groups:
        stack = max(groups.values(), key=len)
        others = sum(len(g) for g in groups.values()) - len(stack)
        if others:
            notes.append(
                f"Skipped {others} image(s) whose orientation or size differs from the "
                f"{len(stack)}-slice stack (localizers or reformats)."
            )
    return SeriesSummary(
        series_instance_uid=first.series_uid,
        modality=first.modality,
        description=first.series_description,
        n_files=len(files),
        slices=tuple(stack),
        problem=_problem(first if not stack else stack[0], stack),
        notes=tuple(notes),
    )


def group_series(headers: list[SliceHeader]) -> list[SeriesSummary]:
    """Group image headers into series summaries, in a stable order."""
    groups: dict[tuple[str, str, str], list[SliceHeader]] = defaultdict(list)
    for h in headers:
        groups[h.series_key].append(h)
    return [_summarise(groups[key]) for key in sorted(groups)]


def _rank(summary: SeriesSummary) -> tuple[bool, bool, int, float, int]:
    return (
        summary.axial,
        summary.original_primary,
        int(summary.extent_mm // _EXTENT_BIN_MM),
        -summary.spacing_mm,
        len(summary.slices),
    )


def choose_series(
    series: list[SeriesSummary], source: str, *, series_uid: str | None
) -> tuple[SeriesSummary, list[str]]:
    """Pick the series to load and say why.

    Raises
    ------
    InputError
        Unknown ``series_uid`` (the message lists the available UIDs), the chosen series
        is not usable, or no series is.
    """
    if series_uid is not None:
        matches = [s for s in series if s.series_instance_uid == series_uid]
        if not matches:
            available = ", ".join(s.describe() for s in series)
            raise InputError(
                source, f"no series with SeriesInstanceUID {series_uid}; available: {available}"
            )
        chosen = matches[0]
        if not chosen.usable:
            raise InputError(source, f"series {series_uid} is {chosen.problem}")
        return chosen, [f"Loaded series {chosen.describe()} as requested."]
    usable = [s for s in series if s.usable]
    if not usable:
        if len(series) == 1:
            raise InputError(source, f"the DICOM series is {series[0].problem}")
        found = Counter(s.problem for s in series)
        listing = "; ".join(f"{n} series: {problem}" for problem, n in found.items())
        raise InputError(source, f"no usable CT series among {len(series)} ({listing})")
    chosen = max(usable, key=_rank)
    if len(series) == 1:
        return chosen, []
    others = [s for s in series if s is not chosen]
    note = (
        f"Picked series {chosen.describe()} among {len(series)} series (rule: CT, axial, "
        "ORIGINAL/PRIMARY, largest extent, thinnest spacing, most slices); not picked: "
        + "; ".join(s.describe() + (f" ({s.problem})" if s.problem else "") for s in others)
        + ". Pass series_uid to choose another."
    )
    return chosen, [note]
