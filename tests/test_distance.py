"""distance_mm against a slow obvious reference: the nearest False voxel by brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bmbx_plan.distance import distance_mm


def _brute_force(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """For every voxel, the smallest distance (mm) to a False voxel, by trying them all."""
    index = np.indices(mask.shape).reshape(mask.ndim, -1).T * np.asarray(spacing)
    background = index[~mask.ravel()]
    return cdist(index, background).min(axis=1).reshape(mask.shape)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.7, 0.5), (2.5, 0.6, 0.9)])
@pytest.mark.parametrize("density", [0.5, 0.97])
def test_matches_the_brute_force_reference_on_anisotropic_grids(
    spacing: tuple[float, float, float], density: float
) -> None:
    mask = np.random.default_rng(7).random((13, 17, 11)) < density
    mask[0, 0, 0] = False  # at least one background voxel
    ours = distance_mm(mask, spacing)
    assert ours.dtype == np.float32
    assert ours.shape == mask.shape
    # float32 output: 1e-5 relative is its rounding on distances of a few tens of mm
    np.testing.assert_allclose(ours, _brute_force(mask, spacing), rtol=1e-5, atol=1e-5)
    assert np.all(ours[~mask] == 0.0)


def test_views_and_2d_masks_are_handled() -> None:
    big = np.random.default_rng(3).random((20, 24, 18)) < 0.9
    big[::5, ::5, ::5] = False
    view = big[2:-2:2, ::-1, 3:]  # strided, reversed: not contiguous
    np.testing.assert_allclose(
        distance_mm(view, (1.0, 0.5, 0.75)), _brute_force(view, (1.0, 0.5, 0.75)), atol=1e-5
    )
    plane = big[4]
    np.testing.assert_allclose(distance_mm(plane, 0.6), _brute_force(plane, (0.6, 0.6)), atol=1e-5)


def test_a_mask_without_background_is_infinitely_far_from_it() -> None:
    assert np.all(np.isinf(distance_mm(np.ones((3, 4, 5), bool), 1.0)))
