"""Vectorised evaluation of many trajectories against one side's planning maps.

A trajectory is given by its cortex entry ``C`` and unit direction ``d`` (skin toward
tip). The needle runs from the skin entry ``C - t_skin d`` through ``C`` to the core
start ``C + seat d`` and the core end ``C + (seat + L) d``. Every quantity is read off the
maps of :mod:`bmbx_plan.planning.fields` at points sampled along the needle axis; the
needle's radius is subtracted from every distance, so clearances are measured from the
needle surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.geometry import axial_and_craniocaudal_angles_deg
from bmbx_plan.planning.fields import BLOCKED_MM, SideFields
from bmbx_plan.planning.parameters import RESERVE_SHARES, PlanningParameters

__all__ = ["CORE_STEP_MM", "PATH_STEP_MM", "SKIN_TOLERANCE_MM", "Evaluation", "evaluate"]

FloatArray = NDArray[np.float64]

#: Sampling step along the soft-tissue path and along the needle inside bone (mm). The
#: maps are distances, which change by at most one mm per mm: a step of h can miss at
#: most h/2 of clearance between samples.
PATH_STEP_MM = 1.0
CORE_STEP_MM = 0.5
# Close to the cortex entry the needle axis is only just outside the bone; from this far
# back it must clear the ilium by a growing share of its distance from the entry, and by
# the needle radius once that is reached (the shaft must not graze the crest or the
# tuberosity on its way in).
_ENTRY_ZONE_MM = 2.0
_CLEAR_SLOPE = 0.4
# The skin is located between the last path sample inside the body and the first one
# outside by this many halvings of the step (to 1/8 mm), so that the search and the
# checker, sampling the same line from slightly different cortex entries, find the same
# skin within a quarter of a millimetre.
_SKIN_HALVINGS = 3
#: A drawn skin entry farther under the skin than this (mm) is judged from the skin: the
#: needle crosses that tissue too and needs that much more length.
SKIN_TOLERANCE_MM = 0.25


@dataclass(frozen=True)
class Evaluation:
    """Per-trajectory results of :func:`evaluate` (arrays of length N)."""

    cortex_entry: FloatArray  # (N, 3)
    direction: FloatArray  # (N, 3)
    skin_to_cortex_mm: FloatArray  # a lower bound when no skin is within reach
    core_length_mm: FloatArray
    path_blocked_mm: FloatArray  # length of soft-tissue path through anything not crossable
    path_clearance_mm: FloatArray  # smallest slack beyond the margins on the path
    core_clearance_mm: FloatArray  # needle surface to the ilium's outer boundary
    core_marrow_fraction: FloatArray
    notch_distance_mm: FloatArray  # needle surface (in bone) to the notch apex
    si_distance_mm: FloatArray  # needle surface (whole needle) to the SI joint or sacrum
    incidence_deg: FloatArray
    axial_deg: FloatArray
    craniocaudal_deg: FloatArray
    longest_safe_core_mm: FloatArray  # longest core prefix that keeps every margin

    @property
    def count(self) -> int:
        """Number of trajectories."""
        return len(self.core_length_mm)

    def total_depth_mm(self, parameters: PlanningParameters) -> FloatArray:
        """Skin entry to core end."""
        return self.skin_to_cortex_mm + parameters.seat_depth_mm + self.core_length_mm

    def skin_entry(self) -> FloatArray:
        """Skin entry points (N, 3)."""
        return self.cortex_entry - self.skin_to_cortex_mm[:, None] * self.direction

    def take(self, index: NDArray[np.intp] | slice) -> Evaluation:
        """The rows ``index``."""
        return Evaluation(**{k: v[index] for k, v in self.__dict__.items()})

    @staticmethod
    def concatenate(parts: list[Evaluation]) -> Evaluation:
        """Rows of several evaluations, in order."""
        keys = parts[0].__dict__
        return Evaluation(**{k: np.concatenate([p.__dict__[k] for p in parts]) for k in keys})


def _sample(field: NDArray[np.generic], flat: NDArray[np.intp]) -> NDArray[np.generic]:
    return field.reshape(-1)[flat]


def evaluate(
    fields: SideFields,
    parameters: PlanningParameters,
    cortex_entry: FloatArray,
    direction: FloatArray,
    *,
    core_length_mm: float | FloatArray | None = None,
    skin_to_cortex_mm: FloatArray | None = None,
    reserve_mm: float = 0.0,
) -> Evaluation:
    """Evaluate N trajectories at once.

    Parameters
    ----------
    fields : SideFields
    parameters : PlanningParameters
    cortex_entry : (N, 3) ndarray
        Where each needle meets the outer surface of the ilium (LPS mm).
    direction : (N, 3) ndarray
        Unit directions, skin toward tip.
    core_length_mm : float or (N,) ndarray, optional
        Fixed core lengths. By default each trajectory gets the longest core up to
        ``parameters.core_length_mm`` that keeps every core margin, but at least
        ``parameters.min_core_length_mm`` (a shorter safe core fails the core checks).
    skin_to_cortex_mm : (N,) ndarray, optional
        Drawn skin entries (the checker). By default the skin is where the path, walked
        back from the cortex entry, leaves the body; a drawn entry more than
        :data:`SKIN_TOLERANCE_MM` under that skin is judged from the skin (the needle
        crosses the tissue behind it too), one in the air before it from where it is.
    reserve_mm : float
        The default core length keeps every core margin with this reserve.

    Returns
    -------
    Evaluation
    """
    c = np.asarray(cortex_entry, np.float64).reshape(-1, 3)
    d = np.asarray(direction, np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    n = len(c)
    r = parameters.needle.radius_mm
    seat = parameters.seat_depth_mm
    margins = parameters.margins_mm

    # --- soft-tissue path, walked back from the cortex entry --------------------------
    reach = parameters.needle.usable_length_mm - seat - parameters.min_core_length_mm
    drawn = None
    if skin_to_cortex_mm is not None:
        drawn = np.asarray(skin_to_cortex_mm, np.float64).reshape(n)
        farthest = float(np.nanmax(drawn)) if n else 0.0
        # with skin, a drawn line is followed back as far as the needle can reach (or
        # its entry, if farther) to find where it leaves the body; without, to its entry
        reach = max(farthest, reach) if fields.has_skin else farthest
    steps = max(int(np.ceil(reach / PATH_STEP_MM)), 1)
    t = PATH_STEP_MM * np.arange(1, steps + 1, dtype=np.float32)
    c32, d32 = c.astype(np.float32), d.astype(np.float32)
    points = c32[:, None, :] - t[None, :, None] * d32[:, None, :]
    flat, on_grid = fields.lookup(points)
    if drawn is not None and not fields.has_skin:
        skin = drawn
    else:
        skin = _skin_distance(fields, c32, d32, t, flat, on_grid)
        if drawn is not None:
            skin = np.where(skin > drawn + SKIN_TOLERANCE_MM, skin, drawn)
    before = t[None, :] < skin[:, None]
    slack = np.where(on_grid, _sample(fields.path_slack_mm, flat), BLOCKED_MM)
    # the needle axis must leave the target ilium behind at once, its surface by the
    # needle radius further back
    normal = fields.normals_at(c32)
    cos_inc = np.clip(-np.sum(normal * d32, axis=1), 0.0, 1.0)
    required = np.minimum(r, _CLEAR_SLOPE * t[None, :] * cos_inc[:, None])
    depth = _path_depth(fields, points, flat, r)
    regrazes = (depth > -required) & (t[None, :] >= _ENTRY_ZONE_MM)
    blocked = before & ((slack <= BLOCKED_MM) | regrazes)
    path_blocked = blocked.sum(axis=1) * PATH_STEP_MM
    free = before & ~blocked
    path_clearance = np.where(free, slack, np.inf).min(axis=1) - r
    path_si = np.where(before, _sample(fields.si_distance_mm, flat), np.inf).min(axis=1)

    # --- needle in bone: cortex entry to the end of the longest core ------------------
    longest = float(parameters.core_length_mm)
    tb = np.arange(0.0, seat + longest + 1e-6, CORE_STEP_MM, dtype=np.float32)
    bone_points = c32[:, None, :] + tb[None, :, None] * d32[:, None, :]
    bflat, bon = fields.lookup(bone_points)
    # the clearance is interpolated: it must not jump with sub-voxel moves of the entry
    depth_at, depth_on = fields.interpolate(fields.ilium_depth_mm, bone_points)
    core_depth = np.where(depth_on, depth_at, -1e3)
    core_marrow = fields.marrow.reshape(-1)[bflat] & bon
    core_si = np.where(bon, _sample(fields.si_distance_mm, bflat), 0.0)
    apex = fields.landmarks_lps_mm["sciatic_notch_apex"].astype(np.float32)
    notch = np.linalg.norm(bone_points - apex, axis=-1)
    in_core = tb[None, :] >= seat - 1e-6
    # a marrow-only core stops at the first cortex (e.g. where a thin wing's tables meet)
    marrow_only = core_marrow if parameters.min_marrow_fraction >= 1.0 else True
    extra = {name: share * reserve_mm for name, share in RESERVE_SHARES.items()}
    ok = (
        marrow_only
        & (core_depth - r >= margins["cortex"] + extra["core_cortex_clearance"])
        & (notch - r >= margins["sciatic_notch"] + extra["sciatic_notch"])
        & (core_si - r >= margins["si_joint"] + extra["si_joint"])
    ) | ~in_core
    first_bad = np.where(ok.all(axis=1), len(tb), np.argmax(~ok, axis=1))
    safe_core = np.maximum(tb[np.maximum(first_bad - 1, 0)] - seat, 0.0)
    safe_core = np.where(first_bad == len(tb), longest, safe_core)
    if core_length_mm is None:
        fits = safe_core  # on the core's sampling steps: its end keeps every margin
        if fields.has_skin:
            # A deep skin entry shortens the core to what the needle reaches (reserve
            # kept). That end lies before the first sample that breaks a margin, with
            # samples keeping them on both sides: it need not fall on a step.
            reached = parameters.needle.usable_length_mm - extra["needle_length"] - seat - skin
            fits = np.minimum(safe_core, reached)
        core_len = np.clip(
            fits, min(parameters.min_core_length_mm + extra["core_length"], longest), longest
        )
    else:
        core_len = np.broadcast_to(np.asarray(core_length_mm, np.float64), (n,)).copy()
        if np.any(core_len > longest + 1e-6):
            # a user-given core longer than planned: sample it all
            return _evaluate_long_core(
                fields, parameters, c, d, core_len, skin_to_cortex_mm=skin_to_cortex_mm
            )
    in_needle = tb[None, :] <= seat + core_len[:, None] + 1e-6
    core = in_core & in_needle
    core_clearance = np.where(core, core_depth, np.inf).min(axis=1) - r
    marrow_fraction = (core & core_marrow).sum(axis=1) / np.maximum(core.sum(axis=1), 1)
    notch_distance = np.where(in_needle, notch, np.inf).min(axis=1) - r
    bone_si = np.where(in_needle, core_si, np.inf).min(axis=1)
    si_distance = np.minimum(bone_si, path_si) - r

    incidence = np.degrees(np.arccos(cos_inc))
    incidence = np.where(np.linalg.norm(normal, axis=1) > 0.5, incidence, 90.0)
    axial, cranio = axial_and_craniocaudal_angles_deg(d, lateral_sign=fields.side.lateral_sign)
    return Evaluation(
        cortex_entry=c,
        direction=d,
        skin_to_cortex_mm=skin.astype(np.float64),
        core_length_mm=core_len.astype(np.float64),
        path_blocked_mm=path_blocked.astype(np.float64),
        path_clearance_mm=path_clearance.astype(np.float64),
        core_clearance_mm=core_clearance.astype(np.float64),
        core_marrow_fraction=marrow_fraction.astype(np.float64),
        notch_distance_mm=notch_distance.astype(np.float64),
        si_distance_mm=si_distance.astype(np.float64),
        incidence_deg=incidence.astype(np.float64),
        axial_deg=axial,
        craniocaudal_deg=cranio,
        longest_safe_core_mm=safe_core.astype(np.float64),
    )


def _skin_distance(
    fields: SideFields,
    c: NDArray[np.float32],
    d: NDArray[np.float32],
    t: NDArray[np.float32],
    flat: NDArray[np.intp],
    on_grid: NDArray[np.bool_],
) -> FloatArray:
    """How far back from each cortex entry ``c`` the path along ``-d`` leaves the body,
    from its samples at ``t``: between the last sample inside and the first outside,
    narrowed by halving. A path that stays inside is at least as long as it was followed.

    Leaving the planning grid is not reaching the skin: the grid holds every path the
    needle can take, and one that leaves it has not been seen to end (without skin,
    bone-only data, the skin entry is where the path leaves the view)."""

    body = fields.inside.reshape(-1)

    def outside_at(index: NDArray[np.intp], on: NDArray[np.bool_]) -> NDArray[np.bool_]:
        within = body[index] & on
        return ~within if not fields.has_skin else on & ~within

    outside = outside_at(flat, on_grid)
    found = outside.any(axis=1)
    first = np.argmax(outside, axis=1)
    rows = np.flatnonzero(found)
    high = t[first[rows]].astype(np.float64)  # outside
    low = high - PATH_STEP_MM  # inside (or the cortex entry)
    for _ in range(_SKIN_HALVINGS):
        middle = 0.5 * (low + high)
        points = c[rows] - middle.astype(np.float32)[:, None] * d[rows]
        out = outside_at(*fields.lookup(points))
        high = np.where(out, middle, high)
        low = np.where(out, low, middle)
    skin = np.full(len(c), float(t[-1]) + 0.5 * PATH_STEP_MM)
    skin[rows] = 0.5 * (low + high)
    return skin


def _path_depth(
    fields: SideFields, points: NDArray[np.float32], flat: NDArray[np.intp], radius_mm: float
) -> NDArray[np.float32]:
    """Signed depth below the needle's entry surface at path ``points`` (negative
    outside), interpolated wherever the needle is close enough to the ilium for the
    re-grazing test to matter: the nearest voxel's value jumps by a whole voxel with a
    sub-voxel move of the entry, and a whole voxel is more than the test's slack there."""
    depth = fields.entry_depth_mm.reshape(-1)[flat]
    near = depth > -(radius_mm + np.sqrt(3.0) * fields.spacing_mm)
    if near.any():
        smooth, on = fields.interpolate(fields.entry_depth_mm, points[near])
        depth[near] = np.where(on, smooth, depth[near])
    return depth


def _evaluate_long_core(
    fields: SideFields,
    parameters: PlanningParameters,
    c: FloatArray,
    d: FloatArray,
    core_len: FloatArray,
    *,
    skin_to_cortex_mm: FloatArray | None,
) -> Evaluation:
    longer = parameters.with_overrides(core_length_mm=float(core_len.max()))
    return evaluate(
        fields, longer, c, d, core_length_mm=core_len, skin_to_cortex_mm=skin_to_cortex_mm
    )
