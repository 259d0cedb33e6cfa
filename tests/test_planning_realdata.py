"""The planner on real CT: the PENGWIN bone-only cases (no skin: the plan says so)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bmbx_plan import Plan, Planner, Volume, segment_pelvis
from bmbx_plan.geometry import angle_between_deg, sample_segment

Pengwin = Callable[[str], tuple[Volume, list[np.ndarray]]]
_PLANS: dict[str, tuple[Volume, list[np.ndarray], dict[str, Plan]]] = {}


def _case(pengwin: Pengwin, case: str) -> tuple[Volume, list[np.ndarray], dict[str, Plan]]:
    if case not in _PLANS:
        ct, masks = pengwin(case)
        planner = Planner(segment_pelvis(ct))
        _PLANS[case] = (ct, masks[:2], {s: planner.plan(s) for s in ("left", "right")})
    return _PLANS[case]


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["001", "003", "005"])
def test_pengwin_core_corridor_lies_inside_the_expert_hip_bone(
    pengwin: Pengwin, case: str
) -> None:
    ct, masks, plans = _case(pengwin, case)
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
def test_a_real_ct_stored_in_another_order_gives_the_same_plan(pengwin: Pengwin) -> None:
    ct, _, plans = _case(pengwin, "001")
    flipped = ct.reoriented(-ct.direction)  # every array axis reversed: the same LPS image
    other = Planner(segment_pelvis(flipped)).plan("right", cross_check=False)
    a, b = plans["right"].trajectory, other.trajectory
    assert a is not None
    assert b is not None
    for name in ("cortex_entry_lps_mm", "core_end_lps_mm"):
        assert np.linalg.norm(getattr(a, name) - getattr(b, name)) <= 1.0  # 1 mm required
    angle = angle_between_deg(a.direction_lps[None], b.direction_lps[None])
    assert float(angle[0]) <= 1.0  # 1 degree required
