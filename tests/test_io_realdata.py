"""Real data from ../shared/data: a JPEG 2000 Siemens series and PENGWIN NIfTI bones."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from bmbx_plan import load_ct
from bmbx_plan.io import _dicom_pixels

pytestmark = pytest.mark.realdata

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
KJI_TO_IJK = np.eye(4)[[2, 1, 0, 3]]


@pytest.fixture
def abdomen(shared_data: Path) -> Path:
    return shared_data / "real" / "upper_abdomen_dicom"


def test_jpeg2000_series_geometry_matches_headers(abdomen: Path) -> None:
    vol = load_ct(abdomen)
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing_mm, [2.0, 0.9765625, 0.9765625])
    assert vol.info.patient_position == "HFS"
    assert vol.info.manufacturer == "SIEMENS"
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(abdomen.iterdir())]
    assert {h.file_meta.TransferSyntaxUID for h in headers} == {"1.2.840.10008.1.2.4.90"}
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    # HFS: the normal is +z, so the first sorted slice is the most inferior one
    first = positions[np.argmin(positions[:, 2])]
    np.testing.assert_allclose(vol.origin_lps_mm, first)
    np.testing.assert_allclose(vol.direction, np.eye(3)[:, ::-1])
    # every slice centre lands on a header position
    centres = vol.index_to_lps(np.column_stack([np.arange(20), np.zeros(20), np.zeros(20)]))
    np.testing.assert_allclose(np.sort(centres[:, 2]), np.sort(positions[:, 2]))


def test_jpeg2000_series_hu_are_plausible(abdomen: Path) -> None:
    vol = load_ct(abdomen)
    hu = np.asarray(vol.array)
    assert hu.dtype == np.int16
    # air outside the body (corner of the slices) near -1000 HU
    assert abs(float(np.median(hu[:, :20, :20])) + 1000) < 50
    # the liver level: a large share of voxels is soft tissue (-100..200 HU)
    soft = np.count_nonzero((hu > -100) & (hu < 200)) / hu.size
    assert 0.15 < soft < 0.7
    # some bone (spine, ribs) and nothing beyond the 12-bit range
    assert np.count_nonzero(hu > 300) > 1000
    assert hu.min() >= -1024
    assert hu.max() <= 3071


def test_jpeg2000_pydicom_fallback_matches_gdcm(
    abdomen: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gdcm = load_ct(abdomen)
    monkeypatch.setattr(_dicom_pixels, "_read_sitk", lambda *args: None)
    fallback = load_ct(abdomen)
    np.testing.assert_array_equal(fallback.array, gdcm.array)
    assert any("decoded with pydicom" in note for note in fallback.info.notes)


def test_single_real_file_loads_the_series(abdomen: Path) -> None:
    one = sorted(abdomen.iterdir())[7]
    assert load_ct(one).shape == (20, 512, 512)


def _centroid_lps(path: Path) -> np.ndarray:
    vol = load_ct(path)
    index = np.argwhere(np.asarray(vol.array) != 0)
    return vol.index_to_lps(index).mean(axis=0)


@pytest.mark.parametrize("case", ["001", "003", "005"])
def test_pengwin_left_hip_is_on_the_left(case: str, shared_data: Path) -> None:
    folder = shared_data / "real" / "pengwin_bone_only" / case
    left = _centroid_lps(folder / f"{case}_LI.nii.gz")
    right = _centroid_lps(folder / f"{case}_RI.nii.gz")
    # LPS +x is patient left; hip bones sit ~10 cm either side of the midline
    assert left[0] - right[0] > 80.0


@pytest.mark.parametrize("case", ["001", "003", "005"])
def test_pengwin_affine_matches_nibabel(case: str, shared_data: Path) -> None:
    path = shared_data / "real" / "pengwin_bone_only" / case / f"{case}_LI.nii.gz"
    vol = load_ct(path)
    image = nib.load(path)
    expected = RAS_TO_LPS @ image.affine @ KJI_TO_IJK
    # NIfTI stores the geometry as float32: agree to a micrometre
    np.testing.assert_allclose(vol.affine_lps, expected, atol=1e-3)
    assert vol.shape == image.shape[::-1]
