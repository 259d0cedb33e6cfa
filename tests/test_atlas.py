"""Atlas pelvis shapes: loading, blending, placing, landmarks, and their voxelisation."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from scipy import ndimage

from bmbx_phantoms import atlas
from bmbx_phantoms.atlas import PelvisShape
from bmbx_plan.io.errors import InputError
from bmbx_plan.mesh import (
    Mesh,
    close_holes,
    distance_to_surface_mm,
    mesh_topology,
    voxelize,
    write_mesh,
)
from bmbx_plan.volume import Volume

ATLAS_ROOT = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "atlas" / "pelvis_surfaces"
)
_Test = TypeVar("_Test", bound=Callable[..., object])
_skip_without_atlas = pytest.mark.skipif(
    not ATLAS_ROOT.is_dir(), reason=f"atlas meshes not found at {ATLAS_ROOT} (../shared/data)"
)


def realdata(test: _Test) -> _Test:
    """Mark a test as needing ../shared/data and skip it with a reason when absent."""
    return pytest.mark.realdata(_skip_without_atlas(test))


EXPECTED_KEYS = {f"{name}_{side}" for name in atlas.LANDMARK_NAMES for side in ("left", "right")}


@lru_cache(maxsize=1)
def _atlas_shapes() -> tuple[tuple[str, PelvisShape], ...]:
    return tuple((c, atlas.load_pelvis(ATLAS_ROOT / c)) for c in atlas.atlas_cases(ATLAS_ROOT))


def _box(centre: tuple[float, float, float], size: float) -> Mesh:
    corners = [[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1]]
    faces += [[2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    return Mesh((np.array(corners) - 0.5) * size + np.asarray(centre), faces)


def _toy_shape(shift: float = 0.0) -> PelvisShape:
    return PelvisShape(
        left_hip=_box((60.0 + shift, 0.0, 0.0), 20.0),
        right_hip=_box((-60.0, 0.0, shift), 20.0),
        sacrum=_box((0.0, 30.0, 0.0), 30.0),
    )


# ------------------------------------------------------------------ synthetic shapes


def test_interpolate_is_vertex_wise() -> None:
    a, b = _toy_shape(), _toy_shape(shift=10.0)
    mid = atlas.interpolate([a, b], [0.25, 0.75])
    np.testing.assert_allclose(
        mid.left_hip.vertices_lps_mm,
        0.25 * a.left_hip.vertices_lps_mm + 0.75 * b.left_hip.vertices_lps_mm,
    )
    np.testing.assert_array_equal(mid.sacrum.faces, a.sacrum.faces)


def test_interpolate_rejects_bad_input() -> None:
    a = _toy_shape()
    with pytest.raises(ValueError, match="sum to 1"):
        atlas.interpolate([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match="2 finite weights"):
        atlas.interpolate([a, a], [1.0])
    other_faces = PelvisShape(
        a.left_hip, a.right_hip, Mesh(a.sacrum.vertices_lps_mm, a.sacrum.faces[::-1])
    )
    with pytest.raises(ValueError, match="sacrum of shape 1 has other faces"):
        atlas.interpolate([a, other_faces], [0.5, 0.5])
    fewer = PelvisShape(Mesh(np.zeros((3, 3)), [[0, 1, 2]]), a.right_hip, a.sacrum)
    with pytest.raises(ValueError, match="left_hip of shape 1 has 3 vertices"):
        atlas.interpolate([a, fewer], [0.5, 0.5])


def test_transformed_moves_all_bones() -> None:
    shape = _toy_shape()
    rotation = np.eye(4)
    rotation[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    turned = atlas.transformed(shape, rotation)
    np.testing.assert_allclose(
        turned.left_hip.vertices_lps_mm.mean(axis=0), [0, 60, 0], atol=1e-12
    )
    np.testing.assert_allclose(turned.sacrum.vertices_lps_mm.mean(axis=0), [-30, 0, 0], atol=1e-12)


def test_centred_on_centroid() -> None:
    moved = atlas.centred(_toy_shape(), at_lps_mm=(1.0, 2.0, 3.0), reference="centroid")
    np.testing.assert_allclose(moved.all_vertices_lps_mm().mean(axis=0), [1, 2, 3])
    with pytest.raises(ValueError, match="reference"):
        atlas.centred(_toy_shape(), reference="navel")  # type: ignore[arg-type]


def test_load_pelvis_names_the_missing_file(tmp_path: Path) -> None:
    shape = _toy_shape()
    case = tmp_path / "07"
    case.mkdir()
    for name in ("left_hip", "sacrum"):
        write_mesh(getattr(shape, name), case / f"{name}.vtk")
    with pytest.raises(InputError, match=r"right_hip\.vtk: missing right_hip mesh"):
        atlas.load_pelvis(case)
    with pytest.raises(InputError, match="no case folders"):
        atlas.atlas_cases(tmp_path)
    write_mesh(shape.right_hip, case / "right_hip.vtk")
    assert atlas.atlas_cases(tmp_path) == ["07"]
    loaded = atlas.load_pelvis(case)
    np.testing.assert_allclose(loaded.sacrum.vertices_lps_mm, shape.sacrum.vertices_lps_mm)


def test_load_pelvis_rejects_swapped_sides(tmp_path: Path) -> None:
    shape = _toy_shape()
    write_mesh(shape.left_hip, tmp_path / "right_hip.vtk")
    write_mesh(shape.right_hip, tmp_path / "left_hip.vtk")
    write_mesh(shape.sacrum, tmp_path / "sacrum.vtk")
    with pytest.raises(InputError, match=r"not left of right_hip"):
        atlas.load_pelvis(tmp_path)


# ------------------------------------------------------------------------ real atlas


@realdata
def test_atlas_cases_and_topology() -> None:
    cases = atlas.atlas_cases(ATLAS_ROOT)
    assert len(cases) == 30
    shape = dict(_atlas_shapes())["03"]
    for _, mesh in shape.meshes():
        topo = mesh_topology(mesh)
        assert mesh.n_vertices == 5000
        assert topo.consistently_oriented
        assert not topo.closed  # small holes: the voxeliser must cope (see below)


@realdata
def test_landmarks_on_every_case() -> None:
    for case, shape in _atlas_shapes():
        points = atlas.landmarks(shape)
        assert set(points) == EXPECTED_KEYS, case
        for side in ("left", "right"):
            hip = getattr(shape, f"{side}_hip")
            on_side = np.array([p for k, p in points.items() if k.endswith(side)])
            # vertices of that hip bone, so on its surface (well under one 0.8 mm voxel)
            assert distance_to_surface_mm(hip, on_side).max() < 0.01, case
            psis, asis = points[f"psis_{side}"], points[f"asis_{side}"]
            notch = points[f"sciatic_notch_apex_{side}"]
            assert psis[1] > asis[1] + 80, case  # PSIS posterior of ASIS (pelvis ~15 cm deep)
            assert notch[2] < psis[2] - 20, case  # notch apex caudal of the PSIS
            assert notch[1] < psis[1] - 20, case  # ... and anterior of it
            assert 40 < np.linalg.norm(notch - psis) < 110, case
            assert points[f"iliac_crest_top_{side}"][2] > psis[2], case
            assert points[f"ischial_spine_{side}"][2] < notch[2], case
        for name in atlas.LANDMARK_NAMES:
            assert points[f"{name}_left"][0] > points[f"{name}_right"][0], (case, name)
        # PSIS 3-6 cm either side of the sacral midline
        midline_x = shape.sacrum.vertices_lps_mm[:, 0].mean()
        assert 25 < points["psis_left"][0] - midline_x < 65, case
        assert 25 < midline_x - points["psis_right"][0] < 65, case


@pytest.mark.slow
@realdata
def test_frozen_landmarks_are_reproducible() -> None:
    shapes = [s for _, s in _atlas_shapes()]
    derived = atlas.derive_landmark_indices(shapes)
    frozen = atlas._landmark_data()
    mean = atlas.mean_shape(shapes)
    for key, entry in frozen["points"].items():
        vertices = getattr(mean, entry["mesh"]).vertices_lps_mm
        new = derived["points"][key]
        # the pick is stable to within about one mesh edge (3.7 mm)
        assert np.linalg.norm(vertices[new["vertex"]] - vertices[entry["vertex"]]) < 5.0, key
    for key, indices in frozen["vertex_sets"].items():
        a, b = set(indices), set(derived["vertex_sets"][key])
        assert len(a & b) / len(a | b) > 0.9, key


@realdata
def test_geometric_fallback_matches_frozen_pick_on_mean_shape() -> None:
    mean = atlas.mean_shape([s for _, s in _atlas_shapes()])
    frozen = atlas.landmarks(mean)
    # same geometry, other triangulation (faces rotated): no correspondence -> the rules
    relabel = PelvisShape(
        *(Mesh(m.vertices_lps_mm, np.roll(m.faces, 1, axis=1)) for _, m in mean.meshes())
    )
    found = atlas.landmarks(relabel)
    for key in EXPECTED_KEYS:
        np.testing.assert_allclose(found[key], frozen[key], err_msg=key)


@realdata
def test_blend_keeps_landmark_correspondence() -> None:
    shapes = dict(_atlas_shapes())
    a = atlas.centred(shapes["03"])
    b = atlas.centred(shapes["27"])
    blend = atlas.interpolate([a, b], [0.5, 0.5])
    la, lb, lblend = atlas.landmarks(a), atlas.landmarks(b), atlas.landmarks(blend)
    for key in EXPECTED_KEYS:
        np.testing.assert_allclose(lblend[key], 0.5 * (la[key] + lb[key]))
    np.testing.assert_allclose(0.5 * (la["psis_left"] + la["psis_right"]), 0.0, atol=1e-9)


@realdata
def test_si_joint_sets() -> None:
    shape = dict(_atlas_shapes())["03"]
    for side in ("left", "right"):
        hip_idx, sacrum_idx = atlas.si_joint_vertices(shape, side)
        hip = getattr(shape, f"{side}_hip")
        assert 150 < len(hip_idx) < 400
        assert 300 < len(sacrum_idx) < 700
        gap = distance_to_surface_mm(shape.sacrum, hip.vertices_lps_mm[hip_idx])
        assert np.median(gap) < 5.0  # the joint space is a few mm
        sacrum_x = shape.sacrum.vertices_lps_mm[sacrum_idx, 0]
        midline_x = shape.sacrum.vertices_lps_mm[:, 0].mean()
        assert np.all(sacrum_x > midline_x) if side == "left" else np.all(sacrum_x < midline_x)


@realdata
@pytest.mark.parametrize("case", ["03", "27"])
def test_voxelised_bones_lie_within_one_voxel_of_meshes(case: str) -> None:
    shape = dict(_atlas_shapes())[case]
    lo, hi = shape.bounds_lps_mm()
    spacing = np.array([1.5, 0.8, 0.8])
    # an HFP-like flipped grid: k -> +z, j -> -y, i -> -x, covering the pelvis
    direction = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    extent = hi - lo + 10.0
    shape_kji = tuple(int(n) for n in np.ceil(extent[::-1] / spacing))
    origin = (hi[0] + 5.0, hi[1] + 5.0, lo[2] - 5.0)
    grid = Volume.from_components(
        np.zeros(shape_kji, np.uint8),
        spacing_mm=spacing,
        origin_lps_mm=origin,
        direction=direction,
    )
    cross = ndimage.generate_binary_structure(3, 1)
    for name, mesh in shape.meshes():
        mask = voxelize(mesh, grid)
        boundary = mask & ~ndimage.binary_erosion(mask, cross, border_value=0)
        boundary |= ndimage.binary_dilation(mask, cross) & ~mask
        centres = grid.index_to_lps(np.argwhere(boundary))
        distance = distance_to_surface_mm(mesh, centres)
        closed = close_holes(mesh)
        limit = spacing.max()  # one voxel: a centre beside an opposite one is <= 1 spacing off
        # exact against the surface the voxeliser fills (input + centroid fans over holes)
        assert distance_to_surface_mm(closed, centres).max() <= limit, name
        # Only voxels on those fans may lie farther than a voxel from the input triangles:
        # the hips' holes are 1-4 triangles wide, the sacrum's caudal cut has a ~2 cm
        # opening (under 1 % of boundary voxels; on case 03 the hips have none at all).
        assert np.mean(distance > limit) < 0.01, name
        # nothing leaks or goes missing: counted volume = enclosed volume within 1 %
        # (about 20 000 boundary voxels whose +-half-voxel errors largely cancel)
        volume = mask.sum() * grid.voxel_volume_mm3
        assert volume == pytest.approx(closed.volume_mm3(), rel=0.01), name


def test_landmark_data_is_packaged() -> None:
    data = atlas._landmark_data()
    assert set(data["points"]) == EXPECTED_KEYS
    assert set(data["vertex_sets"]) == {
        f"si_joint_{bone}_{side}" for bone in ("hip", "sacrum") for side in ("left", "right")
    }
