"""The rules a trajectory must keep: one table serves the vectorised search and the
sentences of a single plan.

Hard constraints decide feasibility; soft ones only inform (and the score prefers
trajectories that keep them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.planning.evaluate import Evaluation
from bmbx_plan.planning.parameters import RESERVE_SHARES, PlanningParameters

__all__ = [
    "CONSTRAINTS",
    "ConstraintResult",
    "constraint_results",
    "hard_passes",
    "hard_shortfalls",
    "kept",
]

FloatArray = NDArray[np.float64]
# Comparisons allow for float32 maps and rounding of reported values.
_EPS = 1e-6


@dataclass(frozen=True)
class ConstraintResult:
    """One rule checked on one trajectory.

    Attributes
    ----------
    name : str
    kind : {"hard", "soft"}
    passed : bool
    value : float or None
        The measured value (None when it cannot be measured, e.g. no skin in the CT).
    limit : float or None
    unit : str
    message : str
        A sentence a radiologist understands.
    """

    name: str
    kind: str
    passed: bool
    value: float | None
    limit: float | None
    unit: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The ``constraints`` entry of plan.json."""
        return {
            "name": self.name,
            "kind": self.kind,
            "passed": bool(self.passed),
            "value": None if self.value is None else round(float(self.value), 3),
            "limit": None if self.limit is None else round(float(self.limit), 3),
            "unit": self.unit,
            "message": self.message,
        }


@dataclass(frozen=True)
class _Rule:
    name: str
    kind: str
    unit: str
    value: Callable[[Evaluation, PlanningParameters], FloatArray]
    limit: Callable[[PlanningParameters], float]
    at_most: bool  # passes when value <= limit (else value >= limit)
    passed_text: str
    failed_text: str

    @property
    def reserve(self) -> float:
        """Search reserve kept beyond the limit, per mm of reserve."""
        return RESERVE_SHARES.get(self.name, 0.0)

    def shortfall(
        self, evaluation: Evaluation, parameters: PlanningParameters, reserve_mm: float = 0.0
    ) -> FloatArray:
        """How far each trajectory lies beyond the limit (0 when it keeps it; inf when
        the value cannot be measured), in mm: degrees count 1:1 as in the reserve, a
        marrow fraction as mm of the planned core."""
        return self.shortfall_of(self.value(evaluation, parameters), parameters, reserve_mm)

    def shortfall_of(
        self, value: FloatArray, parameters: PlanningParameters, reserve_mm: float = 0.0
    ) -> FloatArray:
        """:meth:`shortfall` of measured values of this rule."""
        value = np.asarray(value, np.float64)
        limit = self.limit(parameters)
        extra = self.reserve * reserve_mm
        beyond = value - (limit - extra) if self.at_most else (limit + extra) - value
        if self.unit == "fraction":
            beyond = beyond * parameters.core_length_mm
        return np.where(np.isnan(value), np.inf, np.maximum(beyond, 0.0))

    def passes(
        self, evaluation: Evaluation, parameters: PlanningParameters, reserve_mm: float = 0.0
    ) -> NDArray[np.bool_]:
        return kept(self.shortfall(evaluation, parameters, reserve_mm))


def _cc(e: Evaluation, _p: PlanningParameters) -> FloatArray:
    return np.abs(e.craniocaudal_deg)


#: Every rule, hard ones first. Messages are formatted with ``value``, ``limit`` and
#: ``needle``.
CONSTRAINTS: tuple[_Rule, ...] = (
    _Rule(
        "needle_length",
        "hard",
        "mm",
        lambda e, p: e.total_depth_mm(p),
        lambda p: p.needle.usable_length_mm,
        True,
        "Skin to core end is {value:.0f} mm; the {needle} needle reaches {limit:.0f} mm.",
        "Skin to core end is {value:.0f} mm or more, beyond the {limit:.0f} mm the {needle} "
        "needle reaches: a longer needle is needed.",
    ),
    _Rule(
        "soft_tissue_path",
        "hard",
        "mm",
        lambda e, _p: e.path_blocked_mm,
        lambda _p: 0.0,
        True,
        "From the skin to the cortex the needle crosses soft tissue only.",
        "On its way to the cortex the needle crosses {value:.0f} mm of bone, gas, joint "
        "or a keep-out zone.",
    ),
    _Rule(
        "path_clearance",
        "hard",
        "mm",
        lambda e, _p: e.path_clearance_mm,
        lambda _p: 0.0,
        False,
        "On its way to the bone the needle keeps every margin, with {value:.1f} mm to spare.",
        "On its way to the bone the needle comes {value:.1f} mm inside the margin of a "
        "structure to avoid.",
    ),
    _Rule(
        "cortex_incidence",
        "hard",
        "deg",
        lambda e, _p: e.incidence_deg,
        lambda p: p.max_incidence_deg,
        True,
        "The needle meets the cortex {value:.0f} deg from its normal (at most {limit:.0f}).",
        "The needle meets the cortex {value:.0f} deg from its normal and may skive off "
        "(at most {limit:.0f} deg).",
    ),
    _Rule(
        "craniocaudal_angle",
        "hard",
        "deg",
        _cc,
        lambda p: p.max_craniocaudal_limit_deg,
        True,
        "Cranio-caudal tilt {value:.1f} deg is within the {limit:.0f} deg allowed.",
        "Cranio-caudal tilt {value:.1f} deg exceeds the {limit:.0f} deg allowed.",
    ),
    _Rule(
        "core_length",
        "hard",
        "mm",
        lambda e, _p: e.core_length_mm,
        lambda p: p.min_core_length_mm,
        False,
        "The core is {value:.1f} mm long (at least {limit:.0f} mm).",
        "The core is only {value:.1f} mm long; at least {limit:.0f} mm is needed.",
    ),
    _Rule(
        "core_cortex_clearance",
        "hard",
        "mm",
        lambda e, _p: e.core_clearance_mm,
        lambda p: p.margin("cortex"),
        False,
        "The core keeps {value:.1f} mm from both cortical tables (at least {limit:.0f} mm).",
        "The core comes within {value:.1f} mm of a cortical table (at least {limit:.0f} mm): "
        "it may leave the bone.",
    ),
    _Rule(
        "core_in_marrow",
        "hard",
        "fraction",
        lambda e, _p: e.core_marrow_fraction,
        lambda p: p.min_marrow_fraction,
        False,
        "{value:.0%} of the core lies in marrow.",
        "Only {value:.0%} of the core lies in marrow (at least {limit:.0%}).",
    ),
    _Rule(
        "sciatic_notch",
        "hard",
        "mm",
        lambda e, _p: e.notch_distance_mm,
        lambda p: p.margin("sciatic_notch"),
        False,
        "The needle in bone stays {value:.0f} mm from the sciatic notch apex "
        "(at least {limit:.0f} mm).",
        "The needle comes within {value:.1f} mm of the sciatic notch apex (at least "
        "{limit:.0f} mm): superior gluteal vessels and the sciatic nerve run there.",
    ),
    _Rule(
        "si_joint",
        "hard",
        "mm",
        lambda e, _p: e.si_distance_mm,
        lambda p: p.margin("si_joint"),
        False,
        "The needle stays {value:.0f} mm from the SI joint and the sacrum "
        "(at least {limit:.0f} mm).",
        "The needle comes within {value:.1f} mm of the SI joint or the sacrum "
        "(at least {limit:.0f} mm).",
    ),
    _Rule(
        "lateral_direction",
        "soft",
        "deg",
        lambda e, _p: e.axial_deg,
        lambda _p: 0.0,
        False,
        "The needle points {value:.0f} deg laterally, along the iliac wing.",
        "The needle points {value:.0f} deg medially, toward the SI joint, not along the wing.",
    ),
    _Rule(
        "planned_core_length",
        "soft",
        "mm",
        lambda e, _p: e.core_length_mm,
        lambda p: p.core_length_mm,
        False,
        "The full planned core of {limit:.0f} mm fits.",
        "Only a {value:.1f} mm core fits safely (planned {limit:.0f} mm).",
    ),
)

HARD_NAMES: tuple[str, ...] = tuple(rule.name for rule in CONSTRAINTS if rule.kind == "hard")


def hard_shortfalls(
    evaluation: Evaluation,
    parameters: PlanningParameters,
    *,
    has_skin: bool = True,
    reserve_mm: float = 0.0,
) -> FloatArray:
    """``(N, H)`` distance beyond each hard limit (columns in ``HARD_NAMES`` order), in mm
    (see ``_Rule.shortfall``); 0 where the constraint is kept.

    With ``reserve_mm`` the limits are tightened by it in the shares of
    ``RESERVE_SHARES`` (the incidence limit by 1 deg per mm): the search plans with a
    reserve, checks judge at the limits.
    Without skin in the CT (bone-only data) the needle length cannot be checked and
    counts as kept; plans say so.
    """
    columns = []
    for rule in CONSTRAINTS:
        if rule.kind != "hard":
            continue
        if rule.name == "needle_length" and not has_skin:
            columns.append(np.zeros(evaluation.count))
        else:
            columns.append(rule.shortfall(evaluation, parameters, reserve_mm))
    return np.stack(columns, axis=1)


def kept(shortfalls: FloatArray) -> NDArray[np.bool_]:
    """Where a shortfall keeps its limit (up to the rounding of float32 maps)."""
    return np.asarray(shortfalls <= _EPS)


def hard_passes(
    evaluation: Evaluation,
    parameters: PlanningParameters,
    *,
    has_skin: bool = True,
    reserve_mm: float = 0.0,
) -> NDArray[np.bool_]:
    """``(N, H)`` pass/fail of every hard constraint, see :func:`hard_shortfalls`."""
    return kept(hard_shortfalls(evaluation, parameters, has_skin=has_skin, reserve_mm=reserve_mm))


def constraint_results(
    evaluation: Evaluation, parameters: PlanningParameters, *, has_skin: bool = True
) -> tuple[ConstraintResult, ...]:
    """Every constraint of the single trajectory in ``evaluation`` (one row)."""
    if evaluation.count != 1:
        raise ValueError(f"constraint_results takes one trajectory, got {evaluation.count}")
    out = []
    for rule in CONSTRAINTS:
        value = float(rule.value(evaluation, parameters)[0])
        limit = rule.limit(parameters)
        passed = bool(rule.passes(evaluation, parameters)[0])
        fields = {"value": value, "limit": limit, "needle": parameters.needle.name}
        message = (rule.passed_text if passed else rule.failed_text).format(**fields)
        if rule.name == "needle_length" and not has_skin:
            passed, value = True, math.nan
            message = "Not checked: this CT shows no skin, so the depth is unknown."
        elif rule.name == "path_clearance" and math.isinf(value):
            message = "The cortex entry lies at the skin: no soft-tissue path to check."
        if rule.name == "lateral_direction" and not passed:
            fields["value"] = abs(value)
            message = rule.failed_text.format(**fields)
        finite = math.isfinite(value)
        out.append(
            ConstraintResult(
                name=rule.name,
                kind=rule.kind,
                passed=passed,
                value=value if finite else None,
                limit=limit,
                unit=rule.unit,
                message=message,
            )
        )
    return tuple(out)
