"""The mesh/VTK cross-check of the planner's hard constraints: against analytic spheres
(the per-trajectory function) and against the planner on a phantom (agreement, and
failure of deliberately bad trajectories by both methods)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from bmbx_plan.anatomy import LABELS, Anatomy
from bmbx_plan.mesh import Mesh
from bmbx_plan.planning import Plan, Planner, PlanningParameters, Side, Trajectory
from bmbx_plan.planning.crosscheck import (
    CandidateCheck,
    SideScene,
    Surface,
    check_candidate,
    cross_check,
    cross_check_tolerance_mm,
    side_scene,
)

FloatArray = NDArray[np.float64]


# ------------------------------------------------------------------ analytic spheres


def _icosphere(radius_mm: float, centre: tuple[float, float, float], *, level: int) -> Mesh:
    """A closed, outward-wound sphere: a subdivided icosahedron, vertices on the sphere."""
    g = (1.0 + math.sqrt(5.0)) / 2.0
    vertices = [
        [-1, g, 0], [1, g, 0], [-1, -g, 0], [1, -g, 0],
        [0, -1, g], [0, 1, g], [0, -1, -g], [0, 1, -g],
        [g, 0, -1], [g, 0, 1], [-g, 0, -1], [-g, 0, 1],
    ]  # fmt: skip
    faces = [
        [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
        [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
        [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
        [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
    ]  # fmt: skip
    points = [np.asarray(v, float) / np.linalg.norm(v) for v in vertices]
    for _ in range(level):
        middle: dict[tuple[int, int], int] = {}
        finer = []
        for a, b, c in faces:
            ab, bc, ca = (_midpoint(points, middle, u, v) for u, v in ((a, b), (b, c), (c, a)))
            finer += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = finer
    mesh = Mesh(np.asarray(points) * radius_mm + np.asarray(centre), faces)
    assert mesh.volume_mm3() > 0  # outward winding (a test of the helper itself)
    return mesh


def _midpoint(points: list[FloatArray], middle: dict[tuple[int, int], int], a: int, b: int) -> int:
    """Index of the unit vector halfway between points ``a`` and ``b`` (added once)."""
    key = (min(a, b), max(a, b))
    if key not in middle:
        m = points[a] + points[b]
        points.append(m / np.linalg.norm(m))
        middle[key] = len(points) - 1
    return middle[key]


def _sag_mm(mesh: Mesh, radius_mm: float, centre: FloatArray) -> float:
    """How far the flat triangles lie inside the true sphere (at most)."""
    tri = mesh.vertices_lps_mm[mesh.faces] - centre
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return float(radius_mm - np.abs(np.sum(normal * tri[:, 0], axis=1)).min())


ORIGIN = np.zeros(3)
R_ILIUM, R_MARROW, R_BODY = 20.0, 14.0, 60.0
SACRUM_CENTRE, R_SACRUM = np.array([5.0, 30.0, 14.0]), 8.0
NOTCH = np.array([5.0, -20.0, -20.0])
LEVEL = 5  # 20480 triangles per sphere


@pytest.fixture(scope="module")
def spheres() -> dict[str, Any]:
    """Nested spheres standing in for the ilium, its marrow and the body, and a sacrum
    sphere off the needle line, all centred near the origin (LPS mm)."""
    meshes = {
        "ilium": _icosphere(R_ILIUM, (0, 0, 0), level=LEVEL),
        "marrow": _icosphere(R_MARROW, (0, 0, 0), level=LEVEL),
        "body": _icosphere(R_BODY, (0, 0, 0), level=LEVEL),
        "sacrum": _icosphere(R_SACRUM, tuple(SACRUM_CENTRE), level=LEVEL),
    }
    sacrum = Surface("sacrum", meshes["sacrum"], "si_joint")
    scene = SideScene(
        side=Side.LEFT,
        ilium=Surface("ilium_left", meshes["ilium"]),
        marrow=Surface("marrow", meshes["marrow"]),
        body=Surface("body", meshes["body"]),
        obstacles=(sacrum,),
        si=(sacrum,),
        notch_apex_lps_mm=NOTCH,
        has_skin=True,
        ct_spacing_mm=np.ones(3),
    )
    radius = {"ilium": R_ILIUM, "marrow": R_MARROW, "body": R_BODY, "sacrum": R_SACRUM}
    centre = {"ilium": ORIGIN, "marrow": ORIGIN, "body": ORIGIN, "sacrum": SACRUM_CENTRE}
    sag = max(_sag_mm(meshes[k], radius[k], centre[k]) for k in meshes)
    return {"scene": scene, "sag_mm": sag}


def _reference(
    offset_mm: float, extra_core_mm: float, parameters: PlanningParameters
) -> dict[str, float]:
    """The slow obvious reference: a needle along -y (posterior to anterior) at
    ``x = offset``, measured on 20 001 points per segment against the exact spheres."""
    r = parameters.needle.radius_mm
    y_cortex = math.sqrt(R_ILIUM**2 - offset_mm**2)
    y_skin = math.sqrt(R_BODY**2 - offset_mm**2)
    core = parameters.min_core_length_mm + extra_core_mm
    y_start = y_cortex - parameters.seat_depth_mm
    y_end = y_start - core

    def line(y0: float, y1: float) -> FloatArray:
        y = np.linspace(y0, y1, 20_001)
        return np.stack([np.full_like(y, offset_mm), y, np.zeros_like(y)], axis=1)

    path, bone, core_points = line(y_skin, y_cortex), line(y_cortex, y_end), line(y_start, y_end)
    needle = np.concatenate([path, bone])
    core_radius = np.linalg.norm(core_points, axis=1)
    # leaving the ilium sphere: the signed depth is negative there
    depth = R_ILIUM - core_radius
    to_sacrum = np.linalg.norm(needle - SACRUM_CENTRE, axis=1) - R_SACRUM
    return {
        "needle_length": y_skin - y_end,
        "core_length": core,
        "craniocaudal_angle": 0.0,
        "soft_tissue_path": 0.0,
        "path_clearance": float(
            (np.linalg.norm(path - SACRUM_CENTRE, axis=1) - R_SACRUM).min()
            - parameters.margin("si_joint")
            - r
        ),
        "cortex_incidence": math.degrees(math.asin(offset_mm / R_ILIUM)),
        "core_cortex_clearance": float(depth.min()) - r,
        "core_in_marrow": float(np.mean(core_radius < R_MARROW)),
        "sciatic_notch": float(np.linalg.norm(bone - NOTCH, axis=1).min()) - r,
        "si_joint": float(np.maximum(to_sacrum, 0.0).min()) - r,
    }


@pytest.mark.parametrize(
    ("offset_mm", "extra_core_mm"),
    [(0.0, 0.0), (5.0, 0.0), (10.0, 3.0), (5.0, 22.0)],
    ids=["through-centre", "offset", "oblique-longer-core", "core-exits-far-side"],
)
def test_check_candidate_matches_sphere_reference(
    spheres: dict[str, Any], offset_mm: float, extra_core_mm: float
) -> None:
    p = PlanningParameters()
    scene: SideScene = spheres["scene"]
    ref = _reference(offset_mm, extra_core_mm, p)
    y_cortex = math.sqrt(R_ILIUM**2 - offset_mm**2)
    cortex = np.array([offset_mm, y_cortex, 0.0])
    end = cortex + np.array([0.0, -(p.seat_depth_mm + ref["core_length"]), 0.0])
    check = check_candidate(scene, p, cortex, end, tolerance_mm=0.5)
    # Distances: the flat triangles lie up to `sag` inside the spheres, and the needle is
    # sampled every 0.5 mm, which overestimates a minimum distance by at most 0.25 mm
    # (the exact minima here are at sampled end points or on straight stretches, so the
    # sag alone bounds most of them; 0.25 mm covers the rest).
    distance_tol = spheres["sag_mm"] + 0.25
    for name in ("needle_length", "core_length", "soft_tissue_path", "sciatic_notch"):
        # found by line/surface crossings (exact on the triangles) or pure geometry
        assert check.values[name] == pytest.approx(ref[name], abs=spheres["sag_mm"] + 1e-6)
    for name in ("path_clearance", "core_cortex_clearance", "si_joint"):
        assert check.values[name] == pytest.approx(ref[name], abs=distance_tol), name
    # Incidence: the patch normal of a level-5 icosphere (edges of about 0.07 rad) is
    # the sphere's normal to within a fraction of a degree.
    assert check.values["cortex_incidence"] == pytest.approx(ref["cortex_incidence"], abs=0.5)
    assert check.values["craniocaudal_angle"] == pytest.approx(0.0, abs=1e-9)
    # The fraction is counted on points 0.5 mm apart: one sample of the ~41 can fall on
    # either side of the marrow surface.
    assert check.values["core_in_marrow"] == pytest.approx(ref["core_in_marrow"], abs=0.03)
    np.testing.assert_allclose(
        check.skin_entry_lps_mm,
        [offset_mm, math.sqrt(R_BODY**2 - offset_mm**2), 0.0],
        atol=spheres["sag_mm"] + 1e-6,  # the crossing lies on a flat triangle
    )
    # the verdicts are those of the reference values (none lies within the tolerance
    # of its limit in these cases)
    limits = {
        "path_clearance": 0.0,
        "core_cortex_clearance": p.margin("cortex"),
        "si_joint": p.margin("si_joint"),
        "core_in_marrow": p.min_marrow_fraction,
    }
    for name, limit in limits.items():
        margin = 0.03 if name == "core_in_marrow" else distance_tol  # as asserted above
        assert abs(ref[name] - limit) > margin, f"{name} is a borderline case"
        assert check.passed[name] is (ref[name] >= limit), name
    assert check.passed["core_cortex_clearance"] is (extra_core_mm < 10.0)


def test_path_through_a_structure_is_blocked_by_its_chord(spheres: dict[str, Any]) -> None:
    """A path through the sacrum sphere: blocked over the exact chord length."""
    p = PlanningParameters()
    scene: SideScene = spheres["scene"]
    x = 5.0
    z = SACRUM_CENTRE[2] - 4.0  # 4 mm from the sacrum's centre
    # cortex entry on the ilium sphere in the plane z: y = sqrt(R^2 - x^2 - z^2)
    y = math.sqrt(R_ILIUM**2 - x**2 - z**2)
    cortex = np.array([x, y, z])
    end = cortex + np.array([0.0, -25.0, 0.0])
    check: CandidateCheck = check_candidate(scene, p, cortex, end, tolerance_mm=0.5)
    chord = 2.0 * math.sqrt(R_SACRUM**2 - 4.0**2)
    # the chord's ends lie on flat triangles up to `sag` inside the sphere; the chord
    # shortens by at most sag / sin(angle at the ends) = sag * 8 / sqrt(48) at each end
    assert check.values["soft_tissue_path"] == pytest.approx(chord, abs=3 * spheres["sag_mm"])
    assert check.blocking == ("sacrum",)
    assert not check.passed["soft_tissue_path"]
    assert check.values["si_joint"] == pytest.approx(-p.needle.radius_mm)  # crossed


def test_surface_inside_and_distance_match_the_sphere(spheres: dict[str, Any]) -> None:
    """Surface.along (inside) and distance_mm against |p| - R on random segments."""
    surface: Surface = spheres["scene"].ilium
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.uniform(-30, 30, size=(2, 3))
        t = np.linspace(0.0, float(np.linalg.norm(b - a)), 57)
        points = a + np.outer(t, (b - a) / np.linalg.norm(b - a))
        exact = np.linalg.norm(points, axis=1) - R_ILIUM
        signed, profile = surface.signed_distance_mm(a, b, t)
        clear = np.abs(exact) > spheres["sag_mm"]  # points within the sag are ambiguous
        np.testing.assert_array_equal(profile.inside[clear], exact[clear] < 0)
        np.testing.assert_allclose(signed[clear], exact[clear], atol=spheres["sag_mm"])


# ------------------------------------------------------------------ phantom vs planner


@pytest.fixture(scope="module")
def planned() -> tuple[Anatomy, Planner, dict[Side, Plan]]:
    """The default small prone phantom, segmented and planned on both sides."""
    from bmbx_phantoms import make_phantom
    from bmbx_plan import segment_pelvis

    anatomy = segment_pelvis(make_phantom(seed=0, position="HFP").ct)
    planner = Planner(anatomy)
    plans = {side: planner.plan(side, cross_check=False) for side in Side}
    return anatomy, planner, plans


def _trajectory(plan: Plan) -> Trajectory:
    """The plan's trajectory, or its best near-miss when nothing was feasible."""
    if plan.trajectory is not None:
        return plan.trajectory
    assert plan.near_miss is not None, plan.reasons
    return plan.near_miss.trajectory


@pytest.mark.parametrize("side", list(Side), ids=lambda s: s.value)
def test_cross_check_of_planned_trajectory_agrees(
    planned: tuple[Anatomy, Planner, dict[Side, Plan]], side: Side
) -> None:
    anatomy, planner, plans = planned
    plan = plans[side]
    result = cross_check(anatomy, side, _trajectory(plan), planner.parameters, plan.constraints)
    assert result.agrees, result.disagreements
    hard = {c.name for c in plan.constraints if c.kind == "hard"}
    assert hard <= set(result.values)  # every hard constraint was recomputed
    spacing = anatomy.labels.spacing_mm
    expected = 0.5 * float(np.linalg.norm(spacing)) + 0.5 * math.sqrt(3.0)
    assert result.tolerance_mm == pytest.approx(expected)
    # The plan's cortex entry lies on the mesh within the tolerance.
    assert result.values["cortex_entry_offset_mm"] <= result.tolerance_mm
    # The meshes are built once per anatomy and side.
    assert side_scene(anatomy, side) is side_scene(anatomy, side.value)


def test_check_with_cross_check_attaches_the_result(
    planned: tuple[Anatomy, Planner, dict[Side, Plan]],
) -> None:
    _, planner, plans = planned
    t = _trajectory(plans[Side.RIGHT])
    plan = planner.check(Side.RIGHT, t.skin_entry_lps_mm, t.core_end_lps_mm, cross_check=True)
    assert plan.cross_check is not None
    assert plan.cross_check.agrees, plan.cross_check.disagreements


def _si_joint_target(anatomy: Anatomy, side: Side) -> FloatArray:
    """The centroid of the segmented SI joint cleft (LPS mm)."""
    index = np.argwhere(np.asarray(anatomy.labels.array) == LABELS[f"si_joint_{side.value}"])
    return np.asarray(anatomy.labels.index_to_lps(index).mean(axis=0))


@pytest.mark.parametrize("bad", ["core-exits-far-cortex", "into-si-joint"])
def test_bad_trajectory_fails_by_both_methods(
    planned: tuple[Anatomy, Planner, dict[Side, Plan]], bad: str
) -> None:
    anatomy, planner, plans = planned
    side = Side.LEFT
    t = _trajectory(plans[side])
    if bad == "core-exits-far-cortex":
        # 45 mm more core along the same line: far beyond the wing's anterior table
        target = t.core_end_lps_mm + 45.0 * t.direction_lps
        name = "core_cortex_clearance"
    else:
        target = _si_joint_target(anatomy, side)
        name = "si_joint"
    plan = planner.check(side, t.skin_entry_lps_mm, target)
    assert plan.trajectory is not None
    assert not plan.constraint(name).passed
    scene = side_scene(anatomy, side)
    tol = cross_check_tolerance_mm(scene, planner.parameters)
    mine = check_candidate(
        scene,
        planner.parameters,
        plan.trajectory.cortex_entry_lps_mm,
        plan.trajectory.core_end_lps_mm,
        skin_entry_lps_mm=plan.trajectory.skin_entry_lps_mm,
        tolerance_mm=tol,
    )
    assert not mine.passed[name]
    assert not mine.feasible
    assert not plan.feasible
    result = cross_check(anatomy, side, plan.trajectory, planner.parameters, plan.constraints)
    assert result.agrees, result.disagreements


def test_filled_cavities_only_remove_inner_walls(
    planned: tuple[Anatomy, Planner, dict[Side, Plan]],
) -> None:
    """Meshing the hip bone without its internal pockets keeps its outer surface: the
    enclosed volume can only grow (by the pockets) and no triangles are added."""
    anatomy = planned[0]
    as_is = side_scene(anatomy, Side.LEFT).ilium.mesh
    filled = side_scene(anatomy, Side.LEFT, fill_cavities=True).ilium.mesh
    assert filled.n_faces <= as_is.n_faces
    assert filled.volume_mm3() >= as_is.volume_mm3() - 1e-6  # float sums of one surface
    # the pockets lie inside the bone: the two outer surfaces span the same box
    np.testing.assert_allclose(filled.bounds_lps_mm(), as_is.bounds_lps_mm())


def test_cross_check_shares_no_code_with_the_search() -> None:
    """The second opinion must not import the search's maps, evaluation or rules."""
    import ast

    import bmbx_plan.planning.crosscheck as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    forbidden = {
        "bmbx_plan.planning.evaluate",
        "bmbx_plan.planning.fields",
        "bmbx_plan.planning.describe",
        "bmbx_plan.planning.candidates",
        "bmbx_plan.planning.ranking",
        "bmbx_plan.planning.planner",
    }
    assert not imported & forbidden
    # only the ConstraintResult type comes from the rule module, not its rule table
    rules = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "bmbx_plan.planning.constraints"
    ]
    assert [alias.name for node in rules for alias in node.names] == ["ConstraintResult"]
