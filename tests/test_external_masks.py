"""External masks: TotalSegmentator-style files built from a phantom's truth arrive on the
CT grid under the right names; every unusable input is refused naming its file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray

from bmbx_phantoms import TRUTH_LABELS, make_phantom
from bmbx_phantoms.dicom_writer import scanner_orientation
from bmbx_phantoms.phantom import Phantom
from bmbx_plan.anatomy.external import (
    NAME_ALIASES,
    RISK_GROUPS,
    TOTALSEGMENTATOR_TOTAL_V2,
    TRAVERSED_RISK_GROUPS,
    ExternalMasks,
    canonical_name,
    load_external_masks,
)
from bmbx_plan.io import load_ct
from bmbx_plan.io.errors import InputError
from bmbx_plan.io.export import write_label_map, write_volume
from bmbx_plan.resample import resample_to
from bmbx_plan.volume import Volume

Masks = dict[str, NDArray[np.bool_]]
#: Down to 8 mm and back moves every surface voxel by up to 4 mm: the thin iliac wings
#: and the sacrum keep a Dice of about 0.8 with the truth at 4 mm voxels (measured
#: 0.80-0.90 for seed 2); a flip or a one-voxel shift drops it far below.
DICE_COARSE = 0.75

#: The TotalSegmentator files built from the truth (TotalSegmentator name -> truth labels).
TS_FROM_TRUTH: dict[str, tuple[str, ...]] = {
    "hip_left": ("ilium_left_cortex", "ilium_left_marrow"),
    "hip_right": ("ilium_right_cortex", "ilium_right_marrow"),
    "sacrum": ("sacrum",),
    "urinary_bladder": ("bladder",),
    "colon": ("bowel", "bowel_gas"),
    "iliac_artery_left": ("iliac_vessels",),  # split at the midline below
    "iliac_artery_right": ("iliac_vessels",),
}


def _dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _lps_x(volume: Volume) -> NDArray[np.float64]:
    """LPS x (mm, + = patient left) of every voxel centre, shape ``volume.shape``."""
    k, j, i = np.indices(volume.shape)
    row = volume.affine_lps[0]
    return row[0] * k + row[1] * j + row[2] * i + row[3]


def _structures(labels: Volume, midline_x_mm: float) -> Masks:
    """TotalSegmentator-style structures from a truth label map, on its grid."""
    out = {
        name: np.isin(labels.array, [TRUTH_LABELS[t] for t in truth])
        for name, truth in TS_FROM_TRUTH.items()
    }
    left = _lps_x(labels) > midline_x_mm
    out["iliac_artery_left"] &= left
    out["iliac_artery_right"] &= ~left
    return out


def _mask_file(labels: Volume, mask: NDArray[np.bool_], path: Path) -> Path:
    return write_volume(labels.with_array(mask.astype(np.uint8)), path)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    # 4 mm voxels keep the module fast; the structures are still several voxels thick
    return make_phantom(seed=2, position="HFP", pixel_spacing_mm=4.0, slice_spacing_mm=4.0)


@pytest.fixture(scope="module")
def midline_x_mm(phantom: Phantom) -> float:
    return float((phantom.landmark("psis_left")[0] + phantom.landmark("psis_right")[0]) / 2)


@pytest.fixture(scope="module")
def ct(phantom: Phantom) -> Volume:
    """The CT as a reader loads the prone DICOM series: stored flipped (j -> A, i -> R)."""
    return phantom.ct.reoriented(scanner_orientation("HFP"))


@pytest.fixture(scope="module")
def truth_on_ct(phantom: Phantom, ct: Volume, midline_x_mm: float) -> Masks:
    """The expected masks on the CT grid, by exact reorientation of the truth."""
    labels = phantom.labels.reoriented(scanner_orientation("HFP"))
    assert np.allclose(labels.affine_lps, ct.affine_lps)
    return _structures(labels, midline_x_mm)


@pytest.fixture(scope="module")
def segs(tmp_path_factory: pytest.TempPathFactory, phantom: Phantom, midline_x_mm: float) -> Path:
    """A TotalSegmentator output folder on the phantom's canonical grid (k -> S, j -> P,
    i -> L), which differs from the CT's stored grid by flips of j and i."""
    folder = tmp_path_factory.mktemp("segs")
    for name, mask in _structures(phantom.labels, midline_x_mm).items():
        _mask_file(phantom.labels, mask, folder / f"{name}.nii.gz")
    empty = np.zeros(phantom.labels.shape, dtype=bool)
    _mask_file(phantom.labels, empty, folder / "spleen.nii.gz")  # not in a pelvic scan
    (folder / "statistics.json").write_text("{}")  # not a mask: ignored
    return folder


@pytest.fixture(scope="module")
def coarse_grid(phantom: Phantom) -> Volume:
    """Twice the phantom's spacing, shifted by a quarter voxel: no voxel centre shared."""
    fine = phantom.labels
    shape = tuple(int(n) for n in np.ceil(np.asarray(fine.shape) / 2))
    origin = fine.index_to_lps([[0.25, 0.25, 0.25]])[0]
    return Volume.from_components(
        np.zeros(shape, dtype=np.uint8),
        spacing_mm=fine.spacing_mm * 2,
        origin_lps_mm=origin,
        direction=fine.direction,
    )


@pytest.fixture(scope="module")
def coarse_segs(
    tmp_path_factory: pytest.TempPathFactory,
    phantom: Phantom,
    coarse_grid: Volume,
    midline_x_mm: float,
) -> Path:
    folder = tmp_path_factory.mktemp("coarse_segs")
    for name, mask in _structures(phantom.labels, midline_x_mm).items():
        fine = phantom.labels.with_array(mask.astype(np.uint8))
        write_volume(resample_to(fine, coarse_grid, order=0), folder / f"{name}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def loaded(segs: Path, ct: Volume) -> ExternalMasks:
    return load_external_masks(segs, ct)


def _v2_label_map(phantom: Phantom, midline_x_mm: float) -> Volume:
    """The structures as one TotalSegmentator ``--ml`` label map with v2 ids."""
    ids = {name: value for value, name in TOTALSEGMENTATOR_TOTAL_V2.items()}
    array = np.zeros(phantom.labels.shape, dtype=np.uint8)
    for name, mask in _structures(phantom.labels, midline_x_mm).items():
        array[mask] = ids[name]
    return phantom.labels.with_array(array)


# --- names and grouping ------------------------------------------------------------------


def test_v2_class_map_matches_totalsegmentator_ids() -> None:
    # ids from TotalSegmentator's map_to_binary.class_map["total"] (v2)
    published = {1: "spleen", 18: "small_bowel", 20: "colon", 21: "urinary_bladder",
                 25: "sacrum", 27: "vertebrae_L5", 52: "aorta", 63: "inferior_vena_cava",
                 65: "iliac_artery_left", 68: "iliac_vena_right", 77: "hip_left",
                 78: "hip_right", 80: "gluteus_maximus_left", 85: "gluteus_minimus_right",
                 117: "costal_cartilages"}  # fmt: skip
    assert len(TOTALSEGMENTATOR_TOTAL_V2) == 117
    assert set(TOTALSEGMENTATOR_TOTAL_V2) == set(range(1, 118))
    assert len(set(TOTALSEGMENTATOR_TOTAL_V2.values())) == 117
    for value, name in published.items():
        assert TOTALSEGMENTATOR_TOTAL_V2[value] == name


def test_risk_groups_use_totalsegmentator_names() -> None:
    known = set(TOTALSEGMENTATOR_TOTAL_V2.values())
    for members in RISK_GROUPS.values():
        assert set(members) <= known
    assert TRAVERSED_RISK_GROUPS.issubset(RISK_GROUPS)
    assert set(NAME_ALIASES.values()) <= known


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("iliac_artery_left", "iliac_artery_left"),
        ("Iliac Artery-Left", "iliac_artery_left"),
        ("VERTEBRAE_L5", "vertebrae_L5"),
        ("ilium_left", "hip_left"),
        ("Ilium Right", "hip_right"),
        ("bladder", "urinary_bladder"),
        ("My Own Thing", "my_own_thing"),
        (" -- ", ""),
    ],
)
def test_canonical_name(given: str, expected: str) -> None:
    assert canonical_name(given) == expected


def test_external_masks_rejects_non_canonical_or_misshaped_masks() -> None:
    mask = np.zeros((2, 3, 4), dtype=bool)
    with pytest.raises(ValueError, match="not canonical"):
        ExternalMasks({"Colon": mask}, shape=(2, 3, 4), affine_lps=np.eye(4))
    with pytest.raises(ValueError, match="bool array of shape"):
        ExternalMasks({"colon": mask.astype(np.uint8)}, shape=(2, 3, 4), affine_lps=np.eye(4))
    with pytest.raises(ValueError, match="bool array of shape"):
        ExternalMasks({"colon": mask}, shape=(2, 3, 5), affine_lps=np.eye(4))


# --- a TotalSegmentator folder ------------------------------------------------------------


def test_folder_on_flipped_grid_arrives_exactly_under_its_names(
    loaded: ExternalMasks, ct: Volume, truth_on_ct: Masks
) -> None:
    assert loaded.names == tuple(sorted(TS_FROM_TRUTH))
    assert loaded.shape == ct.shape
    assert np.array_equal(loaded.affine_lps, ct.affine_lps)
    for name, expected in truth_on_ct.items():
        assert expected.any(), name  # the test would prove nothing for an empty structure
        # the grids differ only by flips: nearest neighbour is exact, Dice 1
        assert _dice(loaded[name], expected) == 1.0, name
        assert not loaded[name].flags.writeable
    assert any("voxel for voxel" in note for note in loaded.notes)
    assert any("spleen" in note and "left out" in note for note in loaded.notes)


def test_left_and_right_arrive_on_the_patients_left_and_right(
    loaded: ExternalMasks, ct: Volume, midline_x_mm: float
) -> None:
    x = _lps_x(ct)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        artery = x[loaded[f"iliac_artery_{side}"]]
        assert np.all(sign * (artery - midline_x_mm) > 0), side  # split there by definition
        # the pubis reaches the midline: the hip bone as a whole lies well to its side
        assert sign * (np.mean(x[loaded[f"hip_{side}"]]) - midline_x_mm) > 50.0, side


def test_folder_on_coarser_grid_is_nearest_neighbour(
    coarse_segs: Path,
    ct: Volume,
    truth_on_ct: Masks,
    resample_nearest: Callable[[Volume, Volume], np.ndarray],
) -> None:
    masks = load_external_masks(coarse_segs, ct)
    assert masks.names == tuple(sorted(TS_FROM_TRUTH))
    for name in TS_FROM_TRUTH:
        # against the slow obvious reference: every CT voxel centre looked up in the file
        stored = load_ct(coarse_segs / f"{name}.nii.gz")
        assert np.array_equal(masks[name], resample_nearest(stored, ct) == 1), name
    for name in ("hip_left", "hip_right", "sacrum", "urinary_bladder", "colon"):
        # the vessels, two voxels thick, do not survive 8 mm voxels: not compared
        assert _dice(masks[name], truth_on_ct[name]) > DICE_COARSE, name
    assert any("8x8x8 mm grid, resampled onto the CT's 4x4x4 mm grid" in n for n in masks.notes)


def test_names_select_structures_and_aliases_resolve(segs: Path, ct: Volume) -> None:
    masks = load_external_masks(segs, ct, names=["ilium_left", "Urinary Bladder", "spleen"])
    assert masks.names == ("hip_left", "spleen", "urinary_bladder")
    assert masks["ilium_left"] is masks["hip_left"]
    assert "Ilium Left" in masks
    assert "colon" not in masks
    assert not masks["spleen"].any()  # requested, so kept although empty
    assert any("spleen" in note and "kept as empty" in note for note in masks.notes)
    with pytest.raises(KeyError, match="no external mask 'colon'"):
        masks["colon"]


def test_risk_masks_group_structures(loaded: ExternalMasks) -> None:
    risk = loaded.risk_masks()
    assert list(risk) == ["vessels", "bowel", "bladder"]  # no gluteal muscle file
    both = loaded["iliac_artery_left"] | loaded["iliac_artery_right"]
    assert np.array_equal(risk["vessels"], both)
    assert np.array_equal(risk["bowel"], loaded["colon"])
    assert np.array_equal(risk["bladder"], loaded["urinary_bladder"])
    assert np.array_equal(loaded.union([]), np.zeros(loaded.shape, dtype=bool))
    custom = loaded.risk_masks(groups={"bones": ("hip_left", "sacrum", "femur_left")})
    assert np.array_equal(custom["bones"], loaded.union(["hip_left", "sacrum"]))


def test_single_structure_file(segs: Path, ct: Volume, truth_on_ct: Masks) -> None:
    masks = load_external_masks(segs / "colon.nii.gz", ct)
    assert masks.names == ("colon",)
    assert np.array_equal(masks["colon"], truth_on_ct["colon"])


# --- one label map -----------------------------------------------------------------------


def test_multilabel_with_v2_ids(
    tmp_path: Path, phantom: Phantom, midline_x_mm: float, ct: Volume, truth_on_ct: Masks
) -> None:
    path = write_volume(_v2_label_map(phantom, midline_x_mm), tmp_path / "segmentations.nii")
    masks = load_external_masks(path, ct)
    assert masks.names == tuple(sorted(TS_FROM_TRUTH))
    for name, expected in truth_on_ct.items():
        assert np.array_equal(masks[name], expected), name
    assert any("TotalSegmentator v2 'total' class ids" in note for note in masks.notes)
    assert any("110 of 117 named labels are absent" in note for note in masks.notes)


def test_multilabel_names_from_nifti_header_extension(
    tmp_path: Path, phantom: Phantom, midline_x_mm: float, ct: Volume, truth_on_ct: Masks
) -> None:
    nib = pytest.importorskip("nibabel")
    structures = _structures(phantom.labels, midline_x_mm)
    ids = {name: value for value, name in enumerate(sorted(structures), start=1)}  # not v2
    array = np.zeros(phantom.labels.shape, dtype=np.uint8)
    for name, mask in structures.items():
        array[mask] = ids[name]
    # TotalSegmentator's --ml label table: Caret XML in a NIfTI header extension (code 0)
    rows = "".join(
        f'<Label Key="{v}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{n}]]></Label>\n'
        for n, v in ids.items()
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0">'
        f"<LabelTable>\n{rows}</LabelTable></VolumeInformation></CaretExtension>"
    )
    # nibabel indexes the array like the Volume (axes k, j, i); NIfTI's affine is RAS
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.labels.affine_lps
    image = nib.Nifti1Image(array, affine_ras)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    path = tmp_path / "segmentations.nii.gz"
    nib.save(image, path)
    masks = load_external_masks(path, ct)
    assert masks.names == tuple(sorted(TS_FROM_TRUTH))
    for name, expected in truth_on_ct.items():
        assert np.array_equal(masks[name], expected), name
    assert any("header extension" in note for note in masks.notes)
    # a mapping overrides the names in the file
    override = load_external_masks(path, ct, mapping={"my_colon": ids["colon"]})
    assert override.names == ("my_colon",)
    assert np.array_equal(override["my_colon"], truth_on_ct["colon"])


@pytest.mark.parametrize("as_file", [False, True], ids=["dict", "json"])
def test_any_label_map_with_a_mapping(
    tmp_path: Path, phantom: Phantom, ct: Volume, truth_on_ct: Masks, as_file: bool
) -> None:
    path = write_volume(phantom.labels, tmp_path / "labels.mha")
    table = {"Bladder": 16, "small bowel": TRUTH_LABELS["bowel"], "sacrum": 7, "iliac_vessels": 12}
    mapping: dict[str, int] | Path = table
    if as_file:
        mapping = tmp_path / "names.json"
        mapping.write_text(json.dumps(table))
    masks = load_external_masks(path, ct, mapping=mapping)
    assert masks.names == ("iliac_vessels", "sacrum", "small_bowel", "urinary_bladder")
    assert np.array_equal(masks["bladder"], truth_on_ct["urinary_bladder"])
    assert np.array_equal(masks["sacrum"], truth_on_ct["sacrum"])
    vessels = truth_on_ct["iliac_artery_left"] | truth_on_ct["iliac_artery_right"]
    assert np.array_equal(masks["iliac_vessels"], vessels)
    assert any("without a name, ignored" in note for note in masks.notes)


def test_label_map_names_from_sidecar(tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    image, _ = write_label_map(phantom.labels, phantom.label_names, tmp_path / "truth.nii.gz")
    masks = load_external_masks(image, ct, names=["bladder", "bowel_gas"])
    assert masks.names == ("bowel_gas", "urinary_bladder")
    expected = phantom.labels.reoriented(scanner_orientation("HFP")).array == 16
    assert np.array_equal(masks["urinary_bladder"], expected)
    assert any("sidecar truth.json" in note for note in masks.notes)


def test_some_mapped_values_absent_is_a_note(tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    path = write_volume(phantom.labels, tmp_path / "labels.nii.gz")
    masks = load_external_masks(path, ct, mapping={"sacrum": 7, "aorta": 200})
    assert masks.names == ("sacrum",)
    assert any("1 of 2 named labels are absent" in note for note in masks.notes)
    requested = load_external_masks(path, ct, mapping={"sacrum": 7, "aorta": 200}, names=["aorta"])
    assert not requested["aorta"].any()


def test_mask_partly_outside_the_ct_is_cropped_with_a_note(
    tmp_path: Path, phantom: Phantom, ct: Volume, midline_x_mm: float
) -> None:
    colon = _structures(phantom.labels, midline_x_mm)["colon"]
    labels = phantom.labels
    affine = labels.affine_lps.copy()
    low, high = np.argwhere(colon)[:, 0].min(), np.argwhere(colon)[:, 0].max()
    affine[2, 3] += 0.3 * (high - low) * labels.spacing_mm[0]  # 30 % of the colon above the CT
    folder = tmp_path / "shifted"
    folder.mkdir()
    write_volume(Volume(colon.astype(np.uint8), affine), folder / "colon.nii.gz")
    masks = load_external_masks(folder, ct)
    assert 0 < masks["colon"].sum() < colon.sum()
    assert any(re.search(r"colon: \d+% of its voxels lie outside the CT", n) for n in masks.notes)


# --- refused input -----------------------------------------------------------------------


def _folder_with(tmp_path: Path, files: dict[str, Volume | bytes]) -> Path:
    folder = tmp_path / "segs"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            write_volume(content, folder / name)
    return folder


def test_missing_path(tmp_path: Path, ct: Volume) -> None:
    with pytest.raises(InputError, match=r"nothing_here: no such file or folder"):
        load_external_masks(tmp_path / "nothing_here", ct)


@pytest.mark.parametrize("files", [{}, {"readme.txt": b"masks"}], ids=["empty", "no_masks"])
def test_folder_without_mask_files(tmp_path: Path, ct: Volume, files: dict[str, bytes]) -> None:
    folder = _folder_with(tmp_path, dict(files))
    with pytest.raises(InputError, match=r"segs: no mask files"):
        load_external_masks(folder, ct)


def test_two_files_for_one_structure(tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    empty = phantom.labels.with_array(np.zeros(phantom.labels.shape, dtype=np.uint8))
    folder = _folder_with(tmp_path, {"colon.nii.gz": empty, "Colon.nii": empty})
    with pytest.raises(InputError, match=r"segs: Colon.nii and colon.nii.gz are both masks"):
        load_external_masks(folder, ct)


def test_mask_that_is_not_binary(tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    folder = _folder_with(tmp_path, {"colon.nii.gz": phantom.labels})
    with pytest.raises(InputError, match=r"colon\.nii\.gz: a per-structure mask must hold only"):
        load_external_masks(folder, ct)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a nifti file at all", r"colon\.nii: cannot read NIfTI"),
        ("4d", r"colon\.nii: 4D image"),
    ],
    ids=["unreadable", "4d"],
)
def test_unusable_mask_file(
    tmp_path: Path, ct: Volume, content: bytes | str, problem: str
) -> None:
    folder = tmp_path / "segs"
    folder.mkdir()
    if content == "4d":
        sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkUInt8), str(folder / "colon.nii"))
    else:
        (folder / "colon.nii").write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=problem):
        load_external_masks(folder, ct)


@pytest.mark.parametrize("shift_slices", [10_000, -1], ids=["far_away", "two_slices_overlap"])
def test_mask_from_another_scan(
    tmp_path: Path, phantom: Phantom, ct: Volume, midline_x_mm: float, shift_slices: int
) -> None:
    hip = _structures(phantom.labels, midline_x_mm)["hip_left"]
    affine = phantom.labels.affine_lps.copy()
    # -1: shifted up by all but two slices, so only the hip's lowest two slices could overlap
    slices = shift_slices if shift_slices > 0 else hip.shape[0] - 2
    affine[2, 3] += slices * phantom.labels.spacing_mm[0]
    folder = _folder_with(tmp_path, {"hip_left.nii.gz": Volume(hip.astype(np.uint8), affine)})
    with pytest.raises(
        InputError,
        match=r"hip_left\.nii\.gz: only \d+% of the mask lies inside the CT .* the mask spans "
        r"x .* mm \(LPS\), the CT x .*",
    ):
        load_external_masks(folder, ct)


def test_empty_mask_on_a_grid_elsewhere(tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    affine = phantom.labels.affine_lps.copy()
    affine[:3, 3] += 5000.0
    far = Volume(np.zeros(phantom.labels.shape, dtype=np.uint8), affine)
    folder = _folder_with(tmp_path, {"spleen.nii.gz": far})
    with pytest.raises(InputError, match=r"spleen\.nii\.gz: does not overlap the CT"):
        load_external_masks(folder, ct)


def test_unknown_names_requested(segs: Path, tmp_path: Path, phantom: Phantom, ct: Volume) -> None:
    with pytest.raises(InputError, match=r"segs\d*: no mask for gluteus_medius_left, aorta"):
        load_external_masks(segs, ct, names=["gluteus_medius_left", "aorta"])
    path = write_volume(phantom.labels, tmp_path / "labels.nii.gz")
    with pytest.raises(InputError, match=r"labels\.nii\.gz: no label named aorta"):
        load_external_masks(path, ct, mapping={"sacrum": 7}, names=["aorta"])
    with pytest.raises(InputError, match="not the string"):
        load_external_masks(segs, ct, names="colon")


def test_mapping_with_a_folder(segs: Path, ct: Volume) -> None:
    with pytest.raises(InputError, match=r"segs\d*: a mapping applies to a label map file"):
        load_external_masks(segs, ct, mapping={"colon": 1})


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({}, "the mapping names no structure"),
        ({"sacrum": 0}, r"'sacrum' -> 0; label values must be integers > 0"),
        ({"sacrum": 7.0}, r"'sacrum' -> 7.0; label values must be integers > 0"),
        ({"sacrum": True}, r"'sacrum' -> True"),
        ({"sacrum": 7, "bowel": 7}, "value 7 is given to sacrum, bowel"),
        ({"hip_left": 3, "ilium_left": 4}, "'hip_left' and 'ilium_left' both name 'hip_left'"),
        ({"--": 3}, "'--' is not a structure name"),
        ({"aorta": 200, "colon": 201}, "none of the 2 named label values occurs"),
    ],
)
def test_bad_mapping(
    tmp_path: Path, phantom: Phantom, ct: Volume, mapping: dict[str, object], problem: str
) -> None:
    path = write_volume(phantom.labels, tmp_path / "labels.nii.gz")
    with pytest.raises(InputError, match=r"labels\.nii\.gz: (mapping: )?" + problem):
        load_external_masks(path, ct, mapping=mapping)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"sacrum": 7, "sacrum": 8}', "names given twice: sacrum"),
        ('[["sacrum", 7]]', "the mapping must be a JSON object"),
        ('{"sacrum": 7', "not a readable JSON mapping"),
        ('{"sacrum": "7"}', r"'sacrum' -> '7'"),
    ],
)
def test_bad_mapping_file(
    tmp_path: Path, phantom: Phantom, ct: Volume, text: str, problem: str
) -> None:
    path = write_volume(phantom.labels, tmp_path / "labels.nii.gz")
    names = tmp_path / "names.json"
    names.write_text(text)
    with pytest.raises(InputError, match=r"names\.json: (mapping: )?" + problem):
        load_external_masks(path, ct, mapping=names)
    with pytest.raises(InputError, match=r"absent\.json: no such mapping file"):
        load_external_masks(path, ct, mapping=tmp_path / "absent.json")


def test_label_map_with_fractions_or_negative_values(
    tmp_path: Path, phantom: Phantom, ct: Volume
) -> None:
    fractions = phantom.labels.with_array(phantom.labels.array.astype(np.float32) / 2)
    path = write_volume(fractions, tmp_path / "halves.nii.gz")
    with pytest.raises(InputError, match=r"halves\.nii\.gz: a label map must hold integer"):
        load_external_masks(path, ct, mapping={"sacrum": 7})
    negative = phantom.labels.with_array(-phantom.labels.array.astype(np.int16))
    path = write_volume(negative, tmp_path / "negative.nii.gz")
    with pytest.raises(InputError, match=r"negative\.nii\.gz: a label map must not hold negative"):
        load_external_masks(path, ct, mapping={"sacrum": 7})


def test_large_label_values(tmp_path: Path, tiny_ct: Volume) -> None:
    # int32 values beyond int16 arrive as float32 from the reader; ids above 65536 take
    # the np.unique path instead of bincount
    labels = np.zeros(tiny_ct.shape, dtype=np.int32)
    labels[1:3, 2:4, 3:6] = 70_000
    path = write_volume(tiny_ct.with_array(labels), tmp_path / "big.nii.gz")
    masks = load_external_masks(path, tiny_ct, mapping={"lesion": 70_000})
    assert np.array_equal(masks["lesion"], labels == 70_000)
    assert masks.notes == ("Names from the given mapping.",)
