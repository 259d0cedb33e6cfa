"""Planning parameters: the needle catalogue, core lengths, margins and angle limits.

Every default comes from the table in the project's domain notes (DOMAIN.md, "Numbers to
start from"); every value can be overridden.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "DEFAULT_MARGINS_MM",
    "MIN_RESERVE_MM",
    "NEEDLES",
    "RESERVE_PER_VOXEL",
    "RESERVE_SHARES",
    "VALIDATED_VOXEL_MM",
    "Needle",
    "PlanningParameters",
    "Side",
    "needle_named",
]


class Side(enum.Enum):
    """The ilium to biopsy."""

    LEFT = "left"
    RIGHT = "right"

    @property
    def lateral_sign(self) -> float:
        """+1 when lateral is +x (the patient's left in LPS), -1 for the right ilium."""
        return 1.0 if self is Side.LEFT else -1.0

    @property
    def other(self) -> Side:
        """The opposite side."""
        return Side.RIGHT if self is Side.LEFT else Side.LEFT

    @classmethod
    def parse(cls, value: str | Side) -> Side:
        """``"left"`` / ``"right"`` (any case) or a :class:`Side`."""
        if isinstance(value, Side):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"side must be 'left' or 'right', got {value!r}") from None


@dataclass(frozen=True)
class Needle:
    """A biopsy needle.

    Attributes
    ----------
    name : str
        Catalogue name, e.g. ``"11G-100"``.
    outer_diameter_mm : float
    usable_length_mm : float
        Length that can go into the patient (nominal length minus the handle).
    """

    name: str
    outer_diameter_mm: float
    usable_length_mm: float

    def __post_init__(self) -> None:
        if not self.outer_diameter_mm > 0 or not self.usable_length_mm > 0:
            raise ValueError(
                f"needle {self.name!r}: diameter and usable length must be positive, got "
                f"{self.outer_diameter_mm} mm and {self.usable_length_mm} mm"
            )

    @property
    def radius_mm(self) -> float:
        """Half the outer diameter."""
        return 0.5 * self.outer_diameter_mm


#: Jamshidi-type and powered-driver needles; usable length = nominal minus about 10 mm.
NEEDLES: dict[str, Needle] = {
    "11G-100": Needle("11G-100", 3.0, 90.0),
    "11G-150": Needle("11G-150", 3.0, 140.0),
    "8G-100": Needle("8G-100", 4.2, 90.0),
}

#: The search's reserve beyond each hard limit, in units of the reserve (mm; degrees for
#: the incidence), measured by ``python -m bmbx_phantoms.reserve``: candidates near their
#: limits, drawn as a user would draw them and checked on the segmentation and on the
#: phantom's truth (19,192 lines on 22 phantoms, 2 x 2.5 mm voxels, a reserve of 1.25 mm;
#: ``benchmarks/results/reserve_25.txt``). The needle's reach runs from where the line
#: leaves the body, air against tissue: the segmentation never moved it, so it keeps no
#: reserve. The core length moves with the cortex entry (by up to 1.5 mm, never where the
#: truth failed it) and the cortical tables by up to 1.5 mm. The SI joint is read partly
#: off the fitted auricular surfaces, which slide on a pelvis the shape model has not
#: seen. On the 30 atlas pelves, each segmented with a model of the others
#: (``python -m bmbx_phantoms.heldout --reserve``), two shares kept 11 of 20,998 lines
#: that the truth rejects there, on two pelves; with three, 19,816 lines moved it by
#: 4.1 mm (99.9 %; 4.9 at most) and none the truth rejects is kept
#: (``benchmarks/results/heldout_reserve_30.txt``).
RESERVE_SHARES: dict[str, float] = {
    "needle_length": 0.0,
    "cortex_incidence": 1.0,
    "core_length": 0.5,
    "core_cortex_clearance": 0.5,
    "sciatic_notch": 1.0,
    "si_joint": 3.0,
}

#: The smallest default reserve (mm): the one the safety study holds at 2 x 2 x 2.5 mm.
#: A finer CT does not make the segmentation's tables and joints finer (the bones are
#: split on a working grid of about 1.5 mm): on 44 phantoms at 1 x 1 x 1.25 mm, half the
#: voxel (0.625 mm) let 4 of 74 plans through with the core 0.04-0.19 mm inside the
#: tables' margin or the needle 1.6 mm inside the SI joint's.
MIN_RESERVE_MM = 1.25
#: The default reserve is this share of the CT's resolution: its largest voxel dimension
#: or its slice thickness, whichever is larger (at least MIN_RESERVE_MM). It is not
#: capped: on 44 phantoms with 5 mm slices of 5 mm thickness, a reserve of 2 mm let 3 of
#: 27 plans fail on the truth, one with its core 1.2 mm closer to a table than the
#: segmentation showed (``benchmarks/results/cohort_44_5mm_thick_reserve2.csv``); 2.5 mm
#: let none fail, and planned 4 (``cohort_44_5mm_thick.csv``).
RESERVE_PER_VOXEL = 0.5
#: The coarsest voxels and slices the safety study validates the planner on: those
#: whose default reserve is the least.
VALIDATED_VOXEL_MM = MIN_RESERVE_MM / RESERVE_PER_VOXEL

#: Clearance (mm) between the needle surface and each structure, by name.
DEFAULT_MARGINS_MM: dict[str, float] = {
    "cortex": 2.0,  # core to both cortical tables
    "sciatic_notch": 10.0,  # core to the apex of the greater sciatic notch
    "si_joint": 5.0,  # whole needle to the SI joint and the sacrum
    "vessels": 5.0,  # contrast-filled lumina on CT, imported iliac arteries and veins
    "bowel": 5.0,  # bowel gas on CT, imported bowel masks
    "bladder": 5.0,
    "bone": 1.0,  # any other bone on the way to the ilium (spine, femur, other hip)
}


def needle_named(name: str) -> Needle:
    """The catalogue needle ``name`` (e.g. ``"11G-150"``)."""
    if name not in NEEDLES:
        raise ValueError(f"unknown needle {name!r}; the catalogue has {', '.join(NEEDLES)}")
    return NEEDLES[name]


@dataclass(frozen=True)
class PlanningParameters:
    """What the planner and the checker require of a trajectory.

    Attributes
    ----------
    needle : Needle
    core_length_mm : float
        Planned core (the 2-3 cm advance after the needle is seated).
    min_core_length_mm : float
        Shortest acceptable core; the planner proposes the longest safe core up to
        ``core_length_mm``.
    seat_depth_mm : float
        The core starts this far beyond the cortex entry (the needle is seated just past
        the outer cortex before the stylet is removed).
    margins_mm : dict of str to float
        Needle-surface clearances, see :data:`DEFAULT_MARGINS_MM`.
    max_incidence_deg : float
        Largest angle between the needle and the outer-cortex normal (skiving).
    in_plane_only : bool
        Only trajectories within ``in_plane_tolerance_deg`` of the axial plane.
    in_plane_tolerance_deg : float
    max_craniocaudal_deg : float
        Gantry tilt range when not in-plane only.
    min_marrow_fraction : float
        Share of the core axis that must lie in marrow (not cortex): 1, a marrow-only
        core, by default; lower it to accept a core that grazes cortex.
    entry_search_radius_mm : float
        Cortex entries are searched within this distance of the PSIS.
    max_axial_angle_deg : float
        Directions are searched from 0 (straight anterior) to this angle laterally.
    grid_mm : float
        Voxel size of the isotropic planning grid.
    reserve_mm : float or None
        The search keeps the hard limits with this reserve, in the shares of
        :data:`RESERVE_SHARES` (the SI joint three times it; the cortical tables and the
        minimum core half of it; the incidence 1 deg per mm; the needle's reach, from
        the skin, none), so that a proposed plan
        still passes when the true anatomy differs from the segmentation by about a
        voxel. Checks judge at the limits themselves. None: half the CT's resolution
        (its largest voxel dimension, or its slice thickness where that is larger), at
        least :data:`MIN_RESERVE_MM` (1.25).
    """

    needle: Needle = NEEDLES["11G-100"]
    core_length_mm: float = 25.0
    min_core_length_mm: float = 20.0
    seat_depth_mm: float = 5.0
    margins_mm: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS_MM))
    max_incidence_deg: float = 40.0
    in_plane_only: bool = False
    in_plane_tolerance_deg: float = 3.0
    max_craniocaudal_deg: float = 30.0
    min_marrow_fraction: float = 1.0
    entry_search_radius_mm: float = 40.0
    max_axial_angle_deg: float = 60.0
    grid_mm: float = 1.0
    reserve_mm: float | None = None

    def __post_init__(self) -> None:
        positive = (
            "core_length_mm",
            "min_core_length_mm",
            "max_incidence_deg",
            "entry_search_radius_mm",
            "grid_mm",
        )
        if isinstance(self.needle, str):  # a catalogue name, as with_overrides takes it
            object.__setattr__(self, "needle", needle_named(self.needle))
        for name in positive:
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_core_length_mm > self.core_length_mm:
            raise ValueError(
                f"min_core_length_mm ({self.min_core_length_mm}) exceeds core_length_mm "
                f"({self.core_length_mm})"
            )
        if self.reserve_mm is not None and self.reserve_mm < 0:
            raise ValueError(f"reserve_mm must not be negative, got {self.reserve_mm}")
        if self.seat_depth_mm < 0:
            raise ValueError(f"seat_depth_mm must not be negative, got {self.seat_depth_mm}")
        if not 0.0 <= self.min_marrow_fraction <= 1.0:
            raise ValueError(
                f"min_marrow_fraction must be in [0, 1], got {self.min_marrow_fraction}"
            )
        margins = {**DEFAULT_MARGINS_MM, **self.margins_mm}
        for name, value in margins.items():
            if not float(value) >= 0:
                raise ValueError(f"margin {name!r} must not be negative, got {value}")
        object.__setattr__(self, "margins_mm", {k: float(v) for k, v in margins.items()})

    @property
    def max_craniocaudal_limit_deg(self) -> float:
        """The cranio-caudal limit in force (in-plane tolerance or gantry tilt)."""
        return self.in_plane_tolerance_deg if self.in_plane_only else self.max_craniocaudal_deg

    def reserve_for(self, resolution_mm: float) -> float:
        """The search reserve in mm for a CT of the given resolution
        (:attr:`~bmbx_plan.volume.Volume.resolution_mm`)."""
        if self.reserve_mm is not None:
            return float(self.reserve_mm)
        return float(max(RESERVE_PER_VOXEL * resolution_mm, MIN_RESERVE_MM))

    def margin(self, name: str) -> float:
        """The clearance in mm required around ``name``."""
        return self.margins_mm[name]

    def with_overrides(self, **changes: Any) -> PlanningParameters:
        """A copy with some fields changed; ``needle`` may be a catalogue name and
        ``margins_mm`` is merged into the current margins."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown planning parameter(s) {unknown}; known: {sorted(known)}")
        if isinstance(changes.get("needle"), str):
            changes["needle"] = needle_named(changes["needle"])
        if "margins_mm" in changes:
            margins = dict(changes["margins_mm"])
            unknown_margins = sorted(set(margins) - set(DEFAULT_MARGINS_MM))
            if unknown_margins:
                raise ValueError(
                    f"unknown margin(s) {unknown_margins}; known: {sorted(DEFAULT_MARGINS_MM)}"
                )
            changes["margins_mm"] = {**self.margins_mm, **margins}
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The ``parameters`` object of plan.json."""
        return {
            "needle": {
                "name": self.needle.name,
                "outer_diameter_mm": self.needle.outer_diameter_mm,
                "usable_length_mm": self.needle.usable_length_mm,
            },
            "core_length_mm": self.core_length_mm,
            "min_core_length_mm": self.min_core_length_mm,
            "seat_depth_mm": self.seat_depth_mm,
            "margins_mm": dict(self.margins_mm),
            "in_plane_only": self.in_plane_only,
            "in_plane_tolerance_deg": self.in_plane_tolerance_deg,
            "max_craniocaudal_deg": self.max_craniocaudal_deg,
            "max_incidence_deg": self.max_incidence_deg,
            "min_marrow_fraction": self.min_marrow_fraction,
            "reserve_mm": self.reserve_mm,
        }
