"""NIfTI / NRRD / MetaImage loading: geometry in LPS, dtype rules, bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bmbx_plan import InputError, load_ct
from bmbx_plan.io._sitk import volume_to_sitk
from bmbx_plan.volume import Volume

# nibabel's affines map (i, j, k) to RAS; ours map (k, j, i) to LPS.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
KJI_TO_IJK = np.eye(4)[[2, 1, 0, 3]]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_round_trip_through_file(suffix: str, tiny_ct: Volume, tmp_path: Path) -> None:
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(volume_to_sitk(tiny_ct), str(path))
    loaded = load_ct(path)
    np.testing.assert_array_equal(loaded.array, tiny_ct.array)
    assert loaded.array.dtype == np.int16
    # NIfTI stores float32 geometry: micrometre agreement is all it can give
    np.testing.assert_allclose(loaded.affine_lps, tiny_ct.affine_lps, atol=1e-4)


def test_nifti_ras_is_converted_to_lps(tmp_path: Path) -> None:
    # written by nibabel in RAS with a marker at RAS (+10, +20, +30) = LPS (-10, -20, 30)
    data = np.zeros((4, 5, 6), dtype=np.int16)  # nibabel order (i, j, k)
    data[1, 2, 3] = 1000
    affine_ras = np.array([[-2.0, 0, 0, 12.0], [0, 1.5, 0, 17.0], [0, 0, 3.0, 21.0], [0, 0, 0, 1]])
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, affine_ras), path)
    loaded = load_ct(path)
    (index,) = np.argwhere(loaded.array == 1000)
    np.testing.assert_allclose(loaded.index_to_lps(index)[0], [-10.0, -20.0, 30.0])
    np.testing.assert_allclose(loaded.affine_lps, RAS_TO_LPS @ affine_ras @ KJI_TO_IJK)


def test_float_values_stay_float32(tmp_path: Path) -> None:
    path = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(np.full((3, 4, 5), 0.5, dtype=np.float64), np.eye(4)), path)
    loaded = load_ct(path)
    assert loaded.array.dtype == np.float32
    assert float(loaded.array[0, 0, 0]) == 0.5


def _refuse(path: Path, pattern: str) -> None:
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(InputError, match=pattern) as info:
        load_ct(path)
    assert str(path) in str(info.value)
    assert sorted(p.name for p in path.parent.iterdir()) == before


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_is_refused(suffix: str, dtype: type, tmp_path: Path) -> None:
    # ITK's NIfTI reader turns NaN into 0 silently: the loader must still see them
    data = np.zeros((3, 4, 5), dtype=dtype)
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    path = tmp_path / f"nan{suffix}"
    if suffix.startswith(".nii"):
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    _refuse(path, "2 voxel.* NaN or infinite")


def test_4d_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), dtype=np.int16), np.eye(4)), path)
    _refuse(path, "4D image")


def test_2d_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "2d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4), dtype=np.int16), np.eye(4)), path)
    _refuse(path, "2D image")


def test_corrupt_nifti_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"not gzip at all")
    _refuse(path, "cannot read NIfTI file")


def test_series_uid_with_image_file_is_refused(tiny_ct: Volume, tmp_path: Path) -> None:
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(volume_to_sitk(tiny_ct), str(path))
    with pytest.raises(InputError, match="series_uid applies to DICOM input"):
        load_ct(path, series_uid="1.2.3")
