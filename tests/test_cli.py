"""The command line: exit codes, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bmbx_plan.cli import main

SMALL = ["--pixel-spacing-mm", "4", "--slice-spacing-mm", "5"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmbx_plan", *args], capture_output=True, text=True, timeout=300
    )


def test_phantom_command_writes_the_contract_files(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    result = _run(
        "--quiet", "phantom", "--out", str(out), "--seed", "2", "--position", "FFS", *SMALL
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet
    assert (out / "dicom").is_dir()
    assert len(list((out / "dicom").iterdir())) > 10
    for name in ("truth_labels.nii.gz", "truth_labels.json", "truth.json"):
        assert (out / name).is_file()
    truth = json.loads((out / "truth.json").read_text())
    assert truth["position"] == "FFS"
    assert truth["seed"] == 2
    assert not list(tmp_path.glob(".*partial*"))  # the staging folder is gone


@pytest.mark.parametrize(
    "args",
    [
        ["phantom", "--preset", "no_such_preset"],
        ["phantom", "--anatomy", "/nonexistent/pelvis"],
        ["phantom", "--pixel-spacing-mm", "-1"],
        ["phantom", "--slice-thickness-mm", "-1"],
    ],
)
def test_bad_phantom_options_exit_2_without_writing(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "ph"
    result = _run(*args, "--out", str(out))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("bmbx-plan: error:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_phantom_refuses_a_non_empty_folder_and_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["--quiet", "phantom", "--out", str(tmp_path), *SMALL]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_phantom_with_anatomy_folder_missing_a_mesh_exits_2(tmp_path: Path) -> None:
    anatomy = tmp_path / "pelvis"
    anatomy.mkdir()
    (anatomy / "left_hip.vtk").write_text("not a mesh")
    result = _run("phantom", "--anatomy", str(anatomy), "--out", str(tmp_path / "o"), *SMALL)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(anatomy) in result.stderr
    assert not (tmp_path / "o").exists()


def test_info_reports_the_series_and_bad_input_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    thick = ["--slice-thickness-mm", "10"]  # slices 5 mm apart, each 10 mm thick
    assert (
        main(["--quiet", "phantom", "--out", str(out), "--position", "HFS", *SMALL, *thick]) == 0
    )
    result = _run("--quiet", "info", str(out / "dicom"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["patient_position"] == "HFS"
    assert report["modality"] == "CT"
    assert report["spacing_mm"] == [4.0, 4.0, 5.0]
    assert report["slice_thickness_mm"] == 10.0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("info", str(empty))
    assert result.returncode == 2
    assert str(empty) in result.stderr
    assert "Traceback" not in result.stderr


def test_patient_identity_stays_out_of_info(tmp_path: Path) -> None:
    from bmbx_phantoms import make_phantom
    from bmbx_phantoms.dicom_writer import write_ct_series

    ph = make_phantom(seed=1, pixel_spacing_mm=5.0, slice_spacing_mm=6.0)
    write_ct_series(
        ph.ct,
        tmp_path / "s",
        patient_position="HFP",
        patient_name="DOE^JANE",
        patient_id="MRN123456",
    )
    result = _run("info", str(tmp_path / "s"))
    assert result.returncode == 0
    for secret in ("DOE", "JANE", "MRN123456"):
        assert secret not in result.stdout + result.stderr


def test_version_and_module_entry_point() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("bmbx-plan ")


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prone phantom written as NIfTI (the default grid: planning needs real detail)."""
    out = tmp_path_factory.mktemp("cli") / "ph"
    result = _run("--quiet", "phantom", "--out", str(out), "--seed", "0", "--nifti", "--no-dicom")
    assert result.returncode == 0, result.stderr
    return out / "ct.nii.gz"


def _check(ct: Path, entry: str, target: str, out: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        "--quiet",
        "check",
        str(ct),
        "--side",
        "right",
        "--entry",
        entry,
        "--target",
        target,
        "--out",
        str(out),
    )


def test_plan_and_check_commands_follow_the_contract(phantom_ct: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    result = _run("--quiet", "plan", str(phantom_ct), "--side", "right", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "plan.json").read_text())
    assert document["coordinate_system"] == "LPS"
    assert document["plans"][0]["side"] == "right"
    assert (out / "trajectory_right.mrk.json").is_file()
    assert (out / "report.html").is_file()
    t = document["plans"][0]["trajectory"]
    entry = ",".join(str(v) for v in t["skin_entry_lps_mm"])
    target = ",".join(str(v) for v in t["core_end_lps_mm"])
    ok = _check(phantom_ct, entry, target, tmp_path / "ok")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    check = json.loads((tmp_path / "ok" / "check.json").read_text())
    assert check["plans"][0]["status"] == "feasible"
    # the same needle pushed 60 mm further leaves the bone: exit 3, check.json says why
    d = t["direction_lps"]
    far = ",".join(str(v + 60.0 * u) for v, u in zip(t["core_end_lps_mm"], d, strict=True))
    bad = _check(phantom_ct, entry, far, tmp_path / "bad")
    assert bad.returncode == 3, bad.stderr
    failed = json.loads((tmp_path / "bad" / "check.json").read_text())["plans"][0]
    assert failed["status"] == "infeasible"
    assert any(
        c["name"] == "core_cortex_clearance" and not c["passed"] for c in failed["constraints"]
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--entry", "1,2", "--target", "1,2,3"],
        ["--entry", "a,b,c", "--target", "1,2,3"],
        ["--entry", "1,2,3", "--target", "1,2,3"],
    ],
)
def test_check_with_bad_points_exits_2_without_writing(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    assert (
        main(["--quiet", "check", "missing.nii.gz", "--side", "left", *args, "--out", str(out)])
        == 2
    )
    assert not out.exists()


def test_plan_of_a_missing_input_exits_2_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--quiet", "plan", str(tmp_path / "none.nii.gz"), "--out", str(out)]) == 2
    assert not out.exists()
