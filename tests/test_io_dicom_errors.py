"""Bad DICOM input: the right InputError, naming the file and the problem, nothing written."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bmbx_phantoms.dicom_writer import write_ct_series
from bmbx_plan import InputError, load_ct
from bmbx_plan.volume import Volume

State = Callable[[Path], dict[str, tuple[int, int]]]


@pytest.fixture
def series(tiny_ct: Volume, tmp_path: Path) -> list[Path]:
    """tiny_ct written HFS into tmp_path/series: 5 slices, 2.5 mm apart."""
    return write_ct_series(tiny_ct, tmp_path / "series", seed="errors")


def _edit(path: Path, **elements: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _refuses(path: Path, pattern: str, snapshot: State, *, names: Path | None = None) -> str:
    """load_ct(path) raises InputError matching ``pattern``, naming ``names`` (default
    ``path``), and leaves the tree around ``path`` untouched."""
    root = path if path.is_dir() else path.parent
    before = snapshot(root.parent)
    with pytest.raises(InputError, match=pattern) as info:
        load_ct(path)
    assert snapshot(root.parent) == before, "the loader must not write anything"
    message = str(info.value)
    assert str(names or path) in message
    return message


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder") as info:
        load_ct(tmp_path / "nope")
    assert info.value.path == tmp_path / "nope"


def test_empty_folder(tmp_path: Path, snapshot: State) -> None:
    (tmp_path / "empty").mkdir()
    _refuses(tmp_path / "empty", "folder is empty", snapshot)


def test_folder_without_dicom(tmp_path: Path, snapshot: State) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.dcm").write_bytes(b"\x00" * 300)
    _refuses(folder, "no DICOM images", snapshot)


def test_not_dicom_single_file(tmp_path: Path, snapshot: State) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    _refuses(path, r"not a DICOM file.*\.nii\.gz", snapshot)


def test_mr_series(series: list[Path], snapshot: State) -> None:
    for path in series:
        _edit(path, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    _refuses(series[0].parent, "modality MR, not CT", snapshot)


def test_secondary_capture(series: list[Path], snapshot: State) -> None:
    for path in series:
        _edit(path, Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    _refuses(series[0].parent, "secondary capture", snapshot)


def test_rgb_images(series: list[Path], snapshot: State) -> None:
    for path in series:
        _edit(path, PhotometricInterpretation="RGB", SamplesPerPixel=3, PlanarConfiguration=0)
    _refuses(series[0].parent, "colour images .*RGB", snapshot)


def test_single_slice(tmp_path: Path, snapshot: State) -> None:
    one = Volume.from_components(np.zeros((1, 8, 9)), spacing_mm=(1, 1, 1))
    write_ct_series(one, tmp_path / "one")
    _refuses(tmp_path / "one", "single 2D image", snapshot)


def test_localizer_and_odd_orientation_are_skipped(
    tiny_ct: Volume, series: list[Path], tmp_path: Path
) -> None:
    uid = pydicom.dcmread(series[0]).SeriesInstanceUID
    scout = Volume.from_components(np.zeros((1, 8, 9)), spacing_mm=(1, 1, 1))
    extra = {"SeriesInstanceUID": uid}
    (loc,) = write_ct_series(
        scout,
        series[0].parent,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        file_prefix="LOC",
        extra_elements=extra,
    )
    _edit(loc, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    (coronal,) = write_ct_series(scout, series[0].parent, file_prefix="COR", extra_elements=extra)
    _edit(coronal, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])

    loaded = load_ct(series[0].parent)

    assert loaded.shape == tiny_ct.shape
    notes = " ".join(loaded.info.notes)
    assert "Skipped 1 localizer" in notes
    assert "Skipped 1 image(s) whose orientation or size differs" in notes


def _drop(paths: list[Path], *indices: int) -> None:
    for n in indices:
        paths[n].unlink()


def test_one_missing_slice_is_interpolated(
    tiny_ct: Volume, series: list[Path], resample_nearest: Callable[..., np.ndarray]
) -> None:
    # HFS files are numbered superior -> inferior; file 3 of 5 is array slice k = 2
    _drop(series, 2)
    loaded = load_ct(series[0].parent)
    assert loaded.shape == tiny_ct.shape
    assert loaded.array.dtype == np.float32
    assert any("linear interpolation" in note for note in loaded.info.notes)
    on_grid = resample_nearest(loaded, tiny_ct)
    original = np.asarray(tiny_ct.array, dtype=np.float64)
    np.testing.assert_array_equal(on_grid[[0, 1, 3, 4]], original[[0, 1, 3, 4]])
    # the rebuilt slice lies halfway between its neighbours
    np.testing.assert_allclose(on_grid[2], (original[1] + original[3]) / 2)


def test_large_gap_is_refused(series: list[Path], snapshot: State) -> None:
    _drop(series, 1, 2)  # a 3x gap
    message = _refuses(series[0].parent, "missing slices or uneven slice spacing", snapshot)
    assert "7.5 mm" in message
    assert series[0].name in message  # names the files around the gap


def test_many_uneven_steps_are_refused(tmp_path: Path, snapshot: State) -> None:
    vol = Volume.from_components(np.zeros((12, 4, 5)), spacing_mm=(2.0, 1.0, 1.0))
    files = write_ct_series(vol, tmp_path / "uneven")
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        z = float(ds.ImagePositionPatient[2]) + (0.5 if n % 2 else 0.0)
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(path)
    _refuses(tmp_path / "uneven", "uneven slice spacing", snapshot)


def test_duplicate_file_of_same_slice_is_dropped(tiny_ct: Volume, series: list[Path]) -> None:
    shutil.copy(series[1], series[1].with_name("copy.dcm"))
    loaded = load_ct(series[0].parent)
    assert loaded.shape == tiny_ct.shape
    assert any("Dropped 1 duplicate" in note for note in loaded.info.notes)


def test_two_slices_at_one_position_are_refused(series: list[Path], snapshot: State) -> None:
    twin = series[1].with_name("twin.dcm")
    shutil.copy(series[1], twin)
    _edit(twin, SOPInstanceUID=pydicom.uid.generate_uid())
    message = _refuses(series[0].parent, "two different slices at the same position", snapshot)
    assert "twin.dcm" in message


def test_gantry_tilt_is_refused_with_its_angle(series: list[Path], snapshot: State) -> None:
    for path in series:
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * np.tan(np.radians(15.0)), z]
        ds.save_as(path)
    _refuses(series[0].parent, r"gantry tilt.*tilt 15\.0 deg", snapshot)


def test_truncated_file_is_named(series: list[Path], snapshot: State) -> None:
    data = series[3].read_bytes()
    series[3].write_bytes(data[: len(data) - 30])
    _refuses(series[0].parent, "truncated", snapshot, names=series[3])


def test_corrupt_header_is_named(series: list[Path], snapshot: State) -> None:
    data = bytearray(series[2].read_bytes())
    data[140:400] = b"\xff" * 260  # garbage right after the DICM magic
    series[2].write_bytes(bytes(data))
    _refuses(series[0].parent, "corrupt", snapshot, names=series[2])


def test_undecodable_transfer_syntax_is_named(series: list[Path], snapshot: State) -> None:
    ds = pydicom.dcmread(series[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x01" * 20])
    ds["PixelData"].VR = "OB"
    ds.save_as(series[0], enforce_file_format=True)
    _refuses(
        series[0].parent, re.escape("MPEG2 Main Profile / Main Level"), snapshot, names=series[0]
    )


def test_unknown_series_uid_lists_available(series: list[Path], snapshot: State) -> None:
    uid = pydicom.dcmread(series[0]).SeriesInstanceUID
    folder = series[0].parent
    before = snapshot(folder)
    with pytest.raises(InputError, match=r"no series with SeriesInstanceUID 1\.2\.3\.4") as info:
        load_ct(folder, series_uid="1.2.3.4")
    assert uid in str(info.value)
    assert snapshot(folder) == before
