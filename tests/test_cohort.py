"""A fast subset of the cohort safety study (``python -m bmbx_phantoms.cohort`` runs all)."""

from __future__ import annotations

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
