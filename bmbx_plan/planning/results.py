"""Typed, immutable planning results and their plan.json form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bmbx_plan.planning.constraints import ConstraintResult
from bmbx_plan.planning.parameters import PlanningParameters, Side

__all__ = ["Alternative", "CrossCheck", "Metrics", "Plan", "PlanSet", "Trajectory"]

FloatArray = NDArray[np.float64]


def _vec(values: ArrayLike) -> list[float]:
    return [round(float(v), 3) for v in np.asarray(values, float).reshape(3)]


def _num(value: float) -> float:
    return round(float(value), 3)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The four points of a needle path (LPS mm)."""

    skin_entry_lps_mm: FloatArray
    cortex_entry_lps_mm: FloatArray
    core_start_lps_mm: FloatArray
    core_end_lps_mm: FloatArray

    def __post_init__(self) -> None:
        for name in (
            "skin_entry_lps_mm",
            "cortex_entry_lps_mm",
            "core_start_lps_mm",
            "core_end_lps_mm",
        ):
            value = np.array(getattr(self, name), dtype=np.float64).reshape(3)
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @property
    def direction_lps(self) -> FloatArray:
        """Unit vector from the skin entry toward the core end."""
        v = self.core_end_lps_mm - self.skin_entry_lps_mm
        return np.asarray(v / np.linalg.norm(v))

    def to_json(self) -> dict[str, list[float]]:
        """The ``trajectory`` object of plan.json."""
        return {
            "skin_entry_lps_mm": _vec(self.skin_entry_lps_mm),
            "cortex_entry_lps_mm": _vec(self.cortex_entry_lps_mm),
            "core_start_lps_mm": _vec(self.core_start_lps_mm),
            "core_end_lps_mm": _vec(self.core_end_lps_mm),
            "direction_lps": [round(float(v), 6) for v in self.direction_lps],
        }


@dataclass(frozen=True)
class Metrics:
    """What an IR reads off a plan (ARCHITECTURE.md section 5).

    ``axial_angle_deg`` is positive toward the lateral side of the biopsied ilium,
    ``craniocaudal_angle_deg`` positive cranial; ``skin_entry_from_midline_mm`` is
    positive on the biopsied side of the mid-sagittal plane. ``clearances_mm`` holds the
    smallest distance from the needle surface to each structure in view, including
    ``inner_table`` and ``outer_table`` (measured from the core, perpendicular to the
    needle in the axial plane).
    """

    skin_to_cortex_mm: float
    core_length_mm: float
    total_depth_mm: float
    axial_angle_deg: float
    craniocaudal_angle_deg: float
    cortex_incidence_deg: float
    core_min_cortex_clearance_mm: float
    core_marrow_fraction: float
    clearances_mm: dict[str, float]
    table_position_mm: float
    skin_entry_from_midline_mm: float

    def to_json(self) -> dict[str, Any]:
        """The ``metrics`` object of plan.json."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "clearances_mm":
                out[key] = {k: _num(v) for k, v in value.items()}
            else:
                out[key] = _num(value)
        return out


@dataclass(frozen=True)
class Alternative:
    """Another feasible trajectory with its metrics and score."""

    trajectory: Trajectory
    metrics: Metrics
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "trajectory": self.trajectory.to_json(),
            "metrics": self.metrics.to_json(),
            "score": _num(self.score),
        }


@dataclass(frozen=True)
class CrossCheck:
    """The hard-constraint verdict recomputed by an independent method.

    Attributes
    ----------
    method : str
    agrees : bool
        Whether every hard constraint gets the same verdict, within ``tolerance_mm``.
    tolerance_mm : float
    values : dict of str to float
        The independently measured values.
    disagreements : tuple of str
        One sentence per constraint the two methods judge differently.
    """

    method: str
    agrees: bool
    tolerance_mm: float
    values: dict[str, float]
    disagreements: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "agrees": self.agrees,
            "tolerance_mm": _num(self.tolerance_mm),
            "values": {k: _num(v) for k, v in self.values.items()},
            "disagreements": list(self.disagreements),
        }


@dataclass(frozen=True)
class Plan:
    """The plan (or check) of one side.

    ``needle`` names the needle the plan was made with (a longer one than asked for when
    the needle's reach stood in the way). An infeasible plan is a normal result:
    ``trajectory`` and ``metrics`` are None,
    ``constraints`` are those of the best near-miss (``near_miss``), ``reasons``
    name the binding constraints, and ``failing_shares`` gives, for each hard constraint
    some candidate failed, the share of the searched candidates failing it.
    """

    side: Side
    status: str
    reasons: tuple[str, ...]
    trajectory: Trajectory | None
    metrics: Metrics | None
    constraints: tuple[ConstraintResult, ...]
    score: float | None
    needle: str | None = None
    alternatives: tuple[Alternative, ...] = ()
    pareto: tuple[Alternative, ...] = ()
    near_miss: Alternative | None = None
    cross_check: CrossCheck | None = None
    candidates_evaluated: int = 0
    failing_shares: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """Whether every hard constraint passes."""
        return self.status == "feasible"

    def constraint(self, name: str) -> ConstraintResult:
        """The constraint result called ``name``."""
        for result in self.constraints:
            if result.name == name:
                return result
        raise KeyError(f"no constraint {name!r}; have {[c.name for c in self.constraints]}")

    @property
    def failed(self) -> tuple[ConstraintResult, ...]:
        """The hard constraints that fail."""
        return tuple(c for c in self.constraints if c.kind == "hard" and not c.passed)

    def to_json(self) -> dict[str, Any]:
        """One entry of ``plans`` in plan.json (schema fields plus extensions)."""
        out: dict[str, Any] = {
            "side": self.side.value,
            "status": self.status,
            "reasons": list(self.reasons),
            "trajectory": None if self.trajectory is None else self.trajectory.to_json(),
            "metrics": None if self.metrics is None else self.metrics.to_json(),
            "constraints": [c.to_json() for c in self.constraints],
            "score": None if self.score is None else _num(self.score),
            "needle": self.needle,
            "alternatives": [a.to_json() for a in self.alternatives],
            "pareto": [a.to_json() for a in self.pareto],
            "near_miss": None if self.near_miss is None else self.near_miss.to_json(),
            "cross_check": None if self.cross_check is None else self.cross_check.to_json(),
            "candidates_evaluated": int(self.candidates_evaluated),
            "failing_shares": {k: _num(v) for k, v in self.failing_shares.items()},
        }
        return out


@dataclass(frozen=True)
class PlanSet:
    """The plans of one CT (one per side asked for) with the parameters used."""

    plans: tuple[Plan, ...]
    parameters: PlanningParameters
    input: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, plans: tuple[Plan, ...], parameters: PlanningParameters, anatomy: Any) -> PlanSet:
        """The plans of ``anatomy``'s CT, with its input record (no patient identity)."""
        ct = anatomy.labels
        info = ct.info
        record = {
            "source": info.source or "",
            "series_instance_uid": info.series_instance_uid,
            "modality": info.modality or "CT",
            "patient_position": info.patient_position,
            "size_voxels": [int(n) for n in ct.shape[::-1]],
            "spacing_mm": [round(float(s), 4) for s in ct.spacing_mm[::-1]],
        }
        return cls(plans=tuple(plans), parameters=parameters, input=record)

    @property
    def feasible(self) -> bool:
        """Whether every side has a feasible plan."""
        return all(p.feasible for p in self.plans)

    def plan(self, side: Side | str) -> Plan:
        """The plan of ``side``."""
        wanted = Side.parse(side)
        for plan in self.plans:
            if plan.side is wanted:
                return plan
        raise KeyError(f"no plan for the {wanted.value} side")

    def to_json(self) -> dict[str, Any]:
        """The whole plan.json document."""
        from bmbx_plan import __version__

        return {
            "schema_version": "1",
            "software": {"name": "bmbx-plan", "version": __version__},
            "input": dict(self.input),
            "coordinate_system": "LPS",
            "parameters": self.parameters.to_json(),
            "plans": [p.to_json() for p in self.plans],
            "disclaimer": "Research and pre-planning software, not a medical device.",
        }
