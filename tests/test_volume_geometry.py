"""Volume and geometry round trips on a deliberately asymmetric grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bmbx_plan import geometry
from bmbx_plan.io._sitk import affine_from_sitk, sitk_to_volume, volume_to_sitk
from bmbx_plan.volume import ScanInfo, Volume


def _apply_affine_slow(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Obvious reference: one homogeneous matrix-vector product per point."""
    out = []
    for p in np.atleast_2d(points):
        x = [p[0], p[1], p[2], 1.0]
        out.append([sum(affine[r][c] * x[c] for c in range(4)) for r in range(3)])
    return np.array(out)


def test_apply_affine_matches_slow_reference(tiny_ct: Volume) -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(-50, 50, size=(20, 3))
    expected = _apply_affine_slow(np.asarray(tiny_ct.affine_lps), points)
    np.testing.assert_allclose(geometry.apply_affine(tiny_ct.affine_lps, points), expected)


def test_index_lps_round_trip(tiny_ct: Volume) -> None:
    rng = np.random.default_rng(2)
    index = rng.uniform(0, 4, size=(50, 3))
    back = tiny_ct.lps_to_index(tiny_ct.index_to_lps(index))
    np.testing.assert_allclose(back, index, atol=1e-9)


def test_index_to_lps_uses_kji_order(tiny_ct: Volume) -> None:
    # one step along k moves 2.5 mm toward -S; along j 0.8 mm toward -P; along i 0.6 mm +L
    start = tiny_ct.index_to_lps([0, 0, 0])[0]
    np.testing.assert_allclose(tiny_ct.index_to_lps([1, 0, 0])[0] - start, [0, 0, -2.5])
    np.testing.assert_allclose(tiny_ct.index_to_lps([0, 1, 0])[0] - start, [0, -0.8, 0])
    np.testing.assert_allclose(tiny_ct.index_to_lps([0, 0, 1])[0] - start, [0.6, 0, 0])


def test_sitk_to_volume_to_sitk_round_trip(tiny_ct: Volume) -> None:
    image = volume_to_sitk(tiny_ct)
    assert image.GetSize() == (7, 6, 5)  # SimpleITK sizes are (x, y, z) = (i, j, k)
    again = sitk_to_volume(image, ScanInfo())
    np.testing.assert_array_equal(again.array, tiny_ct.array)
    np.testing.assert_allclose(again.affine_lps, tiny_ct.affine_lps)
    # and SimpleITK's own index -> physical mapping agrees with the Volume's
    for k, j, i in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        physical = image.TransformIndexToPhysicalPoint((i, j, k))
        np.testing.assert_allclose(physical, tiny_ct.index_to_lps([k, j, i])[0])


def test_affine_from_sitk_oblique() -> None:
    angle = np.radians(15.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    image = sitk.Image([4, 3, 2], sitk.sitkFloat32)
    image.SetSpacing([0.5, 0.7, 3.0])
    image.SetOrigin([1.0, -2.0, 3.0])
    image.SetDirection(rot.ravel().tolist())
    affine = affine_from_sitk(image)
    for k, j, i in [(1, 2, 3), (0, 1, 0)]:
        np.testing.assert_allclose(
            geometry.apply_affine(affine, [k, j, i])[0],
            image.TransformIndexToPhysicalPoint((i, j, k)),
        )


def test_volume_rejects_sheared_affine() -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="not orthogonal"):
        Volume(np.zeros((2, 3, 4)), affine)
