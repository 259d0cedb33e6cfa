"""Shared fixtures: tiny volumes with an asymmetric geometry, real-data location."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bmbx_plan.volume import Volume

#: ``../shared/data`` next to the repository (absent in a fresh clone).
SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def pengwin(shared_data: Path) -> Callable[[str], tuple[Volume, list[np.ndarray]]]:
    """``f(case)``: a PENGWIN case's bone-only CT (the three bones' CTs combined with
    max) and its expert masks (left hip, right hip, sacrum); skips when it is absent."""

    def load(case: str) -> tuple[Volume, list[np.ndarray]]:
        from bmbx_plan import load_ct

        folder = shared_data / "real" / "pengwin_bone_only" / case
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent")
        parts = [load_ct(folder / f"{case}_{n}.nii.gz") for n in ("LI", "RI", "SA")]
        ct = parts[0].with_array(np.maximum.reduce([p.array for p in parts]))
        masks = [load_ct(folder / f"{case}_{n}_mask.nii.gz").array > 0 for n in ("LI", "RI", "SA")]
        return ct, masks

    return load


@pytest.fixture
def tiny_ct() -> Volume:
    """Integer-HU volume of shape (5, 6, 7): a different size per axis, anisotropic
    spacing, non-zero origin and flipped j and k axes (k -> -S, j -> -P, i -> +L)."""
    rng = np.random.default_rng(7)
    array = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    return Volume.from_components(
        array,
        spacing_mm=(2.5, 0.8, 0.6),
        origin_lps_mm=(-12.0, 30.5, 101.0),
        direction=direction,
    )


@pytest.fixture
def resample_nearest() -> Callable[[Volume, Volume], np.ndarray]:
    """``f(source, target)``: ``source`` voxels at ``target``'s voxel centres (nearest),
    by mapping every target index through LPS into the source; -32768 outside."""

    def resample(source: Volume, target: Volume) -> np.ndarray:
        grid = np.indices(target.shape).reshape(3, -1).T
        index = np.rint(source.lps_to_index(target.index_to_lps(grid))).astype(int)
        inside = np.all((index >= 0) & (index < np.array(source.shape)), axis=1)
        out = np.full(len(grid), -32768, dtype=np.float64)
        k, j, i = index[inside].T
        out[inside] = source.array[k, j, i]
        return out.reshape(target.shape)

    return resample


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime, to prove nothing changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, tuple[int, int]]]:
    """:func:`folder_state` as a fixture (test modules are imported by file path)."""
    return folder_state
