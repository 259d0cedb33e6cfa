"""``plan_trajectory`` and ``check_trajectory``: search and check on one set of maps."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bmbx_plan.anatomy import Anatomy, segment_pelvis
from bmbx_plan.distance import THREADS
from bmbx_plan.planning.candidates import direction_grid, directions_from_angles, entry_points
from bmbx_plan.planning.constraints import (
    HARD_NAMES,
    ConstraintResult,
    constraint_results,
    hard_passes,
    hard_shortfalls,
    kept,
)
from bmbx_plan.planning.describe import describe, trajectory_of
from bmbx_plan.planning.evaluate import CORE_STEP_MM, SKIN_TOLERANCE_MM, Evaluation, evaluate
from bmbx_plan.planning.fields import SideFields, side_fields
from bmbx_plan.planning.parameters import (
    MIN_RESERVE_MM,
    NEEDLES,
    RESERVE_SHARES,
    VALIDATED_VOXEL_MM,
    Needle,
    PlanningParameters,
    Side,
)
from bmbx_plan.planning.ranking import distinct, pareto_front, score
from bmbx_plan.planning.results import Alternative, Plan, PlanSet
from bmbx_plan.volume import Volume

__all__ = ["Planner", "check_trajectory", "plan_trajectory"]

FloatArray = NDArray[np.float64]
Progress = Callable[[str], None]

# Candidates evaluated per vectorised batch (bounds the memory of the sample arrays).
_BATCH = 16_384
# Local refinement around the best grid candidate: surface points within this distance,
# directions within this many degrees, at this step.
_REFINE_RADIUS_MM = 2.0
_REFINE_SPAN_DEG = 2.5
_REFINE_STEP_DEG = 0.5
_ALTERNATIVES = 3
_PARETO_POOL = 300
_PARETO_KEEP = 10
# Re-evaluations as drawn per plan (each about a millisecond); candidates whose drawn
# version fails are skipped.
_DRAWN_TRIES = 200
# The checker walks the line from the skin entry in steps this fine to find the cortex.
_CHECK_STEP_MM = 0.25


def _sides(side: str | Side) -> tuple[Side, ...]:
    if isinstance(side, str) and side.lower() == "both":
        return (Side.LEFT, Side.RIGHT)
    return (Side.parse(side),)


class Planner:
    """Plans and checks trajectories for one segmented CT.

    The maps of each side are computed on first use and kept, so repeated checks (a
    user dragging an entry point) cost milliseconds.

    Parameters
    ----------
    anatomy : Anatomy
    parameters : PlanningParameters, optional
    progress : callable, optional
        Called with a short description before each long step.
    """

    def __init__(
        self,
        anatomy: Anatomy,
        parameters: PlanningParameters | None = None,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.anatomy = anatomy
        self.parameters = parameters or PlanningParameters()
        self._say = progress or (lambda _msg: None)
        self._fields: dict[Side, SideFields] = {}
        #: The search's reserve beyond each limit (mm), see PlanningParameters.reserve_mm.
        self.reserve_mm = self.parameters.reserve_for(anatomy.labels.resolution_mm)

    def longer_needles(self) -> list[Needle]:
        """The catalogue's needles of this needle's diameter that reach further, shortest
        first: the ones :meth:`plan` tries when this one is too short."""
        current = self.parameters.needle
        return sorted(
            (
                n
                for n in NEEDLES.values()
                if n.outer_diameter_mm == current.outer_diameter_mm
                and n.usable_length_mm > current.usable_length_mm
            ),
            key=lambda n: n.usable_length_mm,
        )

    def with_needle(self, needle: Needle | str) -> Planner:
        """This planner with another needle; the maps are shared when the diameter is
        the same (they depend on it, not on the length)."""
        other = Planner(
            self.anatomy, self.parameters.with_overrides(needle=needle), progress=self._say
        )
        other.reserve_mm = self.reserve_mm
        if other.parameters.needle.outer_diameter_mm == self.parameters.needle.outer_diameter_mm:
            other._fields = self._fields
        return other

    def fields(self, side: Side | str) -> SideFields:
        """The planning maps of ``side`` (computed once)."""
        side = Side.parse(side)
        if side not in self._fields:
            self._say(f"{side.value}: distance maps")
            self._fields[side] = side_fields(self.anatomy, side, self.parameters)
        return self._fields[side]

    # ------------------------------------------------------------------ search
    def plan(
        self, side: Side | str, *, cross_check: bool = True, longer_needle: bool = True
    ) -> Plan:
        """The safest trajectory of ``side``, or why there is none.

        With ``longer_needle``, when no trajectory passes and some of the candidates
        are beyond the needle's reach even with the shortest core, the longer needles of
        the catalogue with the same diameter are tried, shortest first; the plan names
        the needle it was made with.
        """
        side = Side.parse(side)
        plan = self._plan_once(side, cross_check=cross_check)
        if plan.feasible or not longer_needle or not plan.failing_shares.get("needle_length"):
            return plan
        current = self.parameters.needle
        for needle in self.longer_needles():
            alternative = self.with_needle(needle)._plan_once(side, cross_check=cross_check)
            if alternative.feasible:
                note = (
                    f"No trajectory passes with the {current.name} needle "
                    f"({current.usable_length_mm:.0f} mm usable): it is too short here. This "
                    f"plan uses the {needle.name} ({needle.usable_length_mm:.0f} mm usable)."
                )
                return replace(alternative, reasons=(note, *alternative.reasons))
        return plan

    def candidates(self, side: Side | str) -> Evaluation | str:
        """Every trajectory the search considers on ``side``, evaluated (cortex entries
        around the PSIS times the cone of directions, kept where the incidence allows);
        a sentence saying why there are none otherwise."""
        side = Side.parse(side)
        fields = self.fields(side)
        p = self.parameters
        self._say(f"{side.value}: candidates")
        points, normals = entry_points(fields, p)
        directions = direction_grid(fields, p)
        if not len(points):
            return (
                "No posterior surface of the ilium lies within "
                f"{p.entry_search_radius_mm:.0f} mm of the PSIS."
            )
        cos = -(normals @ directions.T)
        entry_index, direction_index = np.nonzero(cos >= np.cos(np.radians(p.max_incidence_deg)))
        if not len(entry_index):
            return (
                "No direction along the wing meets the posterior cortex "
                f"within {p.max_incidence_deg:.0f} deg of its normal."
            )
        self._say(f"{side.value}: evaluating {len(entry_index):,} trajectories")

        def batch(start: int) -> Evaluation:
            return evaluate(
                fields,
                p,
                points[entry_index[start : start + _BATCH]],
                directions[direction_index[start : start + _BATCH]],
                reserve_mm=self.reserve_mm,
            )

        # numpy releases the GIL in the kernel's array work: batches run side by side
        with ThreadPoolExecutor(max_workers=THREADS) as workers:
            return Evaluation.concatenate(
                list(workers.map(batch, range(0, len(entry_index), _BATCH)))
            )

    def _plan_once(self, side: Side | str, *, cross_check: bool) -> Plan:
        side = Side.parse(side)
        fields = self.fields(side)
        p = self.parameters
        found = self.candidates(side)
        if isinstance(found, str):
            return self._nothing(side, found)
        shortfalls = hard_shortfalls(
            found, p, has_skin=fields.has_skin, reserve_mm=self.reserve_mm
        )
        passes = kept(shortfalls)
        scores = score(found, p, fields)
        feasible = passes.all(axis=1)
        if not feasible.any():
            return self._infeasible(side, fields, found, shortfalls, scores)
        self._say(f"{side.value}: refining")
        order = np.argsort(-np.where(feasible, scores, -np.inf), kind="stable")[
            : int(feasible.sum())
        ]
        best = self._refine(fields, found.take(order[:1]))
        pool = Evaluation.concatenate([best, found])
        pool_order = np.concatenate([[0], order + 1])
        # Every proposal is re-evaluated as a user would draw it (skin entry to core
        # end, the cortex entry found on the line), so a plan checked as drawn passes.
        drawn: dict[int, Evaluation] = {}
        rejected: list[Evaluation] = []
        budget = _DRAWN_TRIES

        def accept(index: int) -> bool:
            nonlocal budget
            if index not in drawn and budget > 0:
                budget -= 1
                row, ok = self._drawn(fields, pool.take(np.array([index])))
                if ok and row is not None:
                    drawn[index] = row
                elif row is not None:
                    rejected.append(row)
            return index in drawn

        chosen = distinct(pool, pool_order, _ALTERNATIVES + 1, accept)
        if not chosen:
            why = (
                f"{int(feasible.sum()):,} of {found.count:,} candidates pass in the search, "
                f"but none of the best {_DRAWN_TRIES - budget} passes every hard constraint "
                "when re-checked as drawn (skin entry to core end)."
            )
            if not rejected:
                return self._nothing(side, why)
            lead = f"No safe trajectory for the {side.value} ilium: {why}"
            again = Evaluation.concatenate(rejected)
            return self._infeasible(
                side,
                fields,
                again,
                hard_shortfalls(again, p, has_skin=fields.has_skin, reserve_mm=self.reserve_mm),
                score(again, p, fields),
                lead=lead,
                searched=passes,
            )
        # ranked again by the scores as drawn, which differ from the search's a little
        rows = sorted((drawn[i] for i in chosen), key=lambda r: -score(r, p, fields)[0])
        best = rows[0]
        alternatives = tuple(self._alternative(fields, row) for row in rows[1:])
        front = order[:_PARETO_POOL]
        front = front[pareto_front(found.take(front), p)][:_PARETO_KEEP] + 1
        pareto = tuple(self._alternative(fields, drawn[i]) for i in front if accept(int(i)))
        plan = self._plan_of(
            fields,
            best,
            status="feasible",
            alternatives=alternatives,
            pareto=pareto,
            candidates=found.count,
        )
        if cross_check:
            plan = self._cross_checked(plan)
        return plan

    def _refine(self, fields: SideFields, best: Evaluation) -> Evaluation:
        """Search below the grid: nearby surface points and finer directions."""
        p = self.parameters
        points, normals = entry_points(fields, p, spacing_mm=None)
        near = np.linalg.norm(points - best.cortex_entry[0], axis=1) <= _REFINE_RADIUS_MM
        points, normals = points[near], normals[near]
        axial, cranio = best.axial_deg[0], best.craniocaudal_deg[0]
        offsets = np.arange(-_REFINE_SPAN_DEG, _REFINE_SPAN_DEG + 1e-6, _REFINE_STEP_DEG)
        a, c = np.meshgrid(axial + offsets, cranio + offsets, indexing="ij")
        limit = p.max_craniocaudal_limit_deg
        keep = (np.abs(c) <= limit + 1e-9) & (a >= 0.0)
        directions = directions_from_angles(a[keep], c[keep], fields.side.lateral_sign)
        if not len(points) or not len(directions):
            return best
        ei, di = np.nonzero(-(normals @ directions.T) >= np.cos(np.radians(p.max_incidence_deg)))
        local = evaluate(fields, p, points[ei], directions[di], reserve_mm=self.reserve_mm)
        verdicts = hard_passes(local, p, has_skin=fields.has_skin, reserve_mm=self.reserve_mm)
        ok = verdicts.all(axis=1)
        if not ok.any():
            return best
        local_scores = np.where(ok, score(local, p, fields), -np.inf)
        top = int(np.argmax(local_scores))
        if local_scores[top] <= score(best, p, fields)[0]:
            return best
        return local.take(np.array([top]))

    def _alternative(self, fields: SideFields, row: Evaluation) -> Alternative:
        trajectory, metrics = describe(row, self.parameters, fields)
        return Alternative(trajectory, metrics, float(score(row, self.parameters, fields)[0]))

    def _infeasible(
        self,
        side: Side,
        fields: SideFields,
        found: Evaluation,
        shortfalls: FloatArray,
        scores: FloatArray,
        *,
        lead: str | None = None,
        searched: NDArray[np.bool_] | None = None,
    ) -> Plan:
        """No candidate passes: report the binding constraints and the best near-miss.

        ``found`` are the candidates judged, with how far they lie beyond each hard
        limit (``shortfalls``, mm); by default they are all the search evaluated, else
        ``searched`` holds the search's verdicts. ``lead`` replaces the first reason
        line. The near-miss is the candidate that misses by the least in all, the
        score breaking ties: a path that fails one limit by centimetres is farther from
        safe than one that fails two by a millimetre each."""
        passes = kept(shortfalls)
        total = shortfalls.sum(axis=1)
        best = int(np.lexsort((-scores, np.round(total, 3)))[0])
        nearest = found.take(np.array([best]))
        miss = self._alternative(fields, nearest)
        binding = {name for name, ok in zip(HARD_NAMES, passes[best], strict=True) if not ok}
        constraints = tuple(
            replace(
                c,
                passed=False,
                message=f"{c.message} This is within the "
                f"{RESERVE_SHARES.get(c.name, 0.0) * self.reserve_mm:.1f} {c.unit} reserve "
                "the planner keeps there for segmentation error.",
            )
            if c.name in binding and c.passed
            else c
            for c in constraint_results(nearest, self.parameters, has_skin=fields.has_skin)
        )
        failing = [c for c in constraints if c.kind == "hard" and not c.passed]
        searched = passes if searched is None else searched
        shares = {
            name: float(rate)
            for name, rate in zip(HARD_NAMES, 1.0 - searched.mean(axis=0), strict=True)
            if rate > 0
        }
        reasons = [
            lead
            or f"No safe trajectory for the {side.value} ilium: none of {found.count:,} "
            "candidates passes every hard constraint.",
            *(f"Binding: {c.name}. {c.message}" for c in failing),
            f"Share of the {len(searched):,} candidates failing each constraint: "
            + ", ".join(f"{name} {rate:.0%}" for name, rate in shares.items())
            + ".",
        ]
        reasons.extend(self._context(fields))
        return Plan(
            side=side,
            status="infeasible",
            reasons=tuple(reasons),
            trajectory=None,
            metrics=None,
            constraints=constraints,
            score=None,
            needle=self.parameters.needle.name,
            near_miss=miss,
            candidates_evaluated=len(searched),
            failing_shares=shares,
        )

    def _nothing(
        self, side: Side, reason: str, constraints: tuple[ConstraintResult, ...] = ()
    ) -> Plan:
        fields = self.fields(side)
        return Plan(
            side=side,
            status="infeasible",
            reasons=(
                f"No safe trajectory for the {side.value} ilium: {reason}",
                *self._context(fields),
            ),
            trajectory=None,
            metrics=None,
            constraints=constraints,
            score=None,
        )

    def _coarse_ct(self) -> list[str]:
        """What a CT coarser than the validated voxels and slices means for its plans."""
        ct = self.anatomy.labels
        if ct.resolution_mm <= VALIDATED_VOXEL_MM + 1e-6:
            return []
        voxel = float(ct.spacing_mm.max())
        coarse = (
            f"This CT's voxels measure up to {voxel:.1f} mm"
            if voxel >= ct.resolution_mm
            else f"This CT's slices are {ct.resolution_mm:.1f} mm thick"
        )
        line = (
            f"{coarse}: the planner's safety is measured on CTs whose voxels and slices "
            f"measure {VALIDATED_VOXEL_MM:.1f} mm or less"
        )
        if self.parameters.reserve_mm is None:
            larger = 100.0 * (self.reserve_mm / MIN_RESERVE_MM - 1.0)
            line += f", and its reserves for segmentation error are {larger:.0f} % larger here"
        return [f"{line}. Reconstruct with thinner slices before relying on this plan."]

    def _context(self, fields: SideFields) -> list[str]:
        lines = self._coarse_ct()
        if fields.lying in ("supine", "decubitus"):
            lines.append(
                f"This is a {fields.lying} scan: the biopsy is done prone, so the soft-tissue "
                "depth and the skin entry will differ; re-plan on the prone planning scan."
            )
        if not fields.has_skin:
            lines.append(
                "This CT shows no skin (bone only): the skin entry is where the path leaves "
                "the field of view, and the depth and needle length are not checked."
            )
        return lines

    def _plan_of(
        self,
        fields: SideFields,
        row: Evaluation,
        *,
        status: str,
        alternatives: tuple[Alternative, ...] = (),
        pareto: tuple[Alternative, ...] = (),
        candidates: int = 1,
    ) -> Plan:
        trajectory, metrics = describe(row, self.parameters, fields)
        constraints = constraint_results(row, self.parameters, has_skin=fields.has_skin)
        feasible = all(c.passed for c in constraints if c.kind == "hard")
        if status == "feasible" and not feasible:  # the search and the rules share code
            raise AssertionError("a plan chosen as feasible fails a hard constraint")
        side = fields.side.value
        where = "left" if trajectory.skin_entry_lps_mm[0] > fields.midline_x_mm else "right"
        offset = abs(metrics.skin_entry_from_midline_mm)
        summary = (
            f"{side.capitalize()} ilium: skin entry {offset:.0f} mm "
            f"{where} of the midline at table position z = {metrics.table_position_mm:.1f} mm; "
            f"needle {metrics.axial_angle_deg:.0f} deg lateral, "
            f"{abs(metrics.craniocaudal_angle_deg):.0f} deg "
            f"{'cranial' if metrics.craniocaudal_angle_deg >= 0 else 'caudal'}; skin to cortex "
            f"{metrics.skin_to_cortex_mm:.0f} mm, core {metrics.core_length_mm:.0f} mm, total "
            f"{metrics.total_depth_mm:.0f} mm ({self.parameters.needle.name})."
        )
        failing = [
            f"Fails {c.name}: {c.message}"
            for c in constraints
            if c.kind == "hard" and not c.passed
        ]
        notes = []
        allowed = min(float(row.longest_safe_core_mm[0]), self.parameters.core_length_mm)
        if status != "check" and metrics.core_length_mm < allowed - CORE_STEP_MM:
            notes.append(
                f"The core is {metrics.core_length_mm:.1f} mm, not {allowed:.1f} mm: that is "
                f"as far as the {self.parameters.needle.name} needle reaches from this skin "
                "entry; a longer needle takes the longer core."
            )
        return Plan(
            side=fields.side,
            status="feasible" if feasible else "infeasible",
            reasons=(summary, *failing, *notes, *self._context(fields)),
            trajectory=trajectory,
            metrics=metrics,
            constraints=constraints,
            score=float(score(row, self.parameters, fields)[0]),
            needle=self.parameters.needle.name,
            alternatives=alternatives,
            pareto=pareto,
            candidates_evaluated=candidates,
        )

    def _cross_checked(self, plan: Plan) -> Plan:
        from bmbx_plan.planning.crosscheck import cross_check

        assert plan.trajectory is not None
        result = cross_check(
            self.anatomy, plan.side, plan.trajectory, self.parameters, plan.constraints
        )
        reasons = plan.reasons
        if not result.agrees:
            reasons = (*reasons, *(f"Cross-check disagrees: {d}" for d in result.disagreements))
        return replace(plan, cross_check=result, reasons=reasons)

    # ------------------------------------------------------------------ check
    def check(
        self,
        side: Side | str,
        skin_entry_lps_mm: ArrayLike,
        target_lps_mm: ArrayLike,
        *,
        cross_check: bool = False,
    ) -> Plan:
        """Judge a given trajectory: skin entry to core end (the needle tip after the
        core is cut), both LPS mm.

        The cortex entry is where the line first enters the ilium; the core starts
        ``seat_depth_mm`` beyond it and ends at the target. A skin entry drawn under the
        skin is judged from where the line leaves the body (the needle crosses that
        tissue too): the plan's skin entry is there, and a reason line says how deep the
        drawn one lies.
        """
        side = Side.parse(side)
        fields = self.fields(side)
        skin = np.asarray(skin_entry_lps_mm, np.float64).reshape(3)
        target = np.asarray(target_lps_mm, np.float64).reshape(3)
        if not np.linalg.norm(target - skin) > 0:
            raise ValueError("the skin entry and the target are the same point")
        row = self._as_drawn(fields, skin, target)
        if row is None:
            message = f"The line from the entry to the target never enters the {side.value} ilium."
            missed = ConstraintResult("reaches_ilium", "hard", False, None, None, "", message)
            return self._nothing(side, message, (missed,))
        plan = self._plan_of(fields, row, status="check")
        under = _depth_under_skin(row, skin)
        if under is not None:
            plan = replace(plan, reasons=(*plan.reasons, under))
        if cross_check and plan.trajectory is not None:
            plan = self._cross_checked(plan)
        return plan

    def _as_drawn(
        self, fields: SideFields, skin: FloatArray, target: FloatArray
    ) -> Evaluation | None:
        """The trajectory from ``skin`` to ``target`` as a user would draw it: the cortex
        entry is where the line first enters the ilium, the core ends at the target.
        None when the line never enters the ilium."""
        p = self.parameters
        length = float(np.linalg.norm(target - skin))
        d = (target - skin) / length
        t = np.arange(0.0, length + 1e-9, _CHECK_STEP_MM)
        samples = (skin + t[:, None] * d).astype(np.float32)
        flat, on_grid = fields.lookup(samples)
        depth = np.where(on_grid, fields.entry_depth_mm.reshape(-1)[flat], -1e3)
        entered = np.nonzero(depth > 0)[0]
        if not len(entered):
            return None
        k = int(entered[0])
        if k == 0:
            t_cortex = 0.0
        else:  # linear zero crossing between the last sample outside and the first inside
            d0, d1 = float(depth[k - 1]), float(depth[k])
            t_cortex = float(t[k - 1] + (t[k] - t[k - 1]) * (-d0) / (d1 - d0))
        core = max(length - t_cortex - p.seat_depth_mm, 0.0)
        return evaluate(
            fields,
            p,
            (skin + t_cortex * d)[None],
            d[None],
            core_length_mm=np.array([core]),
            skin_to_cortex_mm=np.array([t_cortex]),
        )

    def _drawn(self, fields: SideFields, row: Evaluation) -> tuple[Evaluation | None, bool]:
        """``row`` re-evaluated as drawn (skin entry to core end, as :meth:`check` sees
        it; None if that line misses the ilium), and whether it passes every hard
        constraint with the search's reserve."""
        trajectory = trajectory_of(row, self.parameters)
        drawn = self._as_drawn(fields, trajectory.skin_entry_lps_mm, trajectory.core_end_lps_mm)
        if drawn is None:
            return None, False
        ok = hard_passes(
            drawn, self.parameters, has_skin=fields.has_skin, reserve_mm=self.reserve_mm
        )
        return drawn, bool(ok.all())


def _depth_under_skin(row: Evaluation, drawn_skin: FloatArray) -> str | None:
    """A sentence when the drawn skin entry of ``row`` (one trajectory, as drawn) lies
    under the skin: the line is judged from where it leaves the body."""
    drawn = float(np.linalg.norm(row.cortex_entry[0] - drawn_skin))
    depth = float(row.skin_to_cortex_mm[0]) - drawn
    if depth <= SKIN_TOLERANCE_MM:
        return None
    return (
        f"The drawn skin entry lies {depth:.1f} mm under the skin: the line is judged from "
        f"where it leaves the body, {depth:.1f} mm further back, and the needle needs that "
        "much more length."
    )


def _anatomy(source: Anatomy | Volume, progress: Progress | None) -> Anatomy:
    if isinstance(source, Anatomy):
        return source
    if isinstance(source, Volume):
        return segment_pelvis(source, progress=progress)
    raise TypeError(f"expected an Anatomy or a Volume, got {type(source).__name__}")


def plan_trajectory(
    source: Anatomy | Volume,
    *,
    side: str | Side = "both",
    parameters: PlanningParameters | None = None,
    cross_check: bool = True,
    progress: Progress | None = None,
    **overrides: Any,
) -> PlanSet:
    """Propose the safest biopsy trajectory of one or both posterior iliac wings.

    Parameters
    ----------
    source : Anatomy or Volume
        A segmented pelvis, or a CT to segment first.
    side : {"left", "right", "both"}
    parameters : PlanningParameters, optional
    cross_check : bool
        Recompute the chosen plan's hard constraints by an independent method.
    progress : callable, optional
    **overrides
        Any :class:`PlanningParameters` field, e.g. ``needle="11G-150"``.

    Returns
    -------
    PlanSet
        One :class:`Plan` per side; infeasible plans say which constraints bind.
    """
    anatomy = _anatomy(source, progress)
    params = (parameters or PlanningParameters()).with_overrides(**overrides)
    planner = Planner(anatomy, params, progress=progress)
    plans = tuple(planner.plan(s, cross_check=cross_check) for s in _sides(side))
    return PlanSet.of(plans, params, anatomy)


def check_trajectory(
    source: Anatomy | Volume,
    *,
    side: str | Side,
    skin_entry_lps_mm: ArrayLike,
    target_lps_mm: ArrayLike,
    parameters: PlanningParameters | None = None,
    cross_check: bool = False,
    **overrides: Any,
) -> Plan:
    """Judge one trajectory against every constraint.

    Parameters
    ----------
    source : Anatomy or Volume
    side : {"left", "right"}
    skin_entry_lps_mm, target_lps_mm : (3,) array_like
        The skin entry and the planned core end (LPS mm).
    parameters : PlanningParameters, optional
    cross_check : bool
    **overrides
        Any :class:`PlanningParameters` field.

    Returns
    -------
    Plan
        ``status`` is "feasible" when every hard constraint passes.
    """
    anatomy = _anatomy(source, None)
    params = (parameters or PlanningParameters()).with_overrides(**overrides)
    return Planner(anatomy, params).check(
        side, skin_entry_lps_mm, target_lps_mm, cross_check=cross_check
    )
