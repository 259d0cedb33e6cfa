"""Real atlas pelves segmented with a shape model that has not seen them
(``python -m bmbx_phantoms.heldout`` measures all thirty)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bmbx_plan.anatomy.segment as segment_module
from bmbx_phantoms import make_phantom
from bmbx_phantoms.heldout import (
    DEFAULT_ATLAS,
    AtlasCase,
    _model_without,
    atlas_study_cases,
    main,
    measure_atlas_case,
)
from bmbx_phantoms.reserve import kept_with_reserve
from bmbx_plan import segment_pelvis
from bmbx_plan.anatomy.shape_model import default_shape_model
from bmbx_plan.planning.parameters import RESERVE_SHARES

pytestmark = pytest.mark.skipif(
    not DEFAULT_ATLAS.is_dir(), reason=f"the atlas {DEFAULT_ATLAS} is absent"
)


def test_the_segmentation_fits_the_shape_model_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    fit = segment_module.fit_shape_model

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("model"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(segment_module, "fit_shape_model", recording)
    model = _model_without(str(DEFAULT_ATLAS), "10")
    assert "10" not in model.case_ids
    assert len(model.case_ids) == 29
    phantom = make_phantom(seed=5, preset="average", anatomy=DEFAULT_ATLAS / "10")
    with_model = segment_pelvis(phantom.ct, shape_model=model)
    packaged = segment_pelvis(phantom.ct)
    assert seen == [model, None]
    # the two models place the same bone differently: the fit really used the one given
    moved = [
        np.abs(a.vertices_lps_mm - b.vertices_lps_mm).max()
        for a, b in zip(with_model.shape_fit.meshes, packaged.shape_fit.meshes, strict=True)
    ]
    assert min(moved) > 0.5
    assert set(default_shape_model().case_ids) >= {"10"}


def test_a_pelvis_the_model_has_not_seen_is_segmented_and_planned_safely() -> None:
    # Atlas pelvis 05, left out of the model it is segmented with: bones and plans are
    # judged on its truth like a cohort phantom. With two shares of the reserve for the
    # SI joint, the plan on its left side passed 4.48 mm from the true joint: the fitted
    # auricular surface lay more than 3 mm off. (Its landmarks are not judged: they are
    # the atlas's vertices, whose correspondence varies between pelves by more than a
    # model of the others reproduces, see the study's table in the README.)
    case = AtlasCase(str(DEFAULT_ATLAS), "05", seed=7002, preset="fatty_marrow", position="HFP")
    rows = measure_atlas_case(case)
    assert [r["side"] for r in rows] == ["left", "right"]
    for row in rows:
        assert row["model"] == "leave-one-out"
        assert row["dice_hip"] >= 0.95, row
        assert row["dice_sacrum"] >= 0.95, row
        if row["status"] == "feasible":
            assert row["violations"] == "", row
            assert row["cross_check_agrees"] is True, row
    assert [r["status"] for r in rows] == ["feasible", "feasible"]


def test_the_reserve_covers_the_sliding_joint_of_an_unseen_pelvis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Atlas pelvis 17 (thin, HFP), segmented with a model of the others: lines drawn
    # near the limits on its segmentation and judged on its truth. Near its left SI joint
    # the segmentation is optimistic by up to 4 mm, and two shares of the reserve kept
    # lines there that pass 4 mm from the true joint.
    table, rows = _run_study(["--only", "17", "--reserve"], tmp_path / "lines.csv", capsys)
    assert f"| si_joint | mm | {RESERVE_SHARES['si_joint']:g} |" in table
    assert {r["atlas_case"] for r in rows} == {"17"}
    assert {r["side"] for r in rows} == {"left", "right"}
    passing = [r for r in rows if r["passes_on_segmentation"] == "True"]
    too_near = [r for r in passing if r["si_joint:truth_passes"] == "False"]
    # the question is not empty: the truth rejects lines the segmentation passes
    assert len(too_near) > 10
    assert not [r["skin_lps_mm"] for r in too_near if kept_with_reserve(r)]
    # and the reserve leaves lines to plan with on both sides
    assert {r["side"] for r in passing if kept_with_reserve(r)} == {"left", "right"}


def test_the_study_writes_its_rows_and_refuses_unknown_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "heldout.csv"
    printed, rows = _run_study(["--only", "03", "--no-plan"], out, capsys)
    first = atlas_study_cases(DEFAULT_ATLAS)[0]
    assert [(r["atlas_case"], r["side"], r["preset"]) for r in rows] == [
        ("03", "left", first.preset),
        ("03", "right", first.preset),
    ]
    assert "| psis | 2 |" in printed
    assert "leave-one-out" in printed
    assert main(["--summarize", str(out)]) == 0
    assert capsys.readouterr().out.strip() == printed.strip()
    with pytest.raises(SystemExit) as stop:
        main(["--only", "99", "--no-plan"])
    assert stop.value.code == 2
    assert "no atlas case 99" in capsys.readouterr().err


def _run_study(
    args: list[str], out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, list[dict[str, str]]]:
    """Run the study's command line with ``args``, writing ``out``: what it printed and
    the rows of its CSV."""
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with out.open(newline="") as handle:
        return printed, list(csv.DictReader(handle))
