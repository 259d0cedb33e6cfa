"""Phantoms: determinism, patient positions, truth consistency, habitus and density."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bmbx_phantoms import LANDMARK_NAMES, TRUTH_LABELS, make_phantom, write_phantom
from bmbx_phantoms.atlas import PelvisShape
from bmbx_phantoms.atlas import landmarks as atlas_landmarks
from bmbx_phantoms.labels import ilium_labels
from bmbx_phantoms.pose import thin_posterior_wing
from bmbx_plan import load_ct
from bmbx_plan.anatomy.shape_model import default_shape_model
from bmbx_plan.resample import resample_to

# Small phantoms keep the suite fast; the anatomy is the same at any voxel size.
SMALL = {"pixel_spacing_mm": 3.0, "slice_spacing_mm": 3.5}
BONE_NAMES = (
    "ilium_left_cortex",
    "ilium_left_marrow",
    "ilium_right_cortex",
    "ilium_right_marrow",
    "sacrum",
    "lumbar_spine",
    "si_joint_left",
    "si_joint_right",
    "femur_left",
    "femur_right",
)


def _written(tmp_path_factory: pytest.TempPathFactory, seed: int, position: str) -> Path:
    out = tmp_path_factory.mktemp(f"ph{seed}{position}") / "out"
    write_phantom(make_phantom(seed=seed, position=position, **SMALL), out)
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One seed written in all four positions."""
    return {pos: _written(tmp_path_factory, 11, pos) for pos in ("HFP", "FFP", "HFS", "FFS")}


def test_same_seed_same_phantom_and_other_seed_differs() -> None:
    a = make_phantom(seed=5, **SMALL)
    b = make_phantom(seed=5, **SMALL)
    c = make_phantom(seed=6, **SMALL)
    assert np.array_equal(a.ct.array, b.ct.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.truth == b.truth
    assert a.ct.shape != c.ct.shape or not np.array_equal(a.ct.array, c.ct.array)


@pytest.mark.parametrize(("head_first", "feet_first"), [("HFP", "FFP"), ("HFS", "FFS")])
def test_head_first_and_feet_first_load_to_the_same_lps_image(
    series: dict[str, Path], head_first: str, feet_first: str
) -> None:
    hf = load_ct(series[head_first] / "dicom")
    ff = load_ct(series[feet_first] / "dicom")
    assert hf.info.patient_position == head_first
    assert ff.info.patient_position == feet_first
    # The stored arrays differ (slice order and in-plane flips) ...
    assert not np.allclose(hf.affine_lps, ff.affine_lps)
    # ... but in patient space they are the same image: 0 HU difference everywhere.
    on_hf = resample_to(ff, hf, order=0, fill_value=-9999)
    assert np.array_equal(on_hf.array, hf.array)


def test_prone_and_supine_differ_only_by_table_and_bowel(series: dict[str, Path]) -> None:
    prone = load_ct(series["HFP"] / "dicom")
    supine = resample_to(load_ct(series["HFS"] / "dicom"), prone, order=0)
    labels_p = resample_to(load_ct(series["HFP"] / "truth_labels.nii.gz"), prone, order=0).array
    labels_s = resample_to(load_ct(series["HFS"] / "truth_labels.nii.gz"), prone, order=0).array
    bone = np.isin(labels_p, [TRUTH_LABELS[n] for n in BONE_NAMES])
    assert np.array_equal(np.isin(labels_s, [TRUTH_LABELS[n] for n in BONE_NAMES]), bone)
    assert np.array_equal(prone.array[bone], supine.array[bone])
    changed = prone.array != supine.array
    assert changed.any()
    scene = np.isin(labels_p, [TRUTH_LABELS[n] for n in ("table", "bowel", "bowel_gas")])
    scene |= np.isin(labels_s, [TRUTH_LABELS[n] for n in ("table", "bowel", "bowel_gas")])
    # The scanner blur spreads a change by at most its kernel radius (one voxel here).
    assert not (changed & ~ndimage.binary_dilation(scene, iterations=2)).any()


def test_table_lies_under_the_patient(series: dict[str, Path]) -> None:
    for position, anterior in (("HFP", True), ("HFS", False)):
        labels = load_ct(series[position] / "truth_labels.nii.gz")
        idx = np.argwhere(labels.array == TRUTH_LABELS["table"])
        table_y = labels.index_to_lps(idx)[:, 1]
        body = np.argwhere(np.isin(labels.array, [TRUTH_LABELS["skin"]]))
        body_y = labels.index_to_lps(body)[:, 1]
        if anterior:  # prone: the table is anterior (smaller y) of all skin
            assert table_y.max() < body_y.min()
        else:
            assert table_y.min() > body_y.max()


@pytest.mark.parametrize("position", ["HFP", "FFP", "HFS", "FFS"])
def test_landmarks_land_on_their_ilium_in_every_position(
    series: dict[str, Path], position: str
) -> None:
    labels = load_ct(series[position] / "truth_labels.nii.gz")
    truth = json.loads((series[position] / "truth.json").read_text())
    assert truth["position"] == position
    for name in LANDMARK_NAMES:
        side = "left" if name.endswith("left") else "right"
        index = np.rint(labels.lps_to_index([truth["landmarks"][name]])[0]).astype(int)
        assert labels.array[tuple(index)] in ilium_labels(side), name


def test_left_is_left_and_landmarks_are_anatomical() -> None:
    ph = make_phantom(seed=2, **SMALL)
    lm = ph.landmark
    assert lm("psis_left")[0] > lm("psis_right")[0]
    for side in ("left", "right"):
        assert lm(f"psis_{side}")[1] > lm(f"asis_{side}")[1] + 60  # PSIS far posterior
        assert lm(f"sciatic_notch_apex_{side}")[2] < lm(f"psis_{side}")[2]  # notch caudal
    left = np.argwhere(np.isin(ph.labels.array, ilium_labels("left")))
    right = np.argwhere(np.isin(ph.labels.array, ilium_labels("right")))
    assert ph.labels.index_to_lps(left)[:, 0].mean() > ph.labels.index_to_lps(right)[:, 0].mean()


def _label_hu(ph: object, name: str) -> np.ndarray:
    return ph.ct.array[ph.labels.array == TRUTH_LABELS[name]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [
        ("osteoporotic", -60.0, 110.0),
        ("average", 100.0, 280.0),
        ("sclerotic", 280.0, 420.0),
    ],
)
def test_marrow_density_follows_the_preset(preset: str, low: float, high: float) -> None:
    ph = make_phantom(seed=4, preset=preset, pixel_spacing_mm=1.5, slice_spacing_mm=2.0)
    # Deep marrow only: partial volume with the cortex raises HU near the shell.
    marrow = ph.labels.array == TRUTH_LABELS["ilium_left_marrow"]
    deep = ndimage.binary_erosion(marrow, iterations=2)
    assert low <= float(np.median(ph.ct.array[deep])) <= high
    fat = np.median(_label_hu(ph, "subcutaneous_fat"))
    assert -130 <= fat <= -70


def test_cortex_is_a_dense_thin_shell() -> None:
    ph = make_phantom(seed=4, pixel_spacing_mm=1.0, slice_spacing_mm=1.25, jitter=False)
    cortex_hu = _label_hu(ph, "ilium_right_cortex")
    # Blur by the 1 mm system resolution pulls a 1.5 mm shell toward its neighbours, so
    # the cortex median sits below the nominal 950 HU but far above marrow.
    assert 550 <= float(np.median(cortex_hu)) <= 1100
    cortex = ph.labels.array == TRUTH_LABELS["ilium_right_cortex"]
    marrow = ph.labels.array == TRUTH_LABELS["ilium_right_marrow"]
    # The shell encloses the marrow: no marrow voxel touches the outside of the bone.
    bone = cortex | marrow
    assert not (marrow & ~ndimage.binary_erosion(bone)).any()


@pytest.mark.parametrize(("preset", "low", "high"), [("thin", 15, 32), ("obese", 95, 135)])
def test_habitus_sets_skin_to_psis_depth(preset: str, low: float, high: float) -> None:
    ph = make_phantom(seed=8, preset=preset, **SMALL)
    labels = ph.labels
    body = np.isin(labels.array, [v for n, v in TRUTH_LABELS.items() if n != "table"])
    for side in ("left", "right"):
        psis = ph.landmark(f"psis_{side}")
        # Walk straight posterior from the PSIS until the body ends.
        ray = psis + np.arange(0.0, 200.0, 0.5)[:, None] * np.array([0.0, 1.0, 0.0])
        ray = ray[labels.contains_lps(ray)]
        idx = np.rint(labels.lps_to_index(ray)).astype(int)
        inside = np.append(body[idx[:, 0], idx[:, 1], idx[:, 2]], False)
        depth = 0.5 * int(np.argmin(inside))
        assert low <= depth <= high, (side, depth)
        assert abs(depth - ph.truth["skin_to_psis_mm"][side]) <= 3.0  # one voxel


def _wing_thickness_mm(ph: object, side: str) -> float:
    """Largest thickness of the ilium within 40 mm of the PSIS (twice the inscribed radius)."""
    labels = ph.labels  # type: ignore[attr-defined]
    psis = ph.landmark(f"psis_{side}")  # type: ignore[attr-defined]
    lo, hi = np.sort(labels.lps_to_index([psis - 45.0, psis + 45.0]), axis=0)
    box = tuple(slice(max(int(a), 0), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    bone = np.isin(labels.array[box], ilium_labels(side))
    depth = ndimage.distance_transform_edt(bone, sampling=labels.spacing_mm)
    pts = labels.index_to_lps(np.argwhere(bone) + [s.start for s in box])
    near = np.linalg.norm(pts - psis, axis=1) < 40.0
    return 2.0 * float(depth[bone][near].max())


def test_thin_wing_preset_thins_one_side_only() -> None:
    grid = {"pixel_spacing_mm": 1.5, "slice_spacing_mm": 1.5, "jitter": False}
    normal = make_phantom(seed=3, **grid)
    thin = make_phantom(seed=3, preset="thin_wing_left", **grid)
    assert _wing_thickness_mm(thin, "left") < 0.6 * _wing_thickness_mm(normal, "left")
    assert _wing_thickness_mm(thin, "right") == pytest.approx(
        _wing_thickness_mm(normal, "right"), abs=1e-9
    )  # the right side is untouched


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_thinning_moves_the_tables_toward_each_other_and_keeps_the_notch(seed: int) -> None:
    """A wing thinned to a fifth: its tables move at most the way to the mid-surface of a
    wing 30 mm thick, no vertex jumps across the bone (an edge vertex looking along the
    wing meets the far edge up to 150 mm away), and the sciatic notch apex, the ASIS and
    the ischial spine stay within a millimetre of where they were."""
    model = default_shape_model()
    coefficients = np.clip(np.random.default_rng(seed).standard_normal(model.n_modes), -2, 2)
    shape = PelvisShape(*model.shape(coefficients))
    marks = atlas_landmarks(shape)
    hip = shape.right_hip
    thinned = thin_posterior_wing(
        hip,
        marks["psis_right"],
        0.2,
        sacrum=shape.sacrum,
        notch_lps_mm=marks["sciatic_notch_apex_right"],
    )
    moved = np.linalg.norm(thinned.vertices_lps_mm - hip.vertices_lps_mm, axis=1)
    assert moved.max() <= 0.8 * 30.0 + 1e-9
    assert np.count_nonzero(moved > 1.0) > 500  # the wing is thinned
    for name in ("sciatic_notch_apex", "asis", "ischial_spine"):
        vertex = np.argmin(np.linalg.norm(hip.vertices_lps_mm - marks[f"{name}_right"], axis=1))
        assert moved[vertex] < 1.0, name


def test_truth_names_and_required_labels(series: dict[str, Path]) -> None:
    names = json.loads((series["HFP"] / "truth_labels.json").read_text())
    required = {
        "body",
        "table",
        "ilium_left_cortex",
        "ilium_left_marrow",
        "ilium_right_cortex",
        "ilium_right_marrow",
        "sacrum",
        "si_joint_left",
        "si_joint_right",
        "lumbar_spine",
        "bowel",
        "iliac_vessels",
    }
    assert required <= set(names)
    labels = load_ct(series["HFP"] / "truth_labels.nii.gz")
    present = set(np.unique(labels.array).tolist())
    assert {names[n] for n in required} <= present  # every structure is really there
    truth = json.loads((series["HFP"] / "truth.json").read_text())
    assert {"seed", "position", "preset", "parameters", "landmarks"} <= set(truth)
    assert set(LANDMARK_NAMES) <= set(truth["landmarks"])


def test_clinical_resolution_phantom_is_producible(tmp_path: Path) -> None:
    """0.8 mm pixels and 1.5 mm slices, written as DICOM and read back."""
    ph = make_phantom(seed=12, position="FFP", pixel_spacing_mm=0.8, slice_spacing_mm=1.5)
    assert np.allclose(ph.ct.spacing_mm, [1.5, 0.8, 0.8])
    assert min(ph.ct.shape[1:]) >= 300  # a full pelvic field of view at 0.8 mm
    write_phantom(ph, tmp_path / "p")
    loaded = load_ct(tmp_path / "p" / "dicom")
    assert loaded.info.patient_position == "FFP"
    assert np.allclose(loaded.spacing_mm, [1.5, 0.8, 0.8])
    assert np.array_equal(resample_to(loaded, ph.ct, order=0).array, ph.ct.array)


def test_bones_are_solid_with_their_creases_closed_and_their_openings_kept() -> None:
    from bmbx_phantoms.bones import _solid

    spacing = np.array([1.25, 1.0, 1.0])
    block = np.zeros((20, 30, 30), bool)
    block[3:17, 4:26, 4:26] = True
    bone = block.copy()
    bone[10, 15, 15] = False  # an enclosed pocket of one voxel
    bone[6:14, 4:15, 8] = False  # a slit one voxel wide, open to the surface
    bone[3:17, 18:22, 18:22] = False  # a canal 4 mm wide, through the bone
    solid = _solid(bone, spacing)
    expected = block.copy()
    expected[3:17, 18:22, 18:22] = False  # the canal stays open
    np.testing.assert_array_equal(solid, expected)


def test_phantom_hip_bones_have_no_pockets_or_slits_inside() -> None:
    # A thinned wing folds its mesh: the voxelised bone must still be solid, or its
    # "truth" would hold soft tissue inside the marrow that no CT shows.
    ph = make_phantom(
        seed=1003, preset="narrow_corridor", pixel_spacing_mm=1.0, slice_spacing_mm=1.25
    )
    labels = np.asarray(ph.labels.array)
    for side in ("left", "right"):
        ilium = np.isin(labels, ilium_labels(side))
        assert np.array_equal(ndimage.binary_fill_holes(ilium), ilium), side


@pytest.mark.parametrize(("thickness", "step"), [(5.0, 1.0), (2.5, 1.25), (3.0, 0.8), (1.0, 1.0)])
def test_the_slice_profile_weights_each_scene_slice_by_its_overlap(
    thickness: float, step: float
) -> None:
    """Against a slow reference: the share of a finely sampled slice of the given
    thickness that falls in each scene slice's slab."""
    from bmbx_phantoms.phantom import _slice_profile

    weights = _slice_profile(thickness, step)
    reach = (len(weights) - 1) // 2
    z = np.linspace(-thickness / 2, thickness / 2, 200_001)  # within the slice
    owner = np.rint(z / step).astype(int)  # the scene slice whose slab holds z
    reference = np.array([np.mean(owner == k) for k in range(-reach, reach + 1)])
    assert reference[0] > 0  # no empty ends
    assert reference[-1] > 0
    np.testing.assert_allclose(weights, reference, atol=1e-4)  # sampling of z


def test_a_thick_slice_averages_the_scene_over_its_thickness() -> None:
    """5 mm slices of 5 mm thickness: the same scan grid and truth geometry as thin 5 mm
    slices, but bone surfaces crossing the slices are spread over them (partial volume)
    instead of being sampled at the slice centre."""
    common = {"seed": 3, "pixel_spacing_mm": 2.0, "slice_spacing_mm": 5.0, "noise_hu": 0.0}
    thin = make_phantom(**common)
    thick = make_phantom(**common, slice_thickness_mm=5.0)
    assert thick.ct.shape == thin.ct.shape
    np.testing.assert_allclose(thick.ct.affine_lps, thin.ct.affine_lps)
    for name in LANDMARK_NAMES:  # the same bones, labelled on another scene grid
        assert np.linalg.norm(thick.landmark(name) - thin.landmark(name)) <= 5.0, name
    assert thick.truth["parameters"]["slice_thickness_mm"] == 5.0

    def partial_volume_share(ph: object) -> float:
        """Share of the voxels near the hip bones with HU between marrow and cortex."""
        labels = ph.labels.array  # type: ignore[attr-defined]
        hip = np.isin(labels, [TRUTH_LABELS[n] for n in BONE_NAMES[:4]])
        near = ndimage.binary_dilation(hip, iterations=2)
        hu = np.asarray(ph.ct.array)[near]  # type: ignore[attr-defined]
        return float(np.mean((hu > 350) & (hu < 650)))

    assert partial_volume_share(thick) > 10 * partial_volume_share(thin)  # 0.13 vs 0.002


def test_oral_contrast_fills_the_bowel_below_its_gas_and_leaves_its_wall() -> None:
    plain = make_phantom(seed=3, jitter=False, noise_hu=0.0)
    enhanced = make_phantom(seed=3, jitter=False, noise_hu=0.0, bowel_hu=600.0)
    assert np.array_equal(plain.labels.array, enhanced.labels.array)
    labels = np.asarray(plain.labels.array)
    bowel = labels == TRUTH_LABELS["bowel"]
    before, after = np.asarray(plain.ct.array), np.asarray(enhanced.ct.array)
    changed = after != before
    # only the bowel and the blur around it change
    assert not (changed & ~ndimage.binary_dilation(bowel, iterations=3)).any()
    # the fluid takes the contrast; the wall, 3 mm, stays soft tissue
    assert np.median(after[bowel]) > 500.0
    assert (bowel & (after < 100)).sum() > 0.1 * bowel.sum()
    # the gas stays gas
    gas = labels == TRUTH_LABELS["bowel_gas"]
    assert np.median(after[gas]) < -900.0
