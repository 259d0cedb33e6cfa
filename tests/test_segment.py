"""segment_pelvis on phantoms (against exact truth) and on real CT; clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bmbx_phantoms import TRUTH_LABELS, make_phantom
from bmbx_phantoms.labels import ilium_labels
from bmbx_plan import NoPelvisError, load_ct, segment_pelvis
from bmbx_plan.anatomy.pelvis import joint_clefts, joint_sheets
from bmbx_plan.volume import Volume

DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
GRID = {"pixel_spacing_mm": 1.5, "slice_spacing_mm": 2.0}
CASES = [
    (1, "HFP", "average"),
    (2, "FFS", "obese"),
    (3, "HFS", "osteoporotic"),
    (4, "FFP", "rotated"),
    (5, "HFP", "narrow_corridor"),
]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


@pytest.fixture(scope="module")
def segmented() -> list[tuple[object, object]]:
    out = []
    for seed, position, preset in CASES:
        ph = make_phantom(seed=seed, position=position, preset=preset, **GRID)
        # Segment the CT as a scanner stores it for that position (flipped axes).
        from bmbx_phantoms.dicom_writer import scanner_orientation

        stored = ph.ct.reoriented(scanner_orientation(position))
        labels = ph.labels.reoriented(scanner_orientation(position))
        out.append((ph, labels, segment_pelvis(stored)))
    return out


def test_hip_bones_match_the_truth(segmented: list) -> None:
    for ph, labels, anatomy in segmented:
        for side in ("left", "right"):
            truth = np.isin(labels.array, ilium_labels(side))
            assert _dice(anatomy.ilium(side), truth) >= 0.95, (ph.truth["seed"], side)


def test_sacrum_matches_the_truth(segmented: list) -> None:
    for ph, labels, anatomy in segmented:
        truth = labels.array == TRUTH_LABELS["sacrum"]
        assert _dice(anatomy.mask("sacrum"), truth) >= 0.95, ph.truth["seed"]


# The cohort's grid, the test phantoms' in-plane grid, a fine clinical CT (mm, k j i).
_VOXEL_SIZES = [(2.5, 2.0, 2.0), (2.0, 1.5, 1.5), (0.7, 0.7, 0.7)]


def _two_bone_blocks(
    spacing_mm: tuple[float, float, float],
) -> tuple[Volume, np.ndarray, np.ndarray, np.ndarray]:
    """Two bone blocks (cortex 900 HU, marrow 250 HU), 2.1 mm apart along x, the gap
    filled as the shell fill fills it (on a 2 mm grid the gap is a single voxel).

    Returns the CT, the filled bone, the joint sheet in the gap, and the deep marrow."""
    shape = tuple(round(n / s) for n, s in zip((60.0, 40.0, 60.0), spacing_mm, strict=True))
    ct = Volume.from_components(np.full(shape, 40, np.int16), spacing_mm=spacing_mm)
    x, y, z = np.broadcast_arrays(*(ct.lps_coordinate(axis) for axis in range(3)))
    gap = np.abs(x - 30.0) < 1.05
    inside = (np.abs(x - 30.0) < 25.0) & (np.abs(y - 20.0) < 12.0) & (np.abs(z - 30.0) < 20.0)
    hu = np.where(inside & ~gap, 900, 40).astype(np.int16)
    marrow = (np.abs(np.abs(x - 30.0) - 13.0) < 8.0) & (np.abs(y - 20.0) < 8.0)
    marrow &= np.abs(z - 30.0) < 16.0
    hu[marrow] = 250
    sheet = inside & gap & (np.abs(y - 20.0) < 10.0) & (np.abs(z - 30.0) < 18.0)
    assert sheet.any()
    return ct.with_array(hu), inside, sheet, marrow


@pytest.mark.parametrize("spacing_mm", _VOXEL_SIZES)
def test_a_joint_cleft_between_two_cortices_is_found_at_any_voxel_size(
    spacing_mm: tuple[float, float, float],
) -> None:
    ct, inside, sheet, marrow = _two_bone_blocks(spacing_mm)
    clefts = joint_clefts(inside, ct, bone_threshold_hu=400.0)
    assert clefts[sheet].all()
    # Deep marrow is no cleft.
    assert not clefts[ndimage.binary_erosion(marrow, iterations=3)].any()


@pytest.mark.parametrize("spacing_mm", _VOXEL_SIZES)
def test_a_joint_sheet_has_cortex_on_both_sides_the_rim_of_marrow_does_not(
    spacing_mm: tuple[float, float, float],
) -> None:
    ct, inside, sheet, marrow = _two_bone_blocks(spacing_mm)
    sheets = joint_sheets(inside, ct, bone_threshold_hu=400.0)
    assert sheets[sheet].all()
    # The outer layer of the (16 mm thick) marrow is a cleft, with cortex on one side
    # only: no joint space.
    rim = marrow & ~ndimage.binary_erosion(marrow)
    assert joint_clefts(inside, ct, bone_threshold_hu=400.0)[rim].any()
    assert not sheets[marrow].any()
    # Looking in a box around the joint finds it and nothing outside the box.
    box = tuple(slice(max(int(idx.min()) - 3, 0), int(idx.max()) + 4) for idx in np.nonzero(sheet))
    boxed = joint_sheets(inside, ct, bone_threshold_hu=400.0, box=box)
    assert boxed[sheet].all()
    boxed[box] = False
    assert not boxed.any()


def test_joint_sheets_match_a_voxel_by_voxel_reference() -> None:
    rng = np.random.default_rng(7)
    spacing = (2.5, 1.0, 0.7)  # 1, 3 and 4 voxels of reach
    hu = rng.choice(np.array([0, 300], np.int16), size=(9, 11, 13), p=[0.6, 0.4])
    ct = Volume.from_components(hu, spacing_mm=spacing)
    bone = rng.random(hu.shape) < 0.8
    box = (slice(1, 8), slice(0, 11), slice(2, 12))
    found = joint_sheets(bone, ct, bone_threshold_hu=130.0, box=box)
    dense = bone & (hu >= 130)
    expected = np.zeros_like(bone)
    for k, j, i in np.argwhere(bone & (hu < 130)):
        if not all(b.start <= v < b.stop for v, b in zip((k, j, i), box, strict=True)):
            continue
        for axis in range(3):
            steps = max(1, int(3.0 / spacing[axis] + 0.5))
            at = [k, j, i]
            sides = []
            for sign in (1, -1):
                hit = False
                for step in range(1, steps + 1):
                    probe = list(at)
                    probe[axis] += sign * step
                    inside = box[axis].start <= probe[axis] < box[axis].stop
                    hit |= inside and bool(dense[tuple(probe)])
                sides.append(hit)
            expected[k, j, i] |= all(sides)
    assert expected.any()
    assert np.array_equal(found, expected)


def test_low_density_matches_a_voxel_by_voxel_reference() -> None:
    from bmbx_plan.anatomy import pelvis

    rng = np.random.default_rng(11)
    spacing = (1.0, 2.5, 0.7)  # 2, 1 and 3 voxels of valley reach
    # more slices than one slab, so the slabs' seams are crossed
    shape = (pelvis._VALLEY_SLAB + 9, 7, 9)
    hu = rng.choice(np.array([0, 250, 400, 600, 900], np.int16), size=shape)
    ct = Volume.from_components(hu, spacing_mm=spacing)
    box = (slice(2, shape[0] - 1), slice(0, 7), slice(1, 8))
    found = pelvis._low_density(ct, box, 130.0)
    whole = hu.astype(float)
    expected = whole < 130.0
    for at in np.ndindex(shape):
        for axis in range(3):
            reach = max(1, int(2.0 / spacing[axis] + 0.5))
            sides = []
            for sign in (1, -1):
                values = [-np.inf]
                for step in range(1, reach + 1):
                    probe = list(at)
                    probe[axis] += sign * step
                    if 0 <= probe[axis] < shape[axis]:  # the sides may lie beyond the box
                        values.append(whole[tuple(probe)])
                sides.append(max(values))
            cortex = min(sides)
            expected[at] |= cortex >= 500.0 and whole[at] < 0.5 * (cortex + 130.0)
    expected = expected[box]
    assert (expected & (hu[box] >= 130.0)).sum() > 100  # valleys above the threshold
    assert np.array_equal(found, expected)


def test_clefts_and_sheets_are_the_same_from_a_low_density_mask_at_hand() -> None:
    from bmbx_plan.anatomy.pelvis import low_density_bone

    rng = np.random.default_rng(5)
    shape = (40, 30, 34)
    hu = rng.choice(np.array([0, 250, 400, 600, 900], np.int16), size=shape)
    hu = ndimage.uniform_filter(hu, 2)  # some structure, some valleys
    ct = Volume.from_components(hu, spacing_mm=(2.5, 1.0, 0.8))
    bone = np.zeros(shape, bool)
    bone[3:35, 2:27, 5:30] = rng.random((32, 25, 25)) > 0.1
    low = low_density_bone(bone, ct, bone_threshold_hu=300.0)
    assert low.any()
    assert not (low & ~bone).any()
    clefts = joint_clefts(bone, ct, bone_threshold_hu=300.0)
    assert clefts.any()
    assert np.array_equal(joint_clefts(bone, ct, bone_threshold_hu=300.0, low=low), clefts)
    box = (slice(10, 30), slice(0, 30), slice(4, 20))
    sheets = joint_sheets(bone, ct, bone_threshold_hu=300.0, box=box)
    assert sheets.any()
    assert np.array_equal(
        joint_sheets(bone, ct, bone_threshold_hu=300.0, box=box, low=low), sheets
    )


@pytest.mark.parametrize("spacing_mm", [(1.0, 1.0, 1.0), (0.7, 0.7, 0.7)])
def test_a_joint_narrower_than_the_blur_is_a_cleft(spacing_mm: tuple[float, float, float]) -> None:
    # Two cortices (900 HU) with a 1 mm joint between them, blurred (sigma 0.5 mm): the
    # joint's centre stays above the 130 HU threshold, a valley between the cortices.
    shape = tuple(round(n / s) for n, s in zip((20.0, 20.0, 30.0), spacing_mm, strict=True))
    ct = Volume.from_components(np.zeros(shape, np.float32), spacing_mm=spacing_mm)
    x = np.broadcast_to(ct.lps_coordinate(0), shape)
    sharp = np.where((np.abs(x - 15.0) > 0.5) & (np.abs(x - 15.0) < 3.0), 900.0, 250.0)
    hu = ndimage.gaussian_filter(sharp, 0.5 / np.asarray(spacing_mm))
    joint = np.abs(x - 15.0) < 0.5 + 0.5 * spacing_mm[2]
    joint &= hu == hu[joint].min()  # the voxels at the joint's centre
    assert joint.any()
    assert (hu[joint] > 130.0).all()
    ct = ct.with_array(hu.astype(np.float32))
    bone = np.ones(shape, bool)
    assert joint_clefts(bone, ct, bone_threshold_hu=130.0)[joint].all()
    assert joint_sheets(bone, ct, bone_threshold_hu=130.0)[joint].all()
    # the cortices themselves are no cleft
    assert not joint_clefts(bone, ct, bone_threshold_hu=130.0)[
        (sharp > 800.0) & (hu > 600.0)
    ].any()


@pytest.mark.parametrize(
    ("seed", "position", "preset"), [(1085, "FFS", "sclerotic"), (1180, "HFP", "no_safe_right")]
)
def test_the_joint_splits_the_bones_on_the_cohort_grid(
    seed: int, position: str, preset: str
) -> None:
    # The cohort's 2 x 2 x 2.5 mm CT, where the SI cleft is a single voxel: before clefts
    # were looked for there, the sacrum of these phantoms had Dice 0.93 and 0.90 (hip
    # bones took its edge). At this voxel size one voxel of the sacrum's boundary is about
    # 4 % of its volume, so 0.94 is the sacrum's bar here (0.95 at 1.5 x 2 mm, above).
    ph = make_phantom(seed=seed, position=position, preset=preset)
    anatomy = segment_pelvis(ph.ct)
    labels = ph.labels.array
    assert _dice(anatomy.mask("sacrum"), labels == TRUTH_LABELS["sacrum"]) >= 0.94
    for side in ("left", "right"):
        truth = np.isin(labels, ilium_labels(side))
        assert _dice(anatomy.ilium(side), truth) >= 0.95, side


def _segmented_at_1_mm(seed: int, preset: str) -> tuple:
    """A prone (HFP) phantom at 1 x 1 x 1.25 mm, a clinical planning CT, and its
    segmentation."""
    ph = make_phantom(
        seed=seed, position="HFP", preset=preset, pixel_spacing_mm=1.0, slice_spacing_mm=1.25
    )
    return ph, segment_pelvis(ph.ct)


def test_a_narrow_joint_splits_the_bones_at_clinical_resolution() -> None:
    # At 1 x 1 x 1.25 mm this phantom's 1 mm SI joints stay above the shell threshold;
    # before valleys between cortices counted as clefts, the hip bones took 3,000 voxels
    # of the sacrum on each side (now 750 and 580).
    ph, anatomy = _segmented_at_1_mm(1004, "no_safe_right")
    labels = ph.labels.array
    sacrum = labels == TRUTH_LABELS["sacrum"]
    for side in ("left", "right"):
        hip = np.isin(labels, ilium_labels(side))
        assert _dice(anatomy.ilium(side), hip) >= 0.95, side
        # traded between the two: under 1 % of the sacrum (the sacrum's own Dice here,
        # 0.950, is mostly its blurred outer layer, which it keeps)
        traded = (anatomy.ilium(side) & sacrum).sum() + (anatomy.mask("sacrum") & hip).sum()
        assert traded < 0.01 * sacrum.sum(), side


def test_a_vertebra_touching_the_wing_is_no_hip_bone() -> None:
    # In this tilted phantom L5 stands off the midline and its right transverse process
    # touches the right iliac wing: the first split joined L5 to the pelvis and the
    # second pass gave it to the right hip bone (5.1k of its 14k voxels; hip Dice 0.86),
    # where a planner found a "core" in the vertebra.
    ph = make_phantom(seed=1073, position="FFP", preset="rotated")
    anatomy = segment_pelvis(ph.ct)
    labels = ph.labels.array
    vertebra = labels == TRUTH_LABELS["lumbar_spine"]
    hip = anatomy.ilium("right")
    # The process touches the wing without a cleft: cut at its narrowest neck alone, its
    # tip (176 voxels, up to 7 mm outside the fitted hip bone) stayed with the wing and
    # moved the inner table: a core the segmentation judged 3.4 mm clear of the tables was
    # 1.3 mm clear of the true one.
    assert np.count_nonzero(hip & vertebra) < 0.01 * np.count_nonzero(vertebra)
    assert np.count_nonzero(anatomy.mask("lumbar_spine") & vertebra) > 0.8 * vertebra.sum()
    assert _dice(hip, np.isin(labels, ilium_labels("right"))) >= 0.95


def test_at_clinical_resolution_no_hip_bone_goes_to_the_far_femur() -> None:
    # At 1 mm voxels this phantom's pubic bodies meet at the symphysis without a visible
    # cleft: the first split gave the left one to the right side, which then took it for
    # the right femur (left hip bone Dice 0.95, 11k voxels lost).
    ph, anatomy = _segmented_at_1_mm(5, "narrow_corridor")
    for side, other in (("left", "right"), ("right", "left")):
        truth = np.isin(ph.labels.array, ilium_labels(side))
        far_femur = anatomy.mask(f"femur_{other}")
        assert np.count_nonzero(truth & far_femur) < 50, side
        assert _dice(anatomy.ilium(side), truth) >= 0.95, side


def test_sacral_canal_and_foramina_are_not_bone(segmented: list) -> None:
    """The shell fill closes the canal and the foramina into the sacrum; they are marked
    apart, as soft tissue of the truth, near the midline."""
    for ph, labels, anatomy in segmented:
        canal = anatomy.mask("spinal_canal")
        truth = labels.array == TRUTH_LABELS["sacrum"]
        assert canal.sum() * labels.voxel_volume_mm3 > 1000.0, ph.truth["seed"]  # > 1 mL
        assert np.count_nonzero(canal & truth) <= 0.01 * canal.sum(), ph.truth["seed"]
        x = labels.index_to_lps(np.argwhere(canal))[:, 0]
        assert abs(float(np.median(x)) - anatomy.midline_x_mm) < 10.0, ph.truth["seed"]


def test_landmarks_within_5_mm(segmented: list) -> None:
    for ph, _, anatomy in segmented:
        for name in (
            "psis_left",
            "psis_right",
            "sciatic_notch_apex_left",
            "sciatic_notch_apex_right",
            "asis_left",
            "asis_right",
        ):
            error = np.linalg.norm(anatomy.landmarks_lps_mm[name] - ph.landmark(name))
            assert error < 5.0, (ph.truth["seed"], name, error)


def test_midline_comes_from_the_anatomy(segmented: list) -> None:
    for ph, _, anatomy in segmented:
        # Phantoms place the midline off x = 0 on purpose.
        assert abs(anatomy.midline_x_mm - ph.truth["midline_x_mm"]) < 5.0


def test_left_and_right_follow_lps(segmented: list) -> None:
    for _, _, anatomy in segmented:
        grid = anatomy.labels
        xs = {
            side: grid.index_to_lps(np.argwhere(anatomy.ilium(side)))[:, 0].mean()
            for side in ("left", "right")
        }
        assert xs["left"] > xs["right"] + 80.0


def test_marrow_lies_inside_the_cortex(segmented: list) -> None:
    for _, labels, anatomy in segmented:
        marrow = anatomy.marrow("left")
        truth_marrow = labels.array == TRUTH_LABELS["ilium_left_marrow"]
        # Most segmented marrow is true marrow (the shell is at most a few voxels).
        assert (marrow & truth_marrow).sum() / marrow.sum() > 0.9


@pytest.mark.realdata
def test_real_ct_of_the_upper_abdomen_is_refused() -> None:
    series = DATA / "real" / "upper_abdomen_dicom"
    if not series.is_dir():
        pytest.skip(f"{series} is absent")
    with pytest.raises(NoPelvisError, match=r"no pelvis .* the scan covers z = -?\d+ to -?\d+ mm"):
        segment_pelvis(load_ct(series))


def _crop_z(volume: Volume, keep: np.ndarray) -> Volume:
    k = np.nonzero(keep)[0]
    array = volume.array[k.min() : k.max() + 1]
    affine = volume.affine_lps.copy()
    affine[:3, 3] = volume.index_to_lps([[k.min(), 0, 0]])[0]
    return Volume(array, affine, volume.info)


def test_cut_off_pelvis_is_refused() -> None:
    ph = make_phantom(seed=1, pixel_spacing_mm=2.0, slice_spacing_mm=2.5)
    z = ph.ct.index_to_lps(
        np.stack(
            [np.arange(ph.ct.shape[0]), np.zeros(ph.ct.shape[0]), np.zeros(ph.ct.shape[0])], axis=1
        )
    )[:, 2]
    crest = max(
        ph.shape.left_hip.vertices_lps_mm[:, 2].max(),
        ph.shape.right_hip.vertices_lps_mm[:, 2].max(),
    )
    with pytest.raises(NoPelvisError, match="above the iliac crest"):
        segment_pelvis(_crop_z(ph.ct, z < crest - 30.0))
    notch = ph.landmark("sciatic_notch_apex_left")[2]
    with pytest.raises(NoPelvisError, match=r"sciatic notch|no pelvis"):
        segment_pelvis(_crop_z(ph.ct, z > notch + 15.0))


def test_no_bone_is_refused() -> None:
    soft = Volume.from_components(np.full((20, 30, 40), 40, np.int16), spacing_mm=(2, 2, 2))
    with pytest.raises(NoPelvisError, match="no bone"):
        segment_pelvis(soft)


Pengwin = Callable[[str], tuple[Volume, list[np.ndarray]]]
_PENGWIN: dict[str, tuple[object, list[np.ndarray], np.ndarray]] = {}


def _pengwin(pengwin: Pengwin, case: str) -> tuple[object, list[np.ndarray], np.ndarray]:
    """Segmentation, expert masks (left, right, sacrum) and the crest-to-acetabular-roof
    region of one PENGWIN case (segmented once per session)."""
    if case in _PENGWIN:
        return _PENGWIN[case]
    from bmbx_phantoms.femur import acetabulum
    from bmbx_plan.mesh import mesh_from_mask

    ct, truth = pengwin(case)
    anatomy = segment_pelvis(ct)
    # The acetabular roof: top of the sphere fitted to each expert hip's acetabulum.
    roofs = []
    for mask, side in zip(truth[:2], ("left", "right"), strict=True):
        centre, radius = acetabulum(
            mesh_from_mask(mask, ct),
            aiis_lps_mm=anatomy.landmarks_lps_mm[f"aiis_{side}"],
            side=side,
        )
        roofs.append(float(centre[2]) + radius)
    k = np.arange(ct.shape[0])
    z = ct.index_to_lps(np.stack([k, 0 * k, 0 * k], axis=1))[:, 2]
    region = np.broadcast_to((z >= max(roofs))[:, None, None], ct.shape)
    _PENGWIN[case] = (anatomy, truth, region)
    return _PENGWIN[case]


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["001", "003", "005"])
def test_pengwin_hip_bones(pengwin: Pengwin, case: str) -> None:
    anatomy, truth, region = _pengwin(pengwin, case)
    for side, mask in zip(("left", "right"), truth[:2], strict=True):
        assert _dice(anatomy.ilium(side) & region, mask & region) >= 0.93, side
    assert not anatomy.has_skin  # bone-only data: no air, no skin


@pytest.mark.realdata
@pytest.mark.parametrize(
    "case",
    [
        "001",
        pytest.param(
            "003",
            marks=pytest.mark.xfail(
                strict=True,
                reason="Dice 0.90 in the region: the expert sacrum rises 30 mm above S1 on "
                "the right only, against the right ilium (a lumbosacral transitional "
                "segment), and the segmentation gives part of it to the ilium (right "
                "ilium: 9.6k of the 30.5k missed voxels); most of the rest is "
                "low-density sacral bone left out (20.9k, HU 26-125, a median 1.4 mm "
                "from the segmented sacrum)",
            ),
        ),
        "005",
    ],
)
def test_pengwin_sacrum(pengwin: Pengwin, case: str) -> None:
    anatomy, truth, region = _pengwin(pengwin, case)
    assert _dice(anatomy.mask("sacrum") & region, truth[2] & region) >= 0.93


def test_segment_command_writes_labels_and_meshes(tmp_path: Path) -> None:
    ph_dir = tmp_path / "ph"
    run = [sys.executable, "-m", "bmbx_plan"]
    subprocess.run(
        [*run, "phantom", "--out", str(ph_dir), "--quiet", "--seed", "5"], check=True, timeout=300
    )
    out = tmp_path / "seg"
    result = subprocess.run(
        [*run, "segment", str(ph_dir / "dicom"), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    names = json.loads((out / "labels.json").read_text())
    assert {"body", "ilium_left", "ilium_right", "sacrum"} <= set(names)
    labels = load_ct(out / "labels.nii.gz")
    assert labels.shape == load_ct(ph_dir / "dicom").shape
    for bone in ("ilium_left", "ilium_right", "sacrum"):
        assert (out / "meshes" / f"{bone}.vtp").is_file()
        assert (out / "meshes" / f"{bone}.stl").is_file()
    summary = json.loads((out / "anatomy.json").read_text())
    assert summary["coordinate_system"] == "LPS"


def test_segment_command_refuses_without_writing(tmp_path: Path) -> None:
    series = DATA / "real" / "upper_abdomen_dicom"
    if not series.is_dir():
        pytest.skip(f"{series} is absent")
    out = tmp_path / "seg"
    result = subprocess.run(
        [sys.executable, "-m", "bmbx_plan", "segment", str(series), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "z = " in result.stderr
    assert not out.exists()


def test_si_joint_and_notch_keep_out_zones(segmented: list) -> None:
    for ph, labels, anatomy in segmented:
        for side in ("left", "right"):
            joint = anatomy.mask(f"si_joint_{side}")
            truth = labels.array == TRUTH_LABELS[f"si_joint_{side}"]
            # Most of the segmented cleft is the true cleft (the rest is a voxel of
            # partial volume beside it).
            assert joint.sum() > 0
            assert (joint & truth).sum() / joint.sum() > 0.6, (ph.truth["seed"], side)
            notch = anatomy.mask(f"sciatic_notch_{side}")
            points = anatomy.labels.index_to_lps(np.argwhere(notch))
            apex = anatomy.landmarks_lps_mm[f"sciatic_notch_apex_{side}"]
            assert np.linalg.norm(points - apex, axis=1).max() <= 10.0 + 1.5


# ---------------------------------------------------------------- the working grid


def test_holes_per_slice_match_filling_each_slice() -> None:
    rng = np.random.default_rng(3)
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import holes_per_slice

    mask = ndimage.binary_dilation(rng.random((9, 14, 17)) < 0.1)
    for axis in range(3):
        for max_pixels in (None, 2):
            slow = np.zeros_like(mask)
            for n in range(mask.shape[axis]):
                plane = mask.take(n, axis=axis)
                holes = ndimage.binary_fill_holes(plane) & ~plane
                if max_pixels is not None:
                    labels, count = ndimage.label(holes)
                    sizes = np.bincount(labels.ravel(), minlength=count + 1)
                    holes &= (sizes <= max_pixels)[labels]
                index: list[object] = [slice(None)] * 3
                index[axis] = n
                slow[tuple(index)] = holes
            fast = holes_per_slice(mask, axis, max_pixels=max_pixels)
            assert np.array_equal(fast, slow), (axis, max_pixels)


@pytest.mark.parametrize("corners", [False, True])
def test_components_are_scipys_labels(corners: bool) -> None:
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import components

    # sparse enough for many pieces either way
    mask = np.random.default_rng(5).random((23, 31, 19)) < (0.1 if corners else 0.3)
    ours, count = components(mask, corners=corners)
    structure = np.ones((3, 3, 3), bool) if corners else None
    reference, expected = ndimage.label(mask, structure=structure)
    assert count == expected > 10
    assert np.array_equal(ours, reference)


@pytest.mark.parametrize("shape", [(3, 3, 3), (5, 3, 5), (7, 5, 5)])
def test_closing_in_slabs_is_scipys_closing_of_the_whole(shape: tuple[int, int, int]) -> None:
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import closing

    # enough slices for several slabs, pieces that a closing joins across slab cuts
    mask = np.random.default_rng(2).random((61, 30, 33)) < 0.3
    structure = np.ones(shape, bool)
    expected = ndimage.binary_closing(mask, structure=structure, border_value=0)
    assert np.array_equal(closing(mask, structure), expected)


def test_erosion_in_slabs_is_scipys_erosion_of_the_whole() -> None:
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import ball, in_slabs

    # blobs thick enough to survive the erosion in places
    seeds = np.random.default_rng(6).random((61, 30, 33)) < 0.03
    mask = ndimage.binary_dilation(seeds, iterations=4)
    structure = ball(3.0, np.array([0.8, 0.7, 0.7]))
    for border in (0, 1):
        expected = ndimage.binary_erosion(mask, structure=structure, border_value=border)
        ours = in_slabs(
            lambda part, b=border: ndimage.binary_erosion(
                part, structure=structure, border_value=b
            ),
            mask,
            structure.shape[0] // 2,
        )
        assert expected.any()
        assert np.array_equal(ours, expected), border


def test_enclosed_is_what_filling_holes_adds() -> None:
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import enclosed

    mask = np.random.default_rng(4).random((25, 30, 20)) < 0.4
    expected = ndimage.binary_fill_holes(mask) & ~mask
    assert expected.any()
    assert np.array_equal(enclosed(mask), expected)


def test_ball_erosion_is_a_thresholded_distance_transform() -> None:
    from scipy import ndimage

    from bmbx_plan.anatomy._grid import ball

    rng = np.random.default_rng(4)
    mask = ndimage.binary_dilation(rng.random((20, 24, 28)) < 0.05, iterations=3)
    spacing = np.array([0.8, 0.7, 1.1])
    for radius in (1.5, 3.0):
        truth = ndimage.distance_transform_edt(mask, sampling=spacing) > radius
        eroded = ndimage.binary_erosion(mask, structure=ball(radius, spacing), border_value=1)
        assert np.array_equal(eroded, truth), radius


def test_work_grid_blocks_and_carrying_labels_back() -> None:
    from bmbx_plan.anatomy._grid import WorkGrid, to_full_resolution

    # Anisotropic, flipped, off-origin grid: a slip of axis or sign fails.
    direction = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ct = Volume.from_components(
        np.zeros((21, 30, 26), np.int16),
        spacing_mm=(0.8, 0.7, 0.75),
        origin_lps_mm=(10.0, -5.0, 30.0),
        direction=direction,
    )
    work = WorkGrid.of(ct)
    assert work.step == (2, 2, 2)
    assert work.coarse.shape == (11, 15, 13)
    # A block's voxel centre is the mean of its CT voxel centres.
    block = np.array([[3, 4, 5]])
    voxels = np.argwhere(np.ones(work.step, bool)) + block * np.array(work.step)
    assert np.allclose(work.coarse.index_to_lps(block)[0], ct.index_to_lps(voxels).mean(axis=0))
    # Two bones touching along a plane that cuts through blocks: the carried-back cut
    # is on the CT grid, at the thin cleft between them.
    bone = np.zeros(ct.shape, bool)
    bone[2:19, 3:27, 3:23] = True
    clefts = np.zeros(ct.shape, bool)
    clefts[:, :, 13] = True  # off the block boundaries (blocks end at odd i)
    clefts &= bone
    truth = np.where(np.arange(ct.shape[2]) < 13, 1, 2)[None, None, :] * bone
    coarse = np.zeros(work.coarse.shape, np.uint8)
    pooled = work.pool(bone, min_fraction=0.5)
    coarse[pooled] = 1
    coarse[:, :, 6:] *= 2  # the coarse cut is a voxel off the real one
    labels = to_full_resolution(work, coarse, bone, lambda box: clefts[box])
    wrong = (labels != truth) & bone & ~clefts
    assert not wrong.any()
    assert not labels[~bone].any()


def test_cortical_band_holds_the_shell_and_dense_bone_at_any_depth() -> None:
    from bmbx_plan.anatomy.bone import cortical_band

    hu = np.full((30, 32, 34), 80, np.int16)  # marrow
    hu[15, :, :] = 1000  # a dense sheet deep inside: two tables meeting
    hu[3:9, 10:12, 10:12] = 500  # moderately dense: cortex only near the surface
    bone = np.zeros(hu.shape, bool)
    bone[2:28, 2:30, 2:32] = True
    ct = Volume.from_components(hu, spacing_mm=(1.0, 1.0, 1.0))
    band = cortical_band(bone, ct)
    assert band[2, 10, 10]
    assert band[27, 20, 20]
    assert band[15, 16, 16]  # the deep dense sheet, 13 mm inside
    assert band[4, 10, 10]  # 500 HU, 3 mm from the background: cortex
    assert not band[8, 10, 10]  # 500 HU, 7 mm from it: marrow
    assert not band[10, 16, 16]  # marrow
    assert not band[0, 0, 0]  # outside the bone


def _rim_reference(bone: np.ndarray, hu: np.ndarray, threshold: float) -> np.ndarray:
    """partial_volume_rim voxel by voxel: an outer voxel of the dense shell is in the rim
    when its HU is below half-way between the densest bone among its 26 neighbours and
    the mean soft tissue (below the threshold, not bone) within two voxels."""
    out = np.zeros_like(bone)
    shape = np.array(bone.shape)
    for voxel in np.argwhere(bone):
        if hu[tuple(voxel)] < threshold:
            continue
        outer = False
        for axis in range(3):
            for step in (-1, 1):
                n = voxel.copy()
                n[axis] += step
                if (n >= 0).all() and (n < shape).all() and not bone[tuple(n)]:
                    outer = True
        if not outer:
            continue
        peak, soft = -np.inf, []
        for offset in np.ndindex(5, 5, 5):
            n = voxel + np.array(offset) - 2
            if (n < 0).any() or (n >= shape).any():
                continue  # beyond the scan's edge
            value = float(hu[tuple(n)])
            if bone[tuple(n)] and max(abs(o - 2) for o in offset) <= 1:
                peak = max(peak, value)
            if not bone[tuple(n)] and value < threshold:
                soft.append(value)
        out[tuple(voxel)] = bool(soft) and hu[tuple(voxel)] < 0.5 * (peak + np.mean(soft))
    return out


def test_partial_volume_rim_matches_a_voxel_by_voxel_reference() -> None:
    from bmbx_plan.anatomy.bone import partial_volume_rim

    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[:18, :20, :22]
    r = np.sqrt((z - 9.0) ** 2 + ((y - 10.0) / 1.2) ** 2 + ((x - 11.0) / 0.9) ** 2)
    hu = np.where(r < 7, 60.0, 30.0) + np.where(np.abs(r - 6.5) < 1.2, 900.0, 0.0)
    hu = ndimage.gaussian_filter(hu, (1.5, 0.6, 0.6)) + rng.normal(0, 20, hu.shape)
    hu[:, :3, :] = 0.0  # bone-only data: a flat background, as PENGWIN's
    bone = ndimage.binary_fill_holes(hu >= 130)
    bone[0] |= hu[0] >= 130  # bone at the scan's edge
    ct = Volume.from_components(hu.astype(np.float32), spacing_mm=(2.5, 1.0, 1.0))
    rim = partial_volume_rim(bone, ct, threshold_hu=130.0)
    expected = _rim_reference(bone, hu.astype(np.float32), 130.0)
    assert expected.sum() > 50  # the blurred rim is there to be found
    assert (rim == expected).all()


def test_the_rim_lies_outside_the_half_way_value_of_a_blurred_edge() -> None:
    from bmbx_plan.anatomy.bone import partial_volume_rim

    # a slab of cortex (1000 HU) on marrow (20 HU), soft tissue (40 HU) beyond; along i
    profile = [40, 40, 40, 200, 450, 600, 1000, 1000, 20, 20, 20, 20]
    hu = np.tile(np.array(profile, np.float32), (6, 6, 1))
    bone = np.zeros(hu.shape, bool)
    bone[:, :, 3:] = True  # the shell at 130 HU and its filled-in marrow
    ct = Volume.from_components(hu, spacing_mm=(1.0, 1.0, 1.0))
    rim = partial_volume_rim(bone, ct, threshold_hu=130.0)
    # half-way between 1000 (peak within one voxel) and 40: 520; only the outer layer
    assert rim[:, :, 3].all()  # 200 HU
    assert not rim[:, :, 4].any()  # 450 HU, but not outermost
    assert rim.sum() == 36
    assert not rim[:, :, 8:].any()  # marrow below the threshold is never the rim


def test_hip_bones_on_thick_slices_match_the_truth() -> None:
    # 2.5 mm thick slices lift soft tissue beside oblique cortex above the shell
    # threshold; at the blur's half-way value the hip bones keep their true size (a fixed
    # threshold: volume 1.086 and 1.096 of the truth, Dice 0.943 and 0.939)
    ph = make_phantom(seed=1011, position="HFS", preset="asymmetric", slice_thickness_mm=2.5)
    anatomy = segment_pelvis(ph.ct)
    for side in ("left", "right"):
        truth = np.isin(ph.labels.array, ilium_labels(side))
        segmented = anatomy.ilium(side)
        assert 0.97 <= segmented.sum() / truth.sum() <= 1.03, side
        assert _dice(segmented, truth) >= 0.95, side


def test_thin_oblique_cortex_connected_only_across_edges_is_kept() -> None:
    from bmbx_plan.anatomy.bone import segment_bone

    hu = np.full((40, 40, 40), 40, np.int16)
    k, j, i = np.indices(hu.shape)
    plate = (j + i == 40) & (k > 2) & (k < 37)  # one voxel thick, 45 deg to the axes
    hu[plate] = 1000
    ct = Volume.from_components(hu, spacing_mm=(2.0, 2.0, 2.0))
    # face-connected, the plate falls into lines along k of 34 voxels (0.27 mL each),
    # each below the smallest piece of bone kept
    bone = segment_bone(ct)
    assert bone[plate].all()


def test_bone_touching_one_bone_by_an_edge_or_a_corner_joins_it() -> None:
    from bmbx_plan.anatomy.pelvis import PelvisBones
    from bmbx_plan.anatomy.segment import _with_loose_bone

    shape = (12, 12, 20)
    empty = np.zeros(shape, bool)
    hip, sacrum = empty.copy(), empty.copy()
    hip[2:8, 2:8, 2:8] = True
    sacrum[2:8, 2:8, 12:18] = True
    bone = hip | sacrum
    spike = empty.copy()  # meets the hip bone at an edge only, then runs on
    spike[8, 8, 4:7] = True
    spike[9, 9, 4:7] = True
    corner = empty.copy()  # meets the sacrum at a corner only
    corner[8, 8, 18] = True
    bridge = empty.copy()  # a rod between the two, touching both by faces
    bridge[4, 4, 8:12] = True
    apart = empty.copy()  # touches nothing
    apart[10:12, 0:2, 9:11] = True
    bone |= spike | corner | bridge | apart
    split = PelvisBones(hip, empty, sacrum, empty, empty, empty, 0.0, ())
    out = _with_loose_bone(split, bone)
    assert np.array_equal(out.ilium_left, hip | spike | (bridge & (np.indices(shape)[2] < 10)))
    assert np.array_equal(out.sacrum, sacrum | corner | (bridge & (np.indices(shape)[2] >= 10)))
    assert not (out.ilium_left | out.sacrum)[apart].any()
    assert not out.ilium_right.any()


def test_a_thinned_posterior_spine_stays_in_its_hip_bone() -> None:
    # Cohort phantom 1065 (thin_wing_left, HFS): the thinned left wing's posterior spine
    # meets the rest of the bone only along voxel edges on the 2 x 2 x 2.5 mm grid. It was
    # left out of the hip bone, and the PSIS, snapped onto the nearest hip voxel, landed
    # 5.4 mm from the truth (the fitted model's vertex was 4.8 mm off).
    ph = make_phantom(seed=1065, position="HFS", preset="thin_wing_left")
    anatomy = segment_pelvis(ph.ct)
    truth = np.asarray(ph.truth["landmarks"]["psis_left"])
    tip = tuple(np.rint(ph.ct.lps_to_index(truth[None])[0]).astype(int))
    assert anatomy.ilium("left")[tip]
    assert np.linalg.norm(anatomy.landmarks_lps_mm["psis_left"] - truth) < 5.0
