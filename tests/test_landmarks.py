"""Pelvic landmarks by shape-model fitting (bmbx_plan.anatomy.landmarks).

Phantom truth masks are fitted in every patient position (the label volume re-stored in
the scanner's order for that position), for several presets and seeds; landmarks must
land within 5 mm of the phantom's truth. Real data: an atlas pelvis outside the model's
span and three PENGWIN CT segmentations (one stored RAS-flipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from bmbx_phantoms import TRUTH_LABELS, make_phantom
from bmbx_phantoms.dicom_writer import scanner_orientation
from bmbx_plan.anatomy.landmarks import (
    LANDMARK_NAMES,
    ShapeFit,
    atlas_landmarks,
    fit_shape_model,
    mask_surface_points,
    pelvis_landmarks,
    si_joint_points,
)
from bmbx_plan.anatomy.shape_model import default_shape_model
from bmbx_plan.volume import Volume

SHARED = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
ATLAS_CASE = SHARED / "atlas" / "pelvis_surfaces" / "03"
PENGWIN = SHARED / "real" / "pengwin_bone_only"

#: Landmarks the planner relies on; each must be within 5 mm of the phantom truth.
CHECKED = ("psis", "asis", "sciatic_notch_apex")
TOLERANCE_MM = 5.0
SPACING = {"pixel_spacing_mm": 2.0, "slice_spacing_mm": 2.5}

#: (seed, position, preset): every position twice, every pose/shape preset.
CASES = [
    (1, "HFP", "average"),
    (2, "HFS", "rotated"),
    (3, "FFP", "asymmetric"),
    (4, "FFS", "obese"),
    (6, "HFS", "average"),
    (7, "FFP", "rotated"),
    (8, "FFS", "asymmetric"),
    (9, "HFP", "rotated"),
]

Masks = tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]


def truth_masks(labels: Volume) -> Masks:
    """Left ilium (cortex | marrow), right ilium and sacrum of a phantom label volume."""
    a = labels.array
    left = np.isin(a, [TRUTH_LABELS["ilium_left_cortex"], TRUTH_LABELS["ilium_left_marrow"]])
    right = np.isin(a, [TRUTH_LABELS["ilium_right_cortex"], TRUTH_LABELS["ilium_right_marrow"]])
    return left, right, a == TRUTH_LABELS["sacrum"]


def scanner_labels(phantom: Any) -> Volume:
    """The truth labels stored in the array order a scanner uses for the position."""
    labels: Volume = phantom.labels
    return labels.reoriented(scanner_orientation(phantom.position))


def errors_mm(found: dict[str, NDArray[np.float64]], truth: dict[str, Any]) -> dict[str, float]:
    """Distance (mm) between found and true landmarks, for the checked ones."""
    return {
        f"{name}_{side}": float(
            np.linalg.norm(found[f"{name}_{side}"] - np.asarray(truth[f"{name}_{side}"]))
        )
        for name in CHECKED
        for side in ("left", "right")
    }


def error_table(rows: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per case, then mean and max per landmark."""
    names = list(next(iter(rows.values())))
    head = f"{'case':26s}" + "".join(
        f"{n.replace('sciatic_notch_apex', 'notch'):>12s}" for n in names
    )
    lines = [head]
    for case, row in rows.items():
        lines.append(f"{case:26s}" + "".join(f"{row[n]:12.1f}" for n in names))
    values = np.array([[row[n] for n in names] for row in rows.values()])
    lines.append(f"{'mean':26s}" + "".join(f"{v:12.2f}" for v in values.mean(axis=0)))
    lines.append(f"{'max':26s}" + "".join(f"{v:12.2f}" for v in values.max(axis=0)))
    return "\n".join(lines)


def crop_along_z(volume: Volume, *, z_min: float = -np.inf, z_max: float = np.inf) -> Volume:
    """The slab of ``volume`` whose voxel centres have z in [z_min, z_max] (a scan cut)."""
    axis, _ = volume.axis_of(2)
    n = volume.shape[axis]
    index = np.zeros((n, 3))
    index[:, axis] = np.arange(n)
    z = volume.index_to_lps(index)[:, 2]
    keep = np.flatnonzero((z >= z_min) & (z <= z_max))
    slices = [slice(None)] * 3
    slices[axis] = slice(int(keep.min()), int(keep.max()) + 1)
    affine = volume.affine_lps.copy()
    affine[:3, 3] = volume.index_to_lps(index[keep.min()][np.newaxis])[0]
    return Volume(volume.array[tuple(slices)], affine)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_fits() -> dict[str, tuple[Any, Volume, Masks, ShapeFit]]:
    """Every phantom case fitted once: (phantom, scanner-order labels, masks, fit)."""
    out = {}
    for seed, position, preset in CASES:
        phantom = make_phantom(seed=seed, position=position, preset=preset, **SPACING)
        labels = scanner_labels(phantom)
        masks = truth_masks(labels)
        out[f"{seed} {position} {preset}"] = (
            phantom,
            labels,
            masks,
            fit_shape_model(*masks, labels),
        )
    return out


# ---------------------------------------------------------------------------- tests


def test_frozen_indices_match_the_shipped_model() -> None:
    frozen = atlas_landmarks()
    frozen.check_model(default_shape_model())
    assert set(frozen.points) == {f"{n}_{s}" for n in LANDMARK_NAMES for s in ("left", "right")}
    assert frozen.points["psis_left"][0] == 0
    assert frozen.points["psis_right"][0] == 1
    assert frozen.vertex_sets["si_joint_sacrum_left"][0] == 2
    assert all(len(indices) > 100 for _, indices in frozen.vertex_sets.values())


def test_surface_points_are_face_centres_and_skip_the_grid_edge() -> None:
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1:3, 1:4, 1:5] = True  # 2 x 3 x 4 box inside the grid
    grid = Volume.from_components(mask, spacing_mm=(2.0, 1.0, 1.0))
    points, touches = mask_surface_points(mask, grid)
    assert not touches
    assert len(points) == 2 * (2 * 3 + 2 * 4 + 3 * 4)  # one point per exposed face
    # Faces lie half a voxel outside the voxel centres: the box spans k 1..2 -> z 1..5 mm.
    assert points[:, 2].min() == pytest.approx(1.0)
    assert points[:, 2].max() == pytest.approx(5.0)
    # Cut by the grid's first slice: that face is the scan's edge, not bone surface.
    cut = np.zeros_like(mask)
    cut[0:3, 1:4, 1:5] = True
    points, touches = mask_surface_points(cut, grid)
    assert touches
    assert len(points) == 3 * 4 + 2 * (3 * 3 + 3 * 4)


def test_landmarks_within_5mm_in_every_position(
    model_fits: dict[str, tuple[Any, Volume, Masks, ShapeFit]],
) -> None:
    rows = {}
    for case, (phantom, labels, masks, fit) in model_fits.items():
        found = pelvis_landmarks(fit, masks=(masks[0], masks[1]), grid=labels)
        rows[case] = errors_mm(found, phantom.truth["landmarks"])
    print("\nlandmark error vs phantom truth (mm)\n" + error_table(rows))
    worst = {case: max(row.values()) for case, row in rows.items()}
    assert max(worst.values()) < TOLERANCE_MM, worst


def test_fits_are_tight_and_complete(
    model_fits: dict[str, tuple[Any, Volume, Masks, ShapeFit]],
) -> None:
    for case, (_, _, _, fit) in model_fits.items():
        assert fit.rms_mm < 1.5, (case, fit.rms_mm)
        assert fit.p95_mm < 3.0, (case, fit.p95_mm)
        assert not fit.partial, case
        assert fit.notes == (), (case, fit.notes)
        assert np.all(np.abs(fit.coefficients_sd) <= 3.0)
        assert fit.iterations < 80
        assert (
            fit.meshes[0].vertices_lps_mm[:, 0].mean() > fit.meshes[1].vertices_lps_mm[:, 0].mean()
        )


def test_storage_order_does_not_change_the_result() -> None:
    phantom = make_phantom(seed=12, position="FFS", preset="average", **SPACING)
    found = []
    for direction in (phantom.labels.direction, scanner_orientation("FFS")):
        labels = phantom.labels.reoriented(direction)
        masks = truth_masks(labels)
        found.append(pelvis_landmarks(fit_shape_model(*masks, labels)))
    for name in found[0]:
        assert np.linalg.norm(found[0][name] - found[1][name]) < 1.0, name


def test_narrow_corridor_asis_and_notch() -> None:
    phantom = make_phantom(seed=5, position="HFP", preset="narrow_corridor", **SPACING)
    labels = scanner_labels(phantom)
    masks = truth_masks(labels)
    found = pelvis_landmarks(fit_shape_model(*masks, labels), masks=(masks[0], masks[1]))
    errors = errors_mm(found, phantom.truth["landmarks"])
    print("\nnarrow_corridor seed 5 errors (mm):", {k: round(v, 1) for k, v in errors.items()})
    assert max(v for k, v in errors.items() if not k.startswith("psis")) < TOLERANCE_MM


@pytest.mark.parametrize("preset", ["narrow_corridor", "thin_wing_left"])
def test_psis_of_thinned_wings(preset: str) -> None:
    """Thinning a wing pulls the PSIS vertex ~16 mm into the bone; the truth PSIS is the
    thinned bone's posterior tip, and the fit finds it."""
    phantom = make_phantom(seed=5, position="HFP", preset=preset, **SPACING)
    labels = scanner_labels(phantom)
    masks = truth_masks(labels)
    found = pelvis_landmarks(fit_shape_model(*masks, labels), masks=(masks[0], masks[1]))
    errors = errors_mm(found, phantom.truth["landmarks"])
    assert max(errors["psis_left"], errors["psis_right"]) < TOLERANCE_MM


@pytest.mark.parametrize(
    ("seed", "position", "preset"),
    [
        (1120, "FFP", "thin_wing_left"),
        (1124, "FFS", "narrow_corridor"),
        (1003, "HFP", "narrow_corridor"),
    ],
)
def test_a_sacrum_seated_far_from_the_mean_is_found(seed: int, position: str, preset: str) -> None:
    """Cohort phantoms whose sacrum sits 15-20 mm higher or lower between the hips than
    the mean shape puts it (shape modes at 1.5-2 SD). Fitted from the mean, the pairs never
    saw the true seat: the sacrum stayed a segment away (median vertex error 18-20 mm). The
    sacrum is re-seated before the per-bone stage."""
    phantom = make_phantom(seed=seed, position=position, preset=preset, **SPACING)
    labels = scanner_labels(phantom)
    fit = fit_shape_model(*truth_masks(labels), labels)
    truth = phantom.shape.sacrum.vertices_lps_mm
    error = np.median(np.linalg.norm(fit.meshes[2].vertices_lps_mm - truth, axis=1))
    print(f"\n{seed} {preset} {position}: sacrum vertex error median {error:.2f} mm")
    # 1 mm: half a voxel; in-model shapes are recovered to a few tenths of a mm.
    assert error < 1.0


def test_the_seat_is_judged_by_the_bone_the_masks_share_with_the_fit() -> None:
    """On this rotated phantom's CT the first-pass right hip mask holds much bone that
    is not its own (the fitted right hip explains 20 mm RMS of it, trimmed). A re-seated
    sacrum then matched the masks' stray bone a little better, by the trimmed RMS, while
    the fit from the present seat followed the rest within a voxel; the fits are compared
    with capped distances, so the close fit wins."""
    from bmbx_plan import segment_pelvis

    phantom = make_phantom(seed=1139, position="HFP", preset="rotated", **SPACING)
    fit = segment_pelvis(phantom.ct).shape_fit
    for b, name in enumerate(("left_hip", "right_hip", "sacrum")):
        truth = getattr(phantom.shape, name).vertices_lps_mm
        error = np.median(np.linalg.norm(fit.meshes[b].vertices_lps_mm - truth, axis=1))
        print(f"\n{name}: vertex error median {error:.2f} mm")
        # 2 mm: one voxel of the CT the masks come from; the wrong seat is 5-19 mm off.
        assert error < 2.0, name


@pytest.mark.parametrize(
    ("seed", "position", "cut"),
    [(11, "HFS", "above_acetabulum"), (12, "FFP", "above_acetabulum"), (14, "FFS", "below_crest")],
)
def test_partial_coverage(seed: int, position: str, cut: str) -> None:
    phantom = make_phantom(seed=seed, position=position, preset="average", **SPACING)
    labels = scanner_labels(phantom)
    truth = phantom.truth["landmarks"]
    if cut == "above_acetabulum":
        heads = phantom.truth["femoral_heads"]
        head_z = np.mean([heads[s]["centre_lps_mm"][2] for s in ("left", "right")])
        labels = crop_along_z(labels, z_min=head_z + 30.0)  # the acetabular roof is gone
    else:
        crest = max(truth["psis_left"][2], truth["psis_right"][2])
        labels = crop_along_z(labels, z_max=crest - 15.0)  # the PSIS is outside the scan
    masks = truth_masks(labels)
    fit = fit_shape_model(*masks, labels)
    assert fit.partial
    assert any(note.startswith("partial fit") for note in fit.notes)
    assert np.all(fit.covered_fraction[:2] < 0.9)
    found = pelvis_landmarks(fit, masks=(masks[0], masks[1]))
    errors = errors_mm(found, truth)
    print(f"\npartial {cut} seed {seed}:", {k: round(v, 1) for k, v in errors.items()})
    assert max(errors["psis_left"], errors["psis_right"]) < TOLERANCE_MM


def test_si_joint_points_lie_between_hip_and_sacrum(
    model_fits: dict[str, tuple[Any, Volume, Masks, ShapeFit]],
) -> None:
    _, labels, masks, fit = next(iter(model_fits.values()))
    joints = si_joint_points(fit)
    assert set(joints) == {
        f"si_joint_{b}_{s}" for b in ("hip", "sacrum") for s in ("left", "right")
    }
    sacrum_surface, _ = mask_surface_points(masks[2], labels)
    for side, hip_mask in zip(("left", "right"), masks[:2], strict=True):
        hip_surface, _ = mask_surface_points(hip_mask, labels)
        for points, other in (
            (joints[f"si_joint_hip_{side}"], sacrum_surface),
            (joints[f"si_joint_sacrum_{side}"], hip_surface),
        ):
            gap = np.min(
                np.linalg.norm(points[:, np.newaxis] - other[np.newaxis, ::7], axis=-1), axis=1
            )
            assert np.median(gap) < 6.0, side
    assert joints["si_joint_hip_left"][:, 0].mean() > joints["si_joint_hip_right"][:, 0].mean()


def test_bad_input_is_refused() -> None:
    phantom = make_phantom(
        seed=1, position="HFP", preset="average", pixel_spacing_mm=3.0, slice_spacing_mm=3.0
    )
    left, right, sacrum = truth_masks(phantom.labels)
    with pytest.raises(ValueError, match="larger LPS x"):
        fit_shape_model(right, left, sacrum, phantom.labels)
    with pytest.raises(ValueError, match="shape"):
        fit_shape_model(left[:-1], right[:-1], sacrum[:-1], phantom.labels)
    with pytest.raises(ValueError, match="too few"):
        fit_shape_model(left, right, np.zeros_like(sacrum), phantom.labels)


# ------------------------------------------------------------------------ real data


@pytest.mark.realdata
def test_atlas_pelvis_outside_the_model() -> None:
    """A real atlas pelvis (not a model shape): PSIS gets a looser bound.

    The atlas's own vertex correspondence at the rounded PSIS tip varies by several mm
    between cases (the geometric PSIS rule and the frozen vertex differ by up to 15 mm on
    single cases), and 12 modes cannot reproduce it exactly.
    """
    if not ATLAS_CASE.is_dir():
        pytest.skip(f"atlas case {ATLAS_CASE} is absent")
    phantom = make_phantom(seed=3, position="FFP", anatomy=ATLAS_CASE, **SPACING)
    labels = scanner_labels(phantom)
    masks = truth_masks(labels)
    fit = fit_shape_model(*masks, labels)
    found = pelvis_landmarks(fit, masks=(masks[0], masks[1]))
    errors = errors_mm(found, phantom.truth["landmarks"])
    print(
        "\natlas 03:",
        f"rms {fit.rms_mm:.2f} p95 {fit.p95_mm:.2f} mm",
        {k: round(v, 1) for k, v in errors.items()},
    )
    assert fit.rms_mm < 2.0
    assert max(v for k, v in errors.items() if not k.startswith("psis")) < TOLERANCE_MM
    assert max(errors["psis_left"], errors["psis_right"]) < 8.0


@pytest.fixture(scope="module")
def pengwin_fits() -> dict[str, tuple[ShapeFit, dict[str, NDArray[np.float64]]]]:
    from bmbx_plan import load_ct

    if not PENGWIN.is_dir():
        pytest.skip(f"PENGWIN masks {PENGWIN} are absent")
    out = {}
    for case in ("001", "003", "005"):
        volumes = [
            load_ct(PENGWIN / case / f"{case}_{bone}_mask.nii.gz") for bone in ("LI", "RI", "SA")
        ]
        masks = [np.asarray(v.array) > 0 for v in volumes]
        fit = fit_shape_model(*masks, volumes[0])
        out[case] = (fit, pelvis_landmarks(fit, masks=(masks[0], masks[1])))
    return out


@pytest.mark.realdata
def test_pengwin_fit_residual(
    pengwin_fits: dict[str, tuple[ShapeFit, dict[str, NDArray[np.float64]]]],
) -> None:
    for case, (fit, _) in pengwin_fits.items():
        print(
            f"\nPENGWIN {case}: rms {fit.rms_mm:.2f} mm, p95 {fit.p95_mm:.2f} mm, "
            f"scale {fit.scale:.3f}, notes {fit.notes}"
        )
        assert fit.rms_mm < 3.0, case
        assert fit.p95_mm < 6.5, case
        assert fit.explained_fraction > 0.85, case
        assert not fit.partial, case


@pytest.mark.realdata
def test_pengwin_landmarks_are_anatomical(
    pengwin_fits: dict[str, tuple[ShapeFit, dict[str, NDArray[np.float64]]]],
) -> None:
    for case, (_, marks) in pengwin_fits.items():
        for name in LANDMARK_NAMES:
            assert marks[f"{name}_left"][0] > marks[f"{name}_right"][0], (case, name)
        for side in ("left", "right"):
            psis, asis = marks[f"psis_{side}"], marks[f"asis_{side}"]
            notch = marks[f"sciatic_notch_apex_{side}"]
            assert psis[1] - asis[1] > 80.0, (case, side)
            assert notch[2] < psis[2], (case, side)
