"""The same anatomy in LPS gives the same plan, whatever the patient position or the
order in which the CT stores its voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmbx_phantoms import make_phantom
from bmbx_phantoms.dicom_writer import write_ct_series
from bmbx_plan import Plan, Planner, load_ct, segment_pelvis
from bmbx_plan.geometry import angle_between_deg

# Position invariance is stated to 1 mm and 1 degree.
_MM, _DEG = 1.0, 1.0


def _plans(path: Path) -> dict[str, Plan]:
    planner = Planner(segment_pelvis(load_ct(path)))
    return {side: planner.plan(side, cross_check=False) for side in ("left", "right")}


def _same(a: Plan, b: Plan) -> None:
    assert a.status == b.status
    if a.trajectory is None or b.trajectory is None:
        return
    for name in ("skin_entry_lps_mm", "cortex_entry_lps_mm", "core_end_lps_mm"):
        gap = np.linalg.norm(getattr(a.trajectory, name) - getattr(b.trajectory, name))
        assert gap <= _MM, (name, gap)
    angle = angle_between_deg(a.trajectory.direction_lps[None], b.trajectory.direction_lps[None])
    assert float(angle[0]) <= _DEG


@pytest.mark.parametrize(("first", "second"), [("HFP", "FFP"), ("HFS", "FFS"), ("HFP", "HFS")])
def test_head_first_feet_first_prone_supine_give_the_same_plan(
    tmp_path: Path, first: str, second: str
) -> None:
    plans = {}
    for position in (first, second):
        phantom = make_phantom(seed=2, position=position)
        folder = tmp_path / position
        write_ct_series(phantom.ct, folder, patient_position=position, seed=2)
        plans[position] = _plans(folder)
    for side in ("left", "right"):
        _same(plans[first][side], plans[second][side])
    supine = [p for p in plans.values() for p in p.values() if p.reasons]
    if first.endswith("S") or second.endswith("S"):
        assert any("supine scan" in r for p in supine for r in p.reasons)
