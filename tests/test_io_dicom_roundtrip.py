"""DICOM write -> read round trips: positions, oblique, compression, rescale, file order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bmbx_phantoms.dicom_writer import write_ct_series
from bmbx_plan import load_ct
from bmbx_plan.volume import Volume

Resample = Callable[[Volume, Volume], np.ndarray]

# A bright marker at the patient's left-posterior-superior corner region of tiny_ct.
MARKER_HU = 3000


def _with_marker(volume: Volume) -> tuple[Volume, np.ndarray]:
    """Put MARKER_HU at the voxel with the largest x + y + z (left, posterior, superior)."""
    grid = np.indices(volume.shape).reshape(3, -1).T
    lps = volume.index_to_lps(grid)
    corner = grid[np.argmax(lps.sum(axis=1))]
    array = np.array(volume.array)
    array[tuple(corner)] = MARKER_HU
    return volume.with_array(array), volume.index_to_lps(corner)[0]


def _marker_lps(volume: Volume) -> np.ndarray:
    index = np.argwhere(np.asarray(volume.array) == MARKER_HU)
    assert len(index) == 1, "exactly one marker voxel expected"
    return volume.index_to_lps(index)[0]


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS", "FFP"])
def test_round_trip_all_positions(
    position: str, tiny_ct: Volume, tmp_path: Path, resample_nearest: Resample
) -> None:
    original, marker = _with_marker(tiny_ct)
    files = write_ct_series(original, tmp_path, patient_position=position, seed=position)
    iop = [float(v) for v in pydicom.dcmread(files[0]).ImageOrientationPatient]
    expected_iop = {
        "HFS": [1, 0, 0, 0, 1, 0],
        "HFP": [-1, 0, 0, 0, -1, 0],
        "FFS": [-1, 0, 0, 0, 1, 0],
        "FFP": [1, 0, 0, 0, -1, 0],
    }[position]
    assert iop == expected_iop

    loaded = load_ct(tmp_path)

    assert loaded.info.patient_position == position
    assert loaded.array.dtype == np.int16
    assert loaded.shape == (5, 6, 7)  # axial storage of an axial grid: same sizes
    np.testing.assert_allclose(loaded.spacing_mm, [2.5, 0.8, 0.6], rtol=1e-6)
    # every voxel centre of the original maps onto a loaded voxel with the same HU
    np.testing.assert_array_equal(resample_nearest(loaded, original), original.array)
    np.testing.assert_allclose(_marker_lps(loaded), marker, atol=1e-6)
    np.testing.assert_allclose(
        np.sort(loaded.bounds_lps_mm(), axis=0), np.sort(original.bounds_lps_mm(), axis=0)
    )


@pytest.mark.parametrize("position", ["HFS", "FFP"])
def test_stored_slices_follow_the_scanner_layout(
    position: str, tiny_ct: Volume, tmp_path: Path
) -> None:
    files = write_ct_series(tiny_ct, tmp_path, patient_position=position)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    # instance 1 is the most superior slice, numbering goes cranio-caudal
    assert z == sorted(z, reverse=True)
    assert [int(h.InstanceNumber) for h in headers] == list(range(1, len(files) + 1))
    assert len({h.SOPInstanceUID for h in headers}) == len(files)
    assert len({h.SeriesInstanceUID for h in headers}) == 1


def test_writer_uids_are_deterministic(tiny_ct: Volume, tmp_path: Path) -> None:
    a = write_ct_series(tiny_ct, tmp_path / "a", seed=3)
    b = write_ct_series(tiny_ct, tmp_path / "b", seed=3)
    c = write_ct_series(tiny_ct, tmp_path / "c", seed=4)
    uid = [pydicom.dcmread(files[0]).SOPInstanceUID for files in (a, b, c)]
    assert uid[0] == uid[1] != uid[2]


def test_order_comes_from_positions_not_names(
    tiny_ct: Volume, tmp_path: Path, resample_nearest: Resample
) -> None:
    files = write_ct_series(tiny_ct, tmp_path, patient_position="HFS")
    rng = np.random.default_rng(0)
    for path, new in zip(files, rng.permutation(len(files)), strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(new) + 1  # scrambled instance numbers ...
        ds.save_as(path)
        os.replace(path, path.with_name(f"x{new:03d}"))  # ... and scrambled names
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(resample_nearest(loaded, tiny_ct), tiny_ct.array)


def test_single_file_loads_its_whole_series(tiny_ct: Volume, tmp_path: Path) -> None:
    files = write_ct_series(tiny_ct, tmp_path)
    loaded = load_ct(files[2])
    assert loaded.shape == tiny_ct.shape
    assert loaded.info.source == str(files[2])


def test_oblique_direction_cosines(tmp_path: Path, resample_nearest: Resample) -> None:
    # rotated 15 deg about z, slices still perpendicular to their stacking (no tilt)
    angle = np.radians(15.0)
    rot_z = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    direction = rot_z @ np.column_stack([[0, 0, 1], [0, 1, 0], [1, 0, 0]]).astype(float)
    rng = np.random.default_rng(5)
    original = Volume.from_components(
        rng.integers(-1000, 2000, size=(4, 6, 5)),
        spacing_mm=(3.0, 0.9, 0.7),
        origin_lps_mm=(5.0, -7.0, 20.0),
        direction=direction,
    )
    write_ct_series(original, tmp_path)
    loaded = load_ct(tmp_path)
    np.testing.assert_allclose(loaded.affine_lps, original.affine_lps, atol=1e-5)
    np.testing.assert_array_equal(loaded.array, original.array)
    np.testing.assert_array_equal(resample_nearest(loaded, original), original.array)


@pytest.mark.parametrize("compress", ["rle", "jpeg2000"])
def test_compressed_round_trip(compress: str, tmp_path: Path, resample_nearest: Resample) -> None:
    # OpenJPEG encodes slices of at least 32x32 pixels only
    rng = np.random.default_rng(11)
    original = Volume.from_components(
        rng.integers(-1024, 3000, size=(3, 33, 40)),
        spacing_mm=(1.5, 0.7, 0.9),
        origin_lps_mm=(-3.0, 4.0, -5.0),
    )
    files = write_ct_series(original, tmp_path, patient_position="FFS", compress=compress)
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    loaded = load_ct(tmp_path)
    np.testing.assert_array_equal(resample_nearest(loaded, original), original.array)


def test_signed_storage_round_trip(tiny_ct: Volume, tmp_path: Path) -> None:
    write_ct_series(tiny_ct, tmp_path, storage_dtype="int16")
    loaded = load_ct(tmp_path)
    assert loaded.array.dtype == np.int16
    assert int(loaded.array.min()) == int(tiny_ct.array.min())


def test_per_slice_rescale_gives_float32(tiny_ct: Volume, tmp_path: Path) -> None:
    files = write_ct_series(tiny_ct, tmp_path)
    # halve slope on one slice and double its stored values: same HU, non-integral slope
    path = files[1]
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.int32)
    ds.PixelData = (stored * 2).astype(np.uint16).tobytes()
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "-1024"
    ds.save_as(path)
    loaded = load_ct(tmp_path)
    assert loaded.array.dtype == np.float32
    np.testing.assert_array_equal(
        np.sort(loaded.array.ravel()), np.sort(np.asarray(tiny_ct.array, np.float32).ravel())
    )


def test_scan_info_from_headers(tiny_ct: Volume, tmp_path: Path) -> None:
    files = write_ct_series(tiny_ct, tmp_path, patient_position="HFP")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    info = load_ct(tmp_path).info
    assert (info.series_instance_uid, info.modality, info.patient_position) == (uid, "CT", "HFP")
    assert info.manufacturer == "bmbx_phantoms"
    assert info.notes == ()


def test_slice_thickness_is_read_and_sets_the_resolution(tiny_ct: Volume, tmp_path: Path) -> None:
    spacing = float(tiny_ct.spacing_mm.max())
    write_ct_series(tiny_ct, tmp_path / "thick", slice_thickness_mm=3 * spacing)
    thick = load_ct(tmp_path / "thick")
    assert thick.info.slice_thickness_mm == pytest.approx(3 * spacing)
    assert thick.resolution_mm == pytest.approx(3 * spacing)  # slices thicker than spacing
    # no SliceThickness, or an empty one: unknown, and the voxels set the resolution
    files = write_ct_series(tiny_ct, tmp_path / "none")
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if n % 2:
            del ds.SliceThickness
        else:
            ds.SliceThickness = ""
        ds.save_as(path)
    unknown = load_ct(tmp_path / "none")
    assert unknown.info.slice_thickness_mm is None
    assert unknown.resolution_mm == pytest.approx(spacing)
