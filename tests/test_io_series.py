"""Series discovery in folders with several series, and patient identity never leaking."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bmbx_phantoms.dicom_writer import write_ct_series
from bmbx_plan import InputError, load_ct
from bmbx_plan.io import list_dicom_series
from bmbx_plan.volume import Volume


def _vol(slices: int, spacing: float, value: int) -> Volume:
    return Volume.from_components(
        np.full((slices, 6, 7), value), spacing_mm=(spacing, 0.8, 0.8), origin_lps_mm=(0, 0, 0)
    )


@pytest.fixture
def study(tmp_path: Path) -> dict[str, str]:
    """A study folder (nested) with: a thin 1 mm CT over 20 mm, a thick 5 mm CT over the
    same 20 mm, a longer but derived CT, an MR. Returns name -> SeriesInstanceUID."""
    root = tmp_path / "study"
    specs = {
        "thin": (_vol(21, 1.0, 100), {}),
        "thick": (_vol(5, 5.0, 200), {}),
        "derived": (_vol(15, 2.0, 300), {"image_type": ("DERIVED", "SECONDARY", "AXIAL")}),
        "mr": (_vol(40, 1.0, 400), {"extra_elements": {"Modality": "MR"}}),
    }
    uids = {}
    for number, (name, (vol, kwargs)) in enumerate(specs.items(), start=1):
        files = write_ct_series(
            vol,
            root / "sub" / name,
            seed=name,
            series_number=number,
            **kwargs,  # type: ignore[arg-type]
        )
        uids[name] = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    return uids


def test_picks_thin_original_ct_and_says_why(study: dict[str, str], tmp_path: Path) -> None:
    loaded = load_ct(tmp_path / "study")
    assert loaded.info.series_instance_uid == study["thin"]
    assert int(loaded.array[0, 0, 0]) == 100
    note = loaded.info.notes[0]
    assert note.startswith(f"Picked series {study['thin']}")
    for other in ("thick", "derived", "mr"):
        assert study[other] in note
    assert "not CT" in note  # the MR is listed with its reason


def test_series_uid_chooses(study: dict[str, str], tmp_path: Path) -> None:
    loaded = load_ct(tmp_path / "study", series_uid=study["thick"])
    assert loaded.shape[0] == 5
    assert int(loaded.array[0, 0, 0]) == 200


def test_series_uid_of_mr_is_refused(study: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="modality MR, not CT"):
        load_ct(tmp_path / "study", series_uid=study["mr"])


def test_unknown_series_uid_lists_all(study: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no series with SeriesInstanceUID 9\.9") as info:
        load_ct(tmp_path / "study", series_uid="9.9")
    assert all(uid in str(info.value) for uid in study.values())


def test_list_dicom_series(study: dict[str, str], tmp_path: Path) -> None:
    found = {s.series_instance_uid: s for s in list_dicom_series(tmp_path / "study")}
    assert set(found) == set(study.values())
    assert found[study["thin"]].usable
    assert not found[study["mr"]].usable
    assert found[study["thick"]].spacing_mm == pytest.approx(5.0)


def test_series_without_uid_still_loads(tiny_ct: Volume, tmp_path: Path) -> None:
    # anonymisers sometimes blank the UIDs (like the real Siemens series in shared data)
    files = write_ct_series(tiny_ct, tmp_path / "anon")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ""
        ds.SOPClassUID = ""
        ds.save_as(path)
    loaded = load_ct(tmp_path / "anon")
    assert loaded.shape == tiny_ct.shape
    assert loaded.info.series_instance_uid == ""


FAKE_NAME = "Geheimnis^Rumpelstilzchen"
FAKE_ID = "PID-8675309"


def test_patient_identity_never_leaks(
    tiny_ct: Volume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "who"
    files = write_ct_series(tiny_ct, folder, patient_name=FAKE_NAME, patient_id=FAKE_ID)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = "19700101"
        ds.AccessionNumber = "ACC-424242"
        ds.save_as(path)
    # a second series so that a pick note is written, and a localizer so another note is
    write_ct_series(tiny_ct, folder / "b", seed="b", patient_name=FAKE_NAME, patient_id=FAKE_ID)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    loaded = load_ct(folder)
    files[1].unlink()  # now a gap: resample note
    loaded_gap = load_ct(folder, series_uid=uid)
    files[2].unlink()  # now too large a gap: error message
    with pytest.raises(InputError, match="missing slices") as info:
        load_ct(folder, series_uid=uid)

    texts = [
        repr(loaded),
        repr(loaded.info),
        str(loaded.info),
        repr(loaded_gap.info),
        str(info.value),
        caplog.text,
    ]
    assert loaded_gap.info.notes, "the test must exercise notes"
    for secret in ("Geheimnis", "Rumpelstilzchen", FAKE_ID, "19700101", "ACC-424242"):
        assert not any(secret in text for text in texts), secret
