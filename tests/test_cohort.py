"""A fast subset of the cohort safety study (``python -m bmbx_phantoms.cohort`` runs all)."""

from __future__ import annotations

import numpy as np
import pytest

from bmbx_phantoms.cohort import DESIGNED_INFEASIBLE, Case, cohort_cases, run_case, summarize
from bmbx_phantoms.parameters import PATIENT_POSITIONS, PRESETS


def test_cohort_cases_cover_every_preset_and_position() -> None:
    cases = cohort_cases(4 * len(PRESETS))
    assert {c.preset for c in cases} == set(PRESETS)
    assert {c.position for c in cases} == set(PATIENT_POSITIONS)
    assert len({c.seed for c in cases}) == len(cases)


def test_cohort_subset_proposes_no_unsafe_plan() -> None:
    rows = [
        *run_case(Case(seed=2001, preset="average", position="FFS")),
        *run_case(Case(seed=2002, preset="thin_wing_left", position="HFP")),
    ]
    for row in rows:
        assert not row["violations"], row  # judged on the phantom's exact truth
        if row["status"] == "feasible":
            assert row["cross_check_agrees"] is True, row
        designed = DESIGNED_INFEASIBLE.get((row["preset"], row["side"]))
        if designed is not None:
            assert row["status"] == "infeasible"
            assert designed in row["binding"].split()
            assert not row["truth_admits"]
    table = summarize(rows)
    assert (
        "| designed no-safe-path sides infeasible with the right binding constraint | 1 of 1"
        in table
    )


def test_a_case_that_cannot_run_is_reported_and_the_study_resumes(
    tmp_path, monkeypatch, capsys
) -> None:
    from bmbx_phantoms import cohort

    def fake_run(case: Case, *, cross_check: bool = True, voxel_mm=None) -> list[dict]:
        if case.seed == 1001:
            raise RuntimeError("no acetabulum")
        pixel, slice_ = voxel_mm or (2.0, 2.5)
        return [
            {
                "seed": case.seed,
                "preset": case.preset,
                "position": case.position,
                "voxel_mm": f"{pixel:g} x {slice_:g}",
                "side": side,
                "status": "feasible",
                "truth_admits": True,
                "truth_admits_with_reserve": side == "left",
                "violations": "",
                "binding": "",
                "cross_check_agrees": True,
            }
            for side in ("left", "right")
        ]

    monkeypatch.setattr(cohort, "run_case", fake_run)
    out = tmp_path / "cohort.csv"
    assert cohort.main(["--cases", "3", "--workers", "1", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "could not be built or run: 1" in first
    assert "seed 1001" in first
    assert "no acetabulum" in first
    # a resumed run keeps the rows written and runs only what is missing
    seen: list[int] = []
    monkeypatch.setattr(
        cohort,
        "run_case",
        lambda case, cross_check=True, voxel_mm=None: (
            seen.append(case.seed) or fake_run(case, voxel_mm=voxel_mm)
        ),
    )
    assert cohort.main(["--cases", "4", "--workers", "1", "--out", str(out), "--resume"]) == 0
    assert seen == [1003]
    resumed = capsys.readouterr().out
    # flags read back from the CSV count as booleans: 3 of the 6 sides admit with reserve
    assert "with the planner's reserve | 3 |" in resumed
    assert "CT voxels 2 x 2.5 mm" in resumed
    # a stored study's table is printed again without running anything
    assert cohort.main(["--summarize", str(out)]) == 0
    assert capsys.readouterr().out == resumed
    assert seen == [1003]
    # phantoms of another voxel size do not join a study already begun
    with pytest.raises(SystemExit) as stop:
        cohort.main(["--cases", "5", "--out", str(out), "--resume", "--voxel-mm", "1", "1.25"])
    assert stop.value.code == 2
    assert "not 1 x 1.25: resume with the same --voxel-mm" in capsys.readouterr().err
    assert seen == [1003]


def test_the_table_sorts_missed_sides_by_their_binding_constraint() -> None:
    def row(side: str, status: str, binding: str, with_reserve: bool) -> dict:
        return {
            "seed": 1,
            "preset": "average",
            "position": "HFP",
            "side": side,
            "status": status,
            "truth_admits": True,
            "truth_admits_with_reserve": with_reserve,
            "violations": "",
            "binding": binding,
            "cross_check_agrees": status == "feasible",
        }

    rows = [
        row("left", "infeasible", "si_joint", False),
        row("right", "infeasible", "si_joint", True),
        {**row("left", "infeasible", "needle_length", False), "seed": 2},
        {**row("right", "feasible", "", True), "seed": 2},
    ]
    table = summarize(rows)
    assert "| si_joint | 1 | 1 |" in table
    assert "| needle_length | 1 | 0 |" in table
    assert table.index("| si_joint |") < table.index("| needle_length |")  # most first


def test_phantom_parameters_are_set_over_every_preset() -> None:
    from bmbx_phantoms.cohort import overrides_text, phantom_of
    from bmbx_phantoms.parameters import parse_overrides

    assert parse_overrides("blood_hu=300 hip_scale=1,0.93 bowel_loops=3") == {
        "blood_hu": 300.0,
        "hip_scale": (1.0, 0.93),
        "bowel_loops": 3,
    }
    for text, named in (("nope=1", "nope"), ("blood_hu", "blood_hu"), ("blood_hu=x", "'x'")):
        with pytest.raises(ValueError, match=named):
            parse_overrides(text)
    with pytest.raises(ValueError, match="hip_scale"):
        overrides_text(["hip_scale=5,5"])  # out of range
    assert overrides_text(["noise_hu=5", "blood_hu=300"]) == "blood_hu=300 noise_hu=5"
    cases = cohort_cases(3, overrides="blood_hu=300")
    assert {c.overrides for c in cases} == {"blood_hu=300"}
    phantom = phantom_of(cases[0], voxel_mm=(3.0, 3.0))
    labels = np.asarray(phantom.labels.array)
    vessels = np.asarray(phantom.ct.array)[labels == phantom.label_names["iliac_vessels"]]
    # the blood's HU, blurred at the vessels' walls
    assert abs(float(np.median(vessels)) - 300.0) < 20.0
    assert "; phantom parameters blood_hu=300" in summarize(
        [{**row, "overrides": "blood_hu=300"} for row in _rows_of(cases[0])]
    )


def _rows_of(case: Case) -> list[dict]:
    return [
        {
            "seed": case.seed,
            "preset": case.preset,
            "position": case.position,
            "voxel_mm": "2 x 2.5",
            "side": side,
            "status": "infeasible",
            "truth_admits": False,
            "truth_admits_with_reserve": False,
            "violations": "",
            "binding": "core_cortex_clearance",
            "cross_check_agrees": "",
        }
        for side in ("left", "right")
    ]


def test_a_study_written_before_a_column_was_added_resumes(tmp_path, monkeypatch, capsys) -> None:
    import csv

    from bmbx_phantoms import cohort

    first = cohort_cases(1)[0]
    out = tmp_path / "cohort.csv"
    old = [name for name in cohort.FIELDS if name != "overrides"]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_rows_of(first))
    monkeypatch.setattr(
        cohort, "run_case", lambda case, cross_check=True, voxel_mm=None: _rows_of(case)
    )
    assert cohort.main(["--cases", "2", "--workers", "1", "--out", str(out), "--resume"]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == cohort.FIELDS
    assert [int(r["seed"]) for r in rows] == [first.seed] * 2 + [first.seed + 1] * 2
    assert "phantoms: 2, sides planned: 4" in capsys.readouterr().out
    # another phantom parameter does not join that study
    with pytest.raises(SystemExit):
        cohort.main(["--cases", "3", "--out", str(out), "--resume", "--phantom", "blood_hu=300"])
    assert "other --phantom parameters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cohort.main(["--cases", "1", "--phantom", "nope=1"])
    assert "nope" in capsys.readouterr().err
