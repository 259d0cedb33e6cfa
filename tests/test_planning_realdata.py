"""The planner on real CT: the PENGWIN bone-only cases (no skin: the plan says so)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmbx_plan import Plan, Planner, Volume, load_ct, segment_pelvis
from bmbx_plan.geometry import angle_between_deg, sample_segment

_PLANS: dict[str, tuple[Volume, list[np.ndarray], dict[str, Plan]]] = {}


def _case(shared_data: Path, case: str) -> tuple[Volume, list[np.ndarray], dict[str, Plan]]:
    if case not in _PLANS:
        folder = shared_data / "real" / "pengwin_bone_only" / case
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent")
        parts = [load_ct(folder / f"{case}_{n}.nii.gz") for n in ("LI", "RI", "SA")]
        ct = parts[0].with_array(np.maximum.reduce([p.array for p in parts]))
        masks = [load_ct(folder / f"{case}_{n}_mask.nii.gz").array > 0 for n in ("LI", "RI")]
        planner = Planner(segment_pelvis(ct))
        _PLANS[case] = (ct, masks, {s: planner.plan(s) for s in ("left", "right")})
    return _PLANS[case]


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["001", "003", "005"])
def test_pengwin_core_corridor_lies_inside_the_expert_hip_bone(
    shared_data: Path, case: str
) -> None:
    ct, masks, plans = _case(shared_data, case)
    for side, expert in zip(("left", "right"), masks, strict=True):
        plan = plans[side]
        assert plan.feasible, plan.reasons
        assert any("shows no skin" in r for r in plan.reasons)
        assert plan.constraint("needle_length").value is None
        t = plan.trajectory
        core = sample_segment(t.core_start_lps_mm, t.core_end_lps_mm, step_mm=0.5)
        index = np.rint(ct.lps_to_index(core)).astype(int)
        inside = expert[tuple(index.T)]
        assert inside.all(), f"{side}: {np.count_nonzero(~inside)} core points outside"
        assert plan.cross_check is not None
        assert plan.cross_check.agrees


@pytest.mark.realdata
def test_a_real_ct_stored_in_another_order_gives_the_same_plan(shared_data: Path) -> None:
    ct, _, plans = _case(shared_data, "001")
    flipped = ct.reoriented(-ct.direction)  # every array axis reversed: the same LPS image
    other = Planner(segment_pelvis(flipped)).plan("right", cross_check=False)
    a, b = plans["right"].trajectory, other.trajectory
    assert a is not None
    assert b is not None
    for name in ("cortex_entry_lps_mm", "core_end_lps_mm"):
        assert np.linalg.norm(getattr(a, name) - getattr(b, name)) <= 1.0  # 1 mm required
    angle = angle_between_deg(a.direction_lps[None], b.direction_lps[None])
    assert float(angle[0]) <= 1.0  # 1 degree required
