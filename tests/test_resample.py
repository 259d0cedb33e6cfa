"""resample_to against a slow obvious reference (per-voxel index mapping)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bmbx_plan.resample import resample_to
from bmbx_plan.volume import Volume


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, -1)])
def test_nearest_matches_the_reference_on_flipped_grids(
    tiny_ct: Volume,
    resample_nearest: Callable[[Volume, Volume], np.ndarray],
    flip: tuple[int, int, int],
) -> None:
    target = tiny_ct.reoriented(tiny_ct.direction * np.array(flip, dtype=float))
    ours = resample_to(tiny_ct, target, order=0, fill_value=-32768)
    assert np.array_equal(ours.array, resample_nearest(tiny_ct, target))
    assert np.array_equal(resample_to(ours, tiny_ct, order=0).array, tiny_ct.array)


def test_nearest_matches_the_reference_on_a_shifted_finer_grid(
    tiny_ct: Volume, resample_nearest: Callable[[Volume, Volume], np.ndarray]
) -> None:
    # A finer grid, offset by a third of a voxel: no sample falls on a rounding tie.
    spacing = tiny_ct.spacing_mm / 2.0
    shift = tiny_ct.direction @ (tiny_ct.spacing_mm / 3.0)
    target = Volume.from_components(
        np.zeros((9, 11, 13)),
        spacing_mm=spacing,
        origin_lps_mm=tiny_ct.origin_lps_mm + shift,
        direction=tiny_ct.direction,
    )
    ours = resample_to(tiny_ct, target, order=0, fill_value=-32768).array
    assert np.array_equal(ours, resample_nearest(tiny_ct, target))


def test_nearest_matches_the_reference_on_an_lps_aligned_grid_reaching_outside(
    tiny_ct: Volume, resample_nearest: Callable[[Volume, Volume], np.ndarray]
) -> None:
    # The planner's case: an isotropic LPS-aligned box (axes permuted and flipped against
    # the CT's), larger than the CT, offset so that no sample falls on a rounding tie.
    lo = tiny_ct.bounds_lps_mm()[0] - 2.1
    target = Volume.from_components(
        np.zeros((30, 12, 21), np.uint8), spacing_mm=(0.7, 0.7, 0.7), origin_lps_mm=lo
    )
    ours = resample_to(tiny_ct, target, order=0, fill_value=-32768).array
    reference = resample_nearest(tiny_ct, target)
    assert np.any(reference == -32768)
    assert np.any(reference != -32768)
    assert np.array_equal(ours, reference)


def test_linear_reproduces_a_linear_field_exactly(tiny_ct: Volume) -> None:
    k, j, i = np.indices(tiny_ct.shape)
    lps = tiny_ct.index_to_lps(np.stack([k, j, i], -1).reshape(-1, 3))
    field = (2.0 * lps[:, 0] - 0.5 * lps[:, 1] + 0.25 * lps[:, 2]).reshape(tiny_ct.shape)
    source = tiny_ct.with_array(field)
    target = Volume.from_components(
        np.zeros((3, 4, 5)),
        spacing_mm=(1.3, 0.7, 0.5),
        origin_lps_mm=tiny_ct.index_to_lps([[1.2, 1.5, 1.1]])[0],
        direction=tiny_ct.direction,
    )
    out = resample_to(source, target, order=1)
    tk, tj, ti = np.indices(target.shape)
    pts = target.index_to_lps(np.stack([tk, tj, ti], -1).reshape(-1, 3))
    expected = (2.0 * pts[:, 0] - 0.5 * pts[:, 1] + 0.25 * pts[:, 2]).reshape(target.shape)
    assert np.allclose(out.array, expected, atol=1e-3)  # float32 output
