"""Phantoms built on a given pelvis (``--anatomy``): truth matches the input meshes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bmbx_phantoms import LANDMARK_NAMES, TRUTH_LABELS, make_phantom
from bmbx_phantoms.atlas import load_pelvis
from bmbx_phantoms.labels import ilium_labels
from bmbx_plan.mesh import close_holes, distance_to_surface_mm

VOXEL_MM = 1.5  # isotropic, so "one voxel" is one number


@pytest.fixture(scope="module")
def atlas_case() -> Path:
    case = (
        Path(__file__).parents[1] / ".." / "shared" / "data" / "atlas" / "pelvis_surfaces" / "03"
    ).resolve()
    if not case.is_dir():
        pytest.skip(f"atlas case {case} is absent")
    return case


def _boundary_points(ph: object, values: list[int]) -> np.ndarray:
    labels = ph.labels  # type: ignore[attr-defined]
    mask = np.isin(labels.array, values)
    boundary = mask & ~ndimage.binary_erosion(mask)
    return labels.index_to_lps(np.argwhere(boundary))


@pytest.mark.realdata
def test_truth_bones_lie_within_one_voxel_of_the_input_meshes(atlas_case: Path) -> None:
    ph = make_phantom(
        seed=0, anatomy=atlas_case, pixel_spacing_mm=VOXEL_MM, slice_spacing_mm=VOXEL_MM
    )
    shape = load_pelvis(atlas_case)
    for side, mesh in (("left", shape.left_hip), ("right", shape.right_hip)):
        pts = _boundary_points(ph, list(ilium_labels(side)))
        assert len(pts) > 1000
        assert distance_to_surface_mm(mesh, pts).max() <= VOXEL_MM, side
    # The atlas sacrum is cut below S3 and open there: the voxeliser closes the opening
    # with a flat patch, so the sacrum is compared with the closed surface.
    pts = _boundary_points(ph, [TRUTH_LABELS["sacrum"]])
    assert distance_to_surface_mm(close_holes(shape.sacrum), pts).max() <= VOXEL_MM
    # The phantom keeps the meshes' own coordinates: its truth meshes are the input.
    assert np.array_equal(ph.shape.left_hip.vertices_lps_mm, shape.left_hip.vertices_lps_mm)


@pytest.mark.realdata
def test_landmarks_sit_on_the_bone_of_the_input_pelvis(atlas_case: Path) -> None:
    ph = make_phantom(
        seed=0, anatomy=atlas_case, pixel_spacing_mm=VOXEL_MM, slice_spacing_mm=VOXEL_MM
    )
    shape = load_pelvis(atlas_case)
    for name in LANDMARK_NAMES:
        side = "left" if name.endswith("left") else "right"
        point = ph.landmark(name)
        index = np.rint(ph.labels.lps_to_index([point])[0]).astype(int)
        assert ph.labels.array[tuple(index)] in ilium_labels(side), name
        # Snapped onto the nearest bone voxel centre: within one voxel of the surface.
        mesh = shape.left_hip if side == "left" else shape.right_hip
        assert distance_to_surface_mm(mesh, [point])[0] <= VOXEL_MM * np.sqrt(3) / 2 + 0.01
