"""The planner and the checker on phantoms: expected plan shape, truth, vectorised kernel
against a slow reference, bad trajectories, designed no-safe-path sides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from bmbx_phantoms import TRUTH_LABELS, make_phantom
from bmbx_phantoms.truth import truth_anatomy
from bmbx_plan import Anatomy, Planner, PlanningParameters, segment_pelvis
from bmbx_plan.planning.constraints import (
    CONSTRAINTS,
    HARD_NAMES,
    constraint_results,
    hard_passes,
    hard_shortfalls,
)
from bmbx_plan.planning.evaluate import CORE_STEP_MM, PATH_STEP_MM, SKIN_TOLERANCE_MM, evaluate
from bmbx_plan.planning.fields import BLOCKED_MM, SideFields
from bmbx_plan.planning.parameters import MIN_RESERVE_MM, NEEDLES, RESERVE_SHARES, Needle, Side

SCHEMA = Path(__file__).parents[1] / ".." / "shared" / "spec" / "plan.schema.json"


@pytest.fixture(scope="module")
def phantom_case() -> tuple[object, Anatomy, Planner]:
    phantom = make_phantom(seed=0, position="HFP")
    anatomy = segment_pelvis(phantom.ct)
    return phantom, anatomy, Planner(anatomy)


@pytest.fixture(scope="module")
def plans(phantom_case: tuple[object, Anatomy, Planner]) -> dict[str, object]:
    _, _, planner = phantom_case
    return {side: planner.plan(side) for side in ("left", "right")}


def test_parameters_have_the_domain_defaults_and_refuse_nonsense() -> None:
    p = PlanningParameters()
    assert (p.needle.name, p.needle.outer_diameter_mm, p.needle.usable_length_mm) == (
        "11G-100",
        3.0,
        90.0,
    )
    assert NEEDLES["8G-100"].outer_diameter_mm == 4.2
    assert (p.core_length_mm, p.min_core_length_mm, p.max_incidence_deg) == (25.0, 20.0, 40.0)
    assert p.margins_mm["sciatic_notch"] == 10.0
    assert p.margins_mm["si_joint"] == 5.0
    assert p.margins_mm["cortex"] == 2.0
    assert p.margins_mm["vessels"] == 5.0
    assert p.with_overrides(in_plane_only=True).max_craniocaudal_limit_deg == 3.0
    assert p.with_overrides(needle="11G-150").needle.usable_length_mm == 140.0
    with pytest.raises(ValueError, match="exceeds core_length_mm"):
        PlanningParameters(core_length_mm=15.0)
    with pytest.raises(ValueError, match="unknown needle"):
        p.with_overrides(needle="14G-50")
    with pytest.raises(ValueError, match="unknown margin"):
        p.with_overrides(margins_mm={"spleen": 3.0})


def test_the_reserve_is_half_the_voxel_but_never_below_what_the_safety_study_holds() -> None:
    p = PlanningParameters()
    # the bones are split on a ~1.5 mm working grid: a finer CT keeps the 2.5 mm CT's
    assert p.reserve_for(0.8) == p.reserve_for(2.5) == MIN_RESERVE_MM == 1.25
    assert p.reserve_for(3.0) == 1.5
    assert p.reserve_for(5.0) == 2.5  # not capped: thick slices move the tables more
    assert PlanningParameters(reserve_mm=0.3).reserve_for(0.8) == 0.3  # asked for


@pytest.mark.parametrize("side", ["left", "right"])
def test_plan_has_the_expected_shape(plans: dict[str, object], side: str) -> None:
    plan = plans[side]
    assert plan.feasible, plan.reasons
    t, m = plan.trajectory, plan.metrics
    lateral = Side.parse(side).lateral_sign
    # skin entry medial to the cortex entry; the needle runs laterally and anteriorly
    assert lateral * (t.cortex_entry_lps_mm[0] - t.skin_entry_lps_mm[0]) > 0
    assert t.direction_lps[1] < 0
    assert m.axial_angle_deg > 0
    assert abs(m.craniocaudal_angle_deg) <= 30.0
    assert m.core_length_mm >= 20.0
    assert m.total_depth_mm <= 90.0
    assert m.skin_entry_from_midline_mm > 0  # on the biopsied side of the midline
    assert m.table_position_mm == pytest.approx(t.skin_entry_lps_mm[2])
    for c in plan.constraints:
        assert c.passed or c.kind == "soft", c.message
    assert plan.cross_check is not None
    assert plan.cross_check.agrees, plan.cross_check
    assert plan.candidates_evaluated > 50_000
    assert len(plan.alternatives) >= 1
    assert len(plan.pareto) >= 1
    scores = [a.score for a in plan.alternatives]
    assert all(s <= plan.score + 1e-9 for s in scores)


@pytest.mark.parametrize("side", ["left", "right"])
def test_planned_trajectory_is_safe_on_the_phantom_truth(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object], side: str
) -> None:
    phantom, _, _ = phantom_case
    truth = Planner(truth_anatomy(phantom), PlanningParameters(reserve_mm=0.0))
    t = plans[side].trajectory
    judged = truth.check(side, t.skin_entry_lps_mm, t.core_end_lps_mm)
    assert judged.feasible, [c.message for c in judged.failed]


def test_checking_the_plan_reproduces_its_verdict(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, _, planner = phantom_case
    plan = plans["right"]
    t = plan.trajectory
    check = planner.check("right", t.skin_entry_lps_mm, t.core_end_lps_mm)
    assert check.feasible
    # the checker finds the cortex by walking the line in 0.25 mm steps on a 1 mm grid
    assert np.linalg.norm(check.trajectory.cortex_entry_lps_mm - t.cortex_entry_lps_mm) < 1.0
    assert check.metrics.core_length_mm == pytest.approx(plan.metrics.core_length_mm, abs=1.0)
    assert not any("under the skin" in r for r in check.reasons)


def test_a_contrast_filled_lumen_on_the_path_is_kept_clear_by_both_methods(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    # A contrast-filled lumen (radius 4 mm) placed on the plan's soft-tissue path, half
    # way from the skin to the cortex: the plan as drawn now fails, by both methods, and
    # the new plan keeps the vessels' margin from it.
    from bmbx_plan.anatomy import LABELS

    _, anatomy, planner = phantom_case
    # the unenhanced phantom has none, and its notes say nothing of one
    assert not (np.asarray(anatomy.labels.array) == LABELS["contrast_lumen"]).any()
    assert not any("contrast_lumen" in note for note in anatomy.notes)
    t = plans["right"].trajectory
    centre = 0.5 * (t.skin_entry_lps_mm + t.cortex_entry_lps_mm)
    grid = anatomy.labels
    index = np.indices(grid.shape).reshape(3, -1).T
    near = np.linalg.norm(grid.index_to_lps(index) - centre, axis=1) < 4.0
    labels = np.array(grid.array)
    lumen = np.zeros(grid.shape, bool)
    lumen[tuple(index[near].T)] = True
    assert (labels[lumen] == LABELS["body"]).all()
    labels[lumen] = LABELS["contrast_lumen"]
    enhanced = Planner(replace(anatomy, labels=grid.with_array(labels)), planner.parameters)
    check = enhanced.check("right", t.skin_entry_lps_mm, t.core_end_lps_mm, cross_check=True)
    assert not check.constraint("soft_tissue_path").passed
    assert check.cross_check is not None
    assert check.cross_check.agrees, check.cross_check.disagreements
    plan = enhanced.plan("right")
    assert plan.feasible
    margin = enhanced.parameters.margin("vessels")
    assert plan.metrics.clearances_mm["contrast_lumen"] >= margin
    assert plan.cross_check is not None
    assert plan.cross_check.agrees, plan.cross_check.disagreements


def test_a_skin_entry_drawn_under_the_skin_is_called_out(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, _, planner = phantom_case
    t = plans["right"].trajectory
    deeper = t.skin_entry_lps_mm + 12.0 * t.direction_lps
    check = planner.check("right", deeper, t.core_end_lps_mm)
    said = [r for r in check.reasons if "under the skin" in r]
    assert len(said) == 1
    # The line is judged from the skin, as the plan was: the needle crosses those 12 mm
    # too and needs them. Both find the skin to 1/8 mm from their own cortex entries.
    depth = float(said[0].split("lies ")[1].split(" mm")[0])
    assert depth == pytest.approx(12.0, abs=0.3)
    drawn_skin = check.trajectory.skin_entry_lps_mm
    assert np.linalg.norm(drawn_skin - t.skin_entry_lps_mm) < 0.3
    assert check.metrics.total_depth_mm == pytest.approx(
        plan_depth := plans["right"].metrics.total_depth_mm, abs=0.3
    )
    assert check.constraint("needle_length").value == pytest.approx(plan_depth, abs=0.3)
    # the same line drawn from a point in the air behind the skin: nothing to say
    outside = t.skin_entry_lps_mm - 5.0 * t.direction_lps
    reasons = planner.check("right", outside, t.core_end_lps_mm).reasons
    assert not any("under the skin" in r or "inside the body" in r for r in reasons)


def test_every_proposal_passes_when_checked_as_drawn(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, _, planner = phantom_case
    for side, plan in plans.items():
        proposals = [plan, *plan.alternatives, *plan.pareto]
        for proposal in proposals:
            t = proposal.trajectory
            check = planner.check(side, t.skin_entry_lps_mm, t.core_end_lps_mm)
            assert check.feasible, (side, [c.message for c in check.failed])
            # the proposal is the checker's own reading of the line
            assert np.allclose(check.trajectory.cortex_entry_lps_mm, t.cortex_entry_lps_mm)


def test_the_needle_meets_the_bone_over_pits_narrower_than_itself() -> None:
    from bmbx_plan.planning.fields import _needle_surface

    bone = np.zeros((40, 40, 40), bool)
    bone[:, :, 20:] = True  # a flat bone surface facing -i
    bone[18:20, 18:20, 20:26] = False  # a canal 2 mm wide, 6 mm deep
    bone[5:13, 5:13, 20:26] = False  # a pit 8 mm wide
    surface = _needle_surface(bone, 1.5, 1.0)  # an 11G needle: 1.5 mm radius
    assert surface[bone].all()
    assert surface[18:20, 18:20, 20:26].all()  # the 3 mm needle cannot enter the canal
    assert not surface[7:11, 7:11, 20:25].any()  # it can enter the pit
    assert not surface[:, :, :20].any()  # the flat surface stays where it is


def test_core_clearance_moves_no_more_than_the_needle_does(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    """A cortex entry found 0.1-1 mm further along the line (the truth's surface against
    the segmentation's) moves the core by as much, and its clearance by no more: the
    clearance must not jump by a voxel between neighbouring voxel centres."""
    _, _, planner = phantom_case
    fields = planner.fields("right")
    p = planner.parameters
    t = plans["right"].trajectory
    shifts = np.linspace(-1.0, 1.0, 41)
    entries = t.cortex_entry_lps_mm + shifts[:, None] * t.direction_lps
    directions = np.repeat(t.direction_lps[None], len(shifts), axis=0)
    e = evaluate(fields, p, entries, directions, core_length_mm=p.core_length_mm)
    step = np.diff(shifts)[0]
    # The map changes by at most 1 mm per mm along each grid axis, so its trilinear
    # interpolant by at most sqrt(3) mm per mm in any direction (the nearest voxel jumps
    # by up to a whole voxel, 1 mm, at once); float32 maps add 1e-4 mm.
    assert np.all(np.abs(np.diff(e.core_clearance_mm)) <= np.sqrt(3.0) * step + 1e-4)


def test_bad_trajectories_fail_the_right_constraints(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, anatomy, planner = phantom_case
    t = plans["right"].trajectory
    d = t.direction_lps
    # overshoot: the core runs 60 mm further, through the wing and out of the bone
    long = planner.check("right", t.skin_entry_lps_mm, t.core_end_lps_mm + 60.0 * d)
    assert not long.feasible
    assert not long.constraint("core_cortex_clearance").passed
    # straight at the sacrum from the right PSIS region
    sacrum = anatomy.labels.index_to_lps(np.argwhere(anatomy.mask("sacrum"))).mean(axis=0)
    entry = t.skin_entry_lps_mm
    medial = planner.check("right", entry, sacrum)
    failed = {c.name for c in medial.failed}
    assert not medial.feasible
    assert failed & {"si_joint", "core_cortex_clearance", "soft_tissue_path", "reaches_ilium"}


def _slow_reference(fields: SideFields, p: PlanningParameters, c: np.ndarray, d: np.ndarray):
    """Per-point loop with index arithmetic of its own: the obvious reference."""

    def at(array: np.ndarray, point: np.ndarray) -> float | None:
        index = np.rint(fields.grid.lps_to_index(point[None])[0]).astype(int)
        if np.any(index < 0) or np.any(index >= np.array(fields.grid.shape)):
            return None
        return float(array[tuple(index)])

    def trilinear(array: np.ndarray, point: np.ndarray) -> float | None:
        position = fields.grid.lps_to_index(point[None])[0]
        low = np.floor(position).astype(int)
        if np.any(low < 0) or np.any(low + 1 >= np.array(fields.grid.shape)):
            return None
        total = 0.0
        for dk in (0, 1):
            for dj in (0, 1):
                for di in (0, 1):
                    weight = 1.0
                    for axis, step in enumerate((dk, dj, di)):
                        frac = position[axis] - low[axis]
                        weight *= frac if step else 1.0 - frac
                    total += weight * float(array[low[0] + dk, low[1] + dj, low[2] + di])
        return total

    r = p.needle.radius_mm
    normal = fields.normals_at(c[None].astype(np.float32))[0]
    cos_inc = float(np.clip(-np.dot(normal, d), 0.0, 1.0))
    skin = None
    slack = []
    blocked = 0.0
    # the search follows the path as far as a passing plan could need
    reach = p.needle.usable_length_mm - p.seat_depth_mm - p.min_core_length_mm
    t = PATH_STEP_MM
    while t <= reach + 1e-9:
        point = c - t * d
        inside = at(fields.inside.astype(float), point)
        if not inside:
            # the skin: the first point outside, walked from the last sample inside
            fine = t - PATH_STEP_MM
            while at(fields.inside.astype(float), c - fine * d):
                fine += 1.0 / 64.0
            skin = fine
            break
        slack.append(at(fields.path_slack_mm, point))
        # the needle must leave the ilium behind: 0.4 mm per mm back from the entry
        # (from 2 mm on), up to its radius; the depth is interpolated near the bone
        depth = at(fields.entry_depth_mm, point)
        if depth is not None and depth > -(r + np.sqrt(3.0) * fields.spacing_mm):
            depth = trilinear(fields.entry_depth_mm, point)
        regrazes = depth is not None and t >= 2.0 and depth > -min(r, 0.4 * t * cos_inc)
        if slack[-1] is None or slack[-1] <= BLOCKED_MM or regrazes:
            blocked += PATH_STEP_MM
        t += PATH_STEP_MM
    if skin is None:
        skin = t - PATH_STEP_MM + 0.5 * PATH_STEP_MM  # a lower bound, as in the search
    core = []
    tb = p.seat_depth_mm
    while tb <= p.seat_depth_mm + p.core_length_mm + 1e-6:
        point = c + tb * d
        depth = trilinear(fields.ilium_depth_mm, point)
        core.append((depth, at(fields.marrow.astype(float), point)))
        tb += CORE_STEP_MM
    return skin, blocked, [s for s in slack if s is not None and s > BLOCKED_MM], core


def test_vectorised_evaluation_matches_a_slow_reference(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, _, planner = phantom_case
    fields = planner.fields("right")
    p = planner.parameters
    rng = np.random.default_rng(3)
    t = plans["right"].trajectory
    entries = t.cortex_entry_lps_mm + rng.normal(0.0, 3.0, size=(12, 3))
    base = t.direction_lps
    directions = base + rng.normal(0.0, 0.15, size=(12, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    fast = evaluate(fields, p, entries, directions, core_length_mm=p.core_length_mm)
    for n in range(len(entries)):
        skin, blocked, slack, core = _slow_reference(fields, p, entries[n], directions[n])
        if skin is not None:
            # the search halves the step three times: its skin lies within 1/16 mm of a
            # crossing, the reference's within 1/64 mm beyond it
            assert fast.skin_to_cortex_mm[n] == pytest.approx(skin, abs=1.0 / 16 + 1.0 / 64)
            assert fast.path_blocked_mm[n] == pytest.approx(blocked, abs=1e-9)
        depths = [dep for dep, _ in core if dep is not None]
        if len(depths) == len(core):
            assert fast.core_clearance_mm[n] == pytest.approx(
                min(depths) - p.needle.radius_mm, abs=1e-4
            )
            marrow = np.mean([m for _, m in core])
            assert fast.core_marrow_fraction[n] == pytest.approx(marrow, abs=1e-9)
        if skin is not None and slack and fast.path_blocked_mm[n] == 0:
            assert fast.path_clearance_mm[n] == pytest.approx(
                min(slack) - p.needle.radius_mm, abs=1e-4
            )


def test_shortfalls_say_by_how_much_each_hard_limit_is_missed(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    """Candidates scattered around the plan, judged one by one from the reported value
    and limit: the shortfall is how far the value lies beyond the limit (a marrow
    fraction counted as mm of core), zero exactly where the constraint passes."""
    _, _, planner = phantom_case
    fields, p = planner.fields("right"), planner.parameters
    rng = np.random.default_rng(11)
    t = plans["right"].trajectory
    entries = t.cortex_entry_lps_mm + rng.normal(0.0, 6.0, size=(40, 3))
    directions = t.direction_lps + rng.normal(0.0, 0.3, size=(40, 3))
    rows = evaluate(fields, p, entries, directions / np.linalg.norm(directions, axis=1)[:, None])
    shortfalls = hard_shortfalls(rows, p)
    assert shortfalls.shape == (40, len(HARD_NAMES))
    assert (shortfalls > 0).any()
    assert (shortfalls == 0).any()
    np.testing.assert_array_equal(shortfalls <= 1e-6, hard_passes(rows, p))
    for n in range(rows.count):
        for result in constraint_results(rows.take(np.array([n])), p):
            if result.kind != "hard":
                continue
            got = shortfalls[n, HARD_NAMES.index(result.name)]
            if result.value is None:
                assert got == np.inf or result.name == "path_clearance"
                continue
            at_most = result.name in (
                "needle_length",
                "soft_tissue_path",
                "cortex_incidence",
                "craniocaudal_angle",
            )
            beyond = result.value - result.limit if at_most else result.limit - result.value
            if result.unit == "fraction":
                beyond *= p.core_length_mm
            assert got == pytest.approx(max(beyond, 0.0), abs=2e-3), result  # value rounding
            assert (got <= 1e-6) == result.passed, result


def test_a_wing_too_thin_for_a_core_binds_the_core_clearance_and_names_its_near_miss() -> None:
    """Cohort phantom 1076 (thin_wing_left, FFP), left: the wing, thinned to a quarter,
    holds no core in marrow with 2 mm to both tables, so no candidate keeps the core
    clearance; the plan names it binding, and the near-miss it reports fails, when checked
    on its own, every constraint the plan names (drawn from its skin entry, the checker
    may find more: it samples the path from the skin)."""
    phantom = make_phantom(seed=1076, preset="thin_wing_left", position="FFP")
    planner = Planner(segment_pelvis(phantom.ct))
    plan = planner.plan("left", cross_check=False, longer_needle=False)
    assert not plan.feasible
    assert plan.failing_shares["core_cortex_clearance"] == 1.0
    failed = {c.name for c in plan.failed}
    assert "core_cortex_clearance" in failed
    assert plan.near_miss is not None
    assert plan.near_miss.metrics.core_min_cortex_clearance_mm < planner.parameters.margin(
        "cortex"
    )
    trajectory = plan.near_miss.trajectory
    checked = planner.check("left", trajectory.skin_entry_lps_mm, trajectory.core_end_lps_mm)
    assert failed <= {c.name for c in checked.failed}


def test_a_limit_kept_only_within_the_reserve_is_named_with_that_reserve(
    phantom_case: tuple[object, Anatomy, Planner],
) -> None:
    """With a reserve of 4 mm no path keeps every limit by its shares of it; the binding
    constraints the near-miss passes at the limit say which reserve they lack, in their
    own unit (the SI joint keeps three shares, the incidence one degree per mm)."""
    _, anatomy, _ = phantom_case
    reserve = 4.0
    plan = Planner(anatomy, PlanningParameters(reserve_mm=reserve)).plan(
        "left", cross_check=False, longer_needle=False
    )
    assert not plan.feasible
    at_most = {rule.name: rule.at_most for rule in CONSTRAINTS}
    within = [
        c
        for c in plan.failed
        if c.value is not None
        and c.limit is not None
        and (c.value <= c.limit if at_most[c.name] else c.value >= c.limit)
    ]
    assert within, [c.message for c in plan.failed]
    for c in within:
        lacking = RESERVE_SHARES[c.name] * reserve
        assert f"within the {lacking:.1f} {c.unit} reserve" in c.message, c.message
    # a CT of the validated voxel size: no advice to reconstruct it
    assert not any("Reconstruct" in r for r in plan.reasons), plan.reasons


def test_plans_on_thick_slices_say_they_lie_beyond_the_validated_voxel_size() -> None:
    """At 5 mm slices the reserve is 2.5 mm (half the voxel): every plan says that the
    safety study validates voxels up to 2.5 mm, by how much larger the reserves are here,
    and to reconstruct with thinner slices; with a reserve the user set, only the first."""
    phantom = make_phantom(
        seed=1001, position="HFP", preset="average", pixel_spacing_mm=1.0, slice_spacing_mm=5.0
    )
    anatomy = segment_pelvis(phantom.ct)
    planner = Planner(anatomy)
    assert planner.reserve_mm == 2.5
    advice = (
        "This CT's voxels measure up to 5.0 mm: the planner's safety is measured on CTs "
        "whose voxels and slices measure 2.5 mm or less, and its reserves for segmentation "
        "error are 100 % larger here. Reconstruct with thinner slices before relying on "
        "this plan."
    )
    for side in ("left", "right"):
        plan = planner.plan(side, cross_check=False)
        assert advice in plan.reasons, plan.reasons
    chosen = Planner(anatomy, PlanningParameters(reserve_mm=2.5)).plan("right", cross_check=False)
    assert (
        "This CT's voxels measure up to 5.0 mm: the planner's safety is measured on CTs "
        "whose voxels and slices measure 2.5 mm or less. Reconstruct with thinner slices "
        "before relying on this plan." in chosen.reasons
    ), chosen.reasons


def test_slices_thicker_than_their_spacing_set_the_reserve_and_say_so(
    phantom_case: tuple[object, Anatomy, Planner],
) -> None:
    """Slices of 2.5 mm spacing reconstructed 4 mm thick blur as 4 mm slices do: the
    reserve is half of 4 mm, and the plan names the thickness."""
    _, anatomy, _ = phantom_case
    info = replace(anatomy.labels.info, slice_thickness_mm=4.0)
    thick = replace(anatomy, labels=anatomy.labels.with_info(info))
    planner = Planner(thick)
    assert planner.reserve_mm == 2.0
    plan = planner.plan("left", cross_check=False)
    assert (
        "This CT's slices are 4.0 mm thick: the planner's safety is measured on CTs whose "
        "voxels and slices measure 2.5 mm or less, and its reserves for segmentation error "
        "are 60 % larger here. Reconstruct with thinner slices before relying on this plan."
        in plan.reasons
    ), plan.reasons
    assert Planner(anatomy).reserve_mm == 1.25  # the same CT, thin slices


def test_a_needle_too_short_for_the_full_core_takes_the_core_it_reaches(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, anatomy, planner = phantom_case
    t, metrics = plans["right"].trajectory, plans["right"].metrics
    # a needle 1.5 mm shorter than the plan's path needs (less than the 4.4 mm between
    # the full core and the shortest core with its reserve)
    short = Needle(
        "11G-short", planner.parameters.needle.outer_diameter_mm, metrics.total_depth_mm - 1.5
    )
    p = planner.parameters.with_overrides(needle=short)
    reserve = planner.reserve_mm
    row = evaluate(
        planner.fields("right"),
        p,
        t.cortex_entry_lps_mm[None],
        t.direction_lps[None],
        reserve_mm=reserve,
    )
    # the same path, with the core cut to what the needle reaches (its reserve kept)
    # by the 1.5 mm the needle lacks (the skin found again from the plan's cortex entry
    # lies within the checker's skin tolerance of the plan's)
    assert row.core_length_mm[0] == pytest.approx(
        metrics.core_length_mm - 1.5, abs=SKIN_TOLERANCE_MM
    )
    assert row.core_length_mm[0] >= p.min_core_length_mm + RESERVE_SHARES["core_length"] * reserve
    reach = short.usable_length_mm - RESERVE_SHARES["needle_length"] * reserve
    # the core ends where the needle does (not on the core's 0.5 mm sampling step: the
    # samples on both sides of that end keep every margin)
    assert row.total_depth_mm(p)[0] == pytest.approx(reach, abs=1e-6)
    passes = hard_passes(row, p, has_skin=True, reserve_mm=reserve)
    assert passes[0, HARD_NAMES.index("needle_length")]
    # the planner keeps the short needle, and says when it cut the core
    plan = Planner(anatomy, p).plan("right", cross_check=False)
    assert plan.feasible
    assert plan.needle == "11G-short"
    assert plan.metrics.total_depth_mm <= short.usable_length_mm
    said = any("as far as the 11G-short needle reaches" in r for r in plan.reasons)
    # (it says so for a core cut by more than a core step; here the wing allows 25 mm)
    assert said == (plan.metrics.core_length_mm < p.core_length_mm - CORE_STEP_MM)
    if said:  # cut where the needle ends
        assert plan.metrics.total_depth_mm == pytest.approx(short.usable_length_mm, abs=1e-6)


def test_a_needle_too_short_for_any_path_gives_way_to_a_longer_one(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, anatomy, planner = phantom_case
    depth = plans["right"].metrics.skin_to_cortex_mm
    # shorter than the skin-to-cortex depth of every path: nothing passes with it
    tiny = Needle("11G-tiny", planner.parameters.needle.outer_diameter_mm, 0.5 * depth)
    p = planner.parameters.with_overrides(needle=tiny)
    alone = Planner(anatomy, p).plan("right", cross_check=False, longer_needle=False)
    assert not alone.feasible
    # every candidate is beyond this needle's reach, and the plan says so
    assert alone.failing_shares["needle_length"] == 1.0
    assert any("needle_length 100%" in line for line in alone.reasons)
    plan = Planner(anatomy, p).plan("right", cross_check=False)
    assert plan.feasible
    assert plan.needle == "11G-100"  # the shortest longer needle of the same gauge
    assert plan.reasons[0].startswith("No trajectory passes with the 11G-tiny needle")


def test_a_longer_needle_is_tried_when_the_short_one_fails_for_another_reason() -> None:
    # Cohort phantom 1012 (average, HFS), left: with the 11G-100 every path the needle
    # reaches fails the core clearance or the SI joint margin with the reserve (so the
    # near-miss binds on those, not on the needle); deeper paths only the 11G-150
    # reaches pass.
    phantom = make_phantom(seed=1012, preset="average", position="HFS")
    planner = Planner(segment_pelvis(phantom.ct))
    alone = planner.plan("left", cross_check=False, longer_needle=False)
    assert not alone.feasible
    assert "needle_length" not in {c.name for c in alone.failed}
    # yet some candidates are beyond its reach: that is what sends the search on
    assert 0.0 < alone.failing_shares["needle_length"] < 1.0
    assert set(alone.failing_shares) <= set(HARD_NAMES)
    plan = planner.plan("left", cross_check=False)
    assert plan.feasible
    assert plan.needle == "11G-150"


def test_surface_normals_match_the_gradient_of_the_whole_smoothed_surface(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object]
) -> None:
    _, _, planner = phantom_case
    fields = planner.fields("right")
    # slow and obvious: numpy's gradient of the whole map, read at the nearest voxel
    gradient = np.stack(np.gradient(fields.surface_smooth)[::-1], axis=-1)
    norm = np.linalg.norm(gradient, axis=-1, keepdims=True)
    reference = np.where(norm > 1e-3, -gradient / np.maximum(norm, 1e-12), 0.0)
    rng = np.random.default_rng(8)
    entry = plans["right"].trajectory.cortex_entry_lps_mm
    shape = np.array(fields.grid.shape)
    corners = np.array([[0, 0, 0], shape - 1, [0, shape[1] - 1, 5]])  # on the grid's faces
    index = np.concatenate(
        [
            np.rint(fields.grid.lps_to_index(entry + rng.normal(0.0, 4.0, size=(300, 3)))),
            corners,
        ]
    ).astype(int)
    index = index[np.all((index >= 0) & (index < shape), axis=1)]
    ours = fields.normals_at(fields.grid.index_to_lps(index).astype(np.float32))
    expected = reference[tuple(index.T)]
    assert np.count_nonzero(np.linalg.norm(expected, axis=1)) > 100  # near the surface
    # float32 smoothing: gradients agree to rounding
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_plan_json_validates_against_the_schema(
    phantom_case: tuple[object, Anatomy, Planner], plans: dict[str, object], tmp_path: Path
) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"schema {SCHEMA} is absent")
    from bmbx_plan import PlanSet
    from bmbx_plan.planning.planfile import write_plans

    _, anatomy, planner = phantom_case
    result = PlanSet.of(tuple(plans.values()), planner.parameters, anatomy)
    written = write_plans(result, tmp_path / "out")
    document = json.loads(written["plan"].read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(document)
    assert {"markups_left", "markups_right", "report"} <= set(written)
    markup = json.loads(written["markups_right"].read_text())
    assert markup["markups"][0]["coordinateSystem"] == "LPS"


@pytest.mark.parametrize(
    ("preset", "side"), [("thin_wing_left", "left"), ("no_safe_right", "right")]
)
def test_designed_no_safe_path_sides_are_infeasible_with_the_right_reason(
    preset: str, side: str, tmp_path: Path
) -> None:
    phantom = make_phantom(seed=5, position="HFP", preset=preset)
    plan = Planner(segment_pelvis(phantom.ct)).plan(side)
    assert not plan.feasible
    assert plan.trajectory is None
    assert plan.near_miss is not None
    assert "core_cortex_clearance" in {c.name for c in plan.failed}
    assert any("Binding: core_cortex_clearance" in r for r in plan.reasons)
    # the truth agrees that nothing is safe there
    truth = Planner(truth_anatomy(phantom), PlanningParameters(reserve_mm=0.0)).plan(side)
    assert not truth.feasible


def test_the_ct_table_under_a_supine_patient_is_no_obstacle() -> None:
    """On a supine scan the posterior skin rests on the table; the biopsy is done prone,
    where no table lies behind the patient, so a skin entry on the table is as good as
    one in the air beside it."""
    from bmbx_plan.anatomy import LABELS

    phantom = make_phantom(seed=0, position="HFS")
    truth = Planner(truth_anatomy(phantom), PlanningParameters(reserve_mm=0.0))
    plan = truth.plan("right", cross_check=False)
    assert plan.feasible
    t = plan.trajectory
    labels = truth.anatomy.labels
    behind = t.skin_entry_lps_mm - np.arange(0.0, 60.0, 0.25)[:, None] * t.direction_lps
    index = np.rint(labels.lps_to_index(behind)).astype(int)
    on_table = np.asarray(labels.array)[tuple(index.T)] == LABELS["table"]
    assert on_table.any(), "the line behind the skin entry should meet the table"
    # 6 mm into the table: the path from there crosses table voxels before the skin
    first = int(np.argmax(on_table))
    assert on_table[first : first + 25].all(), "the table is thicker than 6 mm"
    entry = behind[first + 24]
    # a longer needle: the table's 6 mm must not make the needle length the question
    judge = Planner(truth.anatomy, truth.parameters.with_overrides(needle="11G-150"))
    check = judge.check("right", entry, t.core_end_lps_mm, cross_check=True)
    assert check.constraint("soft_tissue_path").passed, check.constraint("soft_tissue_path")
    assert check.feasible, [c.message for c in check.failed]
    # the surface-mesh cross-check reads the stretch before the skin the same way
    assert check.cross_check is not None
    assert check.cross_check.agrees, check.cross_check.disagreements


def test_proposals_that_fail_as_drawn_give_an_infeasible_plan_with_its_reasons(
    phantom_case: tuple[object, Anatomy, Planner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When what passes in the search fails once re-checked as drawn (skin entry to core
    end), the answer is still an infeasible plan with its binding constraint and a
    near-miss, not an empty refusal."""
    _, anatomy, planner = phantom_case
    as_drawn = Planner._as_drawn

    def short_core(self: Planner, fields: SideFields, skin: np.ndarray, target: np.ndarray):
        d = (target - skin) / np.linalg.norm(target - skin)
        return as_drawn(self, fields, skin, target - 8.0 * d)  # 25 mm cores become 17 mm

    monkeypatch.setattr(Planner, "_as_drawn", short_core)
    plan = Planner(anatomy, planner.parameters).plan("right", cross_check=False)
    assert plan.status == "infeasible"
    assert plan.trajectory is None
    assert "core_length" in {c.name for c in plan.failed}
    assert plan.near_miss is not None
    assert plan.candidates_evaluated > 10_000
    assert "re-checked as drawn" in plan.reasons[0]
    assert any(r.startswith("Binding: core_length") for r in plan.reasons)


def test_the_skin_is_where_the_path_leaves_the_body_however_deep_and_oblique() -> None:
    # Obese phantom (115 mm of soft tissue behind the PSIS): the planner walks each path
    # back from its cortex entry to the skin on its planning grid. A path that left the
    # grid inside the body was taken to have reached the skin at the grid's edge, up to
    # 8 mm short of it on steep paths (a too-short needle, tissue never checked). Here the
    # skin depth of the planner's own candidates is compared with a slow walk along each
    # line over the phantom's whole truth label volume.
    phantom = make_phantom(seed=21, preset="obese", position="HFP")
    truth = truth_anatomy(phantom)
    planner = Planner(truth, PlanningParameters(reserve_mm=0.0).with_overrides(needle="11G-150"))
    found = planner.candidates("left")
    assert not isinstance(found, str)
    labels = np.asarray(phantom.labels.array)
    body = (labels != 0) & (labels != TRUTH_LABELS["table"])
    reach = 140.0 - planner.parameters.seat_depth_mm - planner.parameters.min_core_length_mm
    rng = np.random.default_rng(0)
    steep = np.flatnonzero(found.axial_deg > 40.0)
    rows = np.concatenate([rng.choice(steep, 150), rng.choice(found.count, 150)])
    t = np.arange(0.0, reach + 20.0, 0.25)
    for n in rows:
        line = found.cortex_entry[n] - t[:, None] * found.direction[n]
        index = np.rint(phantom.ct.lps_to_index(line)).astype(int)
        on = np.all((index >= 0) & (index < np.array(body.shape)), axis=1)
        inside = np.zeros(len(t), bool)
        inside[on] = body[tuple(index[on].T)]
        out = np.flatnonzero(~inside & (t > 2.0))
        skin = t[out[0]] if len(out) else np.inf
        found_skin = found.skin_to_cortex_mm[n]
        if skin > reach:  # beyond the needle's reach: the planner must not see it nearer
            assert found_skin > reach - 1.0, (n, skin, found_skin)
        else:  # path step 1 mm, planning grid 1 mm against the CT's 2 mm voxels
            assert abs(found_skin - skin) <= 2.5, (n, skin, found_skin)


@pytest.mark.parametrize(
    ("position", "line"),
    [("HFP", None), ("FFS", "supine"), ("HFDL", "decubitus"), ("FFDR", "decubitus"), ("", None)],
)
def test_a_scan_not_taken_prone_says_so_from_its_patient_position(
    phantom_case: tuple[object, Anatomy, Planner], position: str, line: str | None
) -> None:
    """The biopsy is done prone: a supine or decubitus scan shows another soft-tissue
    depth and skin; an unknown position (a NIfTI without a header) says nothing."""
    from dataclasses import replace

    _, anatomy, _ = phantom_case
    labels = anatomy.labels.with_info(replace(anatomy.labels.info, patient_position=position))
    plan = Planner(replace(anatomy, labels=labels)).plan("right", cross_check=False)
    said = [r for r in plan.reasons if r.startswith("This is a")]
    if line is None:
        assert not said, said
    else:
        assert said == [
            f"This is a {line} scan: the biopsy is done prone, so the soft-tissue depth and "
            "the skin entry will differ; re-plan on the prone planning scan."
        ]
