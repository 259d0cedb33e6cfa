"""Build a synthetic pelvic CT with exact ground truth around a real pelvis shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_phantoms.atlas import PelvisShape, landmarks, load_pelvis, transformed
from bmbx_phantoms.bones import BoneMasks, build_bones, s1_top
from bmbx_phantoms.femur import ProximalFemur, acetabulum, proximal_femur
from bmbx_phantoms.grid import SceneGrid
from bmbx_phantoms.labels import TRUTH_LABELS, ilium_labels
from bmbx_phantoms.parameters import PATIENT_POSITIONS, PhantomParameters, resolve_parameters
from bmbx_phantoms.pose import pose_shape
from bmbx_phantoms.soft_tissue import BodyOutline, body_outline, depth_below_skin, table_mask
from bmbx_phantoms.viscera import Viscera, build_viscera
from bmbx_plan.anatomy.shape_model import ShapeModel, default_shape_model
from bmbx_plan.volume import ScanInfo, Volume

__all__ = ["LANDMARK_NAMES", "Phantom", "make_phantom"]

#: Landmarks written to ``truth.json`` (snapped onto the bone label of their side).
LANDMARK_NAMES = (
    "psis_left",
    "psis_right",
    "asis_left",
    "asis_right",
    "sciatic_notch_apex_left",
    "sciatic_notch_apex_right",
)
# Room for the table and its pad on both sides of the body, so that prone and supine
# phantoms of one seed share one grid.
_TABLE_ROOM_MM = 50.0
_SCAN_ABOVE_CREST_MM = 45.0  # covers L4-L5 above the iliac crest
_SCAN_BELOW_HIP_MM = 10.0

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT with its truth.

    Attributes
    ----------
    ct : Volume
        HU (int16) on an LPS-aligned grid (k -> S, j -> P, i -> L).
    labels : Volume
        Exclusive truth labels (uint8) on the same grid; names in :attr:`label_names`.
    truth : dict
        JSON-ready landmarks (LPS mm), parameters, seed, position, preset, shape source.
    shape : PelvisShape
        The posed bone meshes the truth was voxelised from (LPS mm).
    """

    ct: Volume
    labels: Volume
    truth: dict[str, Any]
    shape: PelvisShape

    @property
    def label_names(self) -> dict[str, int]:
        """Label name -> value."""
        return dict(TRUTH_LABELS)

    @property
    def position(self) -> str:
        """Patient position (HFP, HFS, FFP or FFS)."""
        return str(self.truth["position"])

    def landmark(self, name: str) -> NDArray[np.float64]:
        """One landmark in LPS mm."""
        return np.asarray(self.truth["landmarks"][name], dtype=np.float64)


def _choose_shape(
    rng: np.random.Generator, params: PhantomParameters, model: ShapeModel
) -> tuple[PelvisShape, dict[str, Any]]:
    """A seed-dependent shape from the model, placed like a real scan would place it:
    the midline a little off x = 0 and a table position along z."""
    coeffs = np.clip(
        rng.standard_normal(model.n_modes), -params.shape_mode_limit_sd, params.shape_mode_limit_sd
    )
    shape = PelvisShape(*model.shape(coeffs))
    offset = np.array(
        [rng.uniform(-15.0, 15.0), rng.uniform(-20.0, 20.0), rng.uniform(-650, -150)]
    )
    shift = np.eye(4)
    shift[:3, 3] = offset
    shape = transformed(shape, shift)
    return shape, {
        "source": "shape_model",
        "coefficients_sd": [round(float(c), 4) for c in coeffs],
        "offset_lps_mm": [round(float(v), 3) for v in offset],
    }


def _snap_to_label(
    labels: NDArray[np.uint8], grid: SceneGrid, point: NDArray[np.float64], values: tuple[int, ...]
) -> NDArray[np.float64]:
    """The centre of the voxel nearest to ``point`` that carries one of ``values``."""
    reach = 8.0
    box = grid.box_slices(point - reach, point + reach)
    z, y, x = grid.coordinates(box)
    d2 = (x - point[0]) ** 2 + (y - point[1]) ** 2 + (z - point[2]) ** 2
    d2 = np.where(np.isin(labels[box], values), d2, np.inf)
    flat = int(np.argmin(d2))
    if not np.isfinite(d2.flat[flat]):
        raise RuntimeError(f"no bone voxel within {reach} mm of landmark {point}")
    k, j, i = np.unravel_index(flat, d2.shape)
    return np.array([x.flat[i], y.flat[j], z.flat[k]], dtype=np.float64)


def _front_of_spine(grid: SceneGrid, bones: BoneMasks) -> NDArray[np.float64]:
    """Per slice, the most anterior y (mm) of sacrum, vertebrae and discs, filled in
    between and beyond the slices that have none."""
    column = bones.sacrum | bones.spine_bone | bones.disc
    has = column.any(axis=(1, 2))
    front = np.full(grid.shape[0], np.nan)
    for k in np.nonzero(has)[0]:
        front[k] = grid.y_mm[np.nonzero(column[k].any(axis=1))[0].min()]
    ks = np.arange(grid.shape[0])
    return np.interp(ks, ks[has], front[has])


def _femurs(
    shape: PelvisShape, marks: dict[str, NDArray[np.float64]]
) -> tuple[tuple[ProximalFemur, ProximalFemur], dict[str, Any]]:
    """Left and right femurs in the acetabula of ``shape``, and their truth entry."""
    femurs = []
    truth: dict[str, Any] = {}
    for side in ("left", "right"):
        centre, radius = acetabulum(
            getattr(shape, f"{side}_hip"), aiis_lps_mm=marks[f"aiis_{side}"], side=side
        )
        femur = proximal_femur(centre, radius, side=side)
        femurs.append(femur)
        truth[side] = {
            "centre_lps_mm": [round(float(v), 3) for v in centre],
            "radius_mm": round(femur.head_radius_mm, 3),
            "acetabulum_radius_mm": round(radius, 3),
        }
    return (femurs[0], femurs[1]), truth


def _femur_outline_points(
    femurs: tuple[ProximalFemur, ...], z_min_mm: float
) -> NDArray[np.float64]:
    """Corners of the femurs' bounding boxes, the shaft cut at ``z_min_mm``: points the
    body outline must enclose (the greater trochanters are the widest bones)."""
    corners = []
    for femur in femurs:
        lo, hi = femur.bounds_lps_mm()
        lo[2] = max(lo[2], z_min_mm)
        corners += [
            np.array([x, y, z])
            for x in (lo[0], hi[0])
            for y in (lo[1], hi[1])
            for z in (lo[2], hi[2])
        ]
    return np.stack(corners)


def _smooth_field(
    rng: np.random.Generator, grid: SceneGrid, mask: NDArray[np.bool_], scale_mm: float
) -> NDArray[np.float32]:
    """A smooth random field of about unit standard deviation, correlated over
    ``scale_mm``, evaluated only at the voxels of ``mask`` (returns a full-size array,
    zero elsewhere).

    Random values on a coarse lattice with ``scale_mm`` spacing are interpolated with
    cubic splines at the wanted voxels only, so the cost follows the mask, not the grid.
    """
    spacing = grid.spacing_kji_mm
    extent_mm = np.asarray(grid.shape) * spacing
    coarse_shape = [int(np.ceil(e / scale_mm)) + 4 for e in extent_mm]
    coarse = ndimage.spline_filter(rng.standard_normal(coarse_shape), order=3)
    idx = np.nonzero(mask)
    coords = [i * s / scale_mm + 1.5 for i, s in zip(idx, spacing, strict=True)]
    values = ndimage.map_coordinates(coarse, coords, order=3, prefilter=False)
    out = np.zeros(grid.shape, np.float32)
    # Cubic B-spline interpolation of white noise has a standard deviation of about 0.6.
    out[idx] = values / 0.6
    return out


def _paint(
    labels: NDArray[np.uint8],
    hu: NDArray[np.float32],
    mask: NDArray[np.bool_],
    name: str,
    value_hu: float | NDArray[np.float32],
) -> None:
    labels[mask] = TRUTH_LABELS[name]
    hu[mask] = value_hu[mask] if isinstance(value_hu, np.ndarray) else value_hu


def _assemble(
    grid: SceneGrid,
    params: PhantomParameters,
    outline: BodyOutline,
    bones: BoneMasks,
    viscera: Viscera,
    table: tuple[NDArray[np.bool_], ...],
    rng: np.random.Generator,
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Exclusive labels and noiseless, unblurred HU; later masks win."""
    labels = np.zeros(grid.shape, np.uint8)
    hu = np.full(grid.shape, -1000.0, np.float32)
    depth = depth_below_skin(grid, outline)
    fat_mm = params.posterior_fat_fraction * (params.skin_to_psis_mm - params.skin_thickness_mm)
    layer = np.broadcast_to(depth, grid.shape)
    shell, core, pad = table
    hu[shell], hu[core], hu[pad] = 250.0, -850.0, -700.0
    labels[shell | core | pad] = TRUTH_LABELS["table"]
    _paint(labels, hu, layer > params.skin_thickness_mm + fat_mm, "body", params.muscle_hu)
    fat = (layer > params.skin_thickness_mm) & (layer <= params.skin_thickness_mm + fat_mm)
    _paint(labels, hu, fat, "subcutaneous_fat", params.fat_hu)
    # The outermost voxel layer is skin even when voxels are thicker than the skin.
    skin_mm = max(params.skin_thickness_mm, float(grid.spacing_kji_mm[1:].max()))
    _paint(labels, hu, (layer > 0) & (layer <= skin_mm), "skin", params.skin_hu)
    _paint(labels, hu, viscera.cavity, "visceral_fat", params.fat_hu + 10.0)
    _paint(labels, hu, viscera.bowel, "bowel", 35.0)
    _paint(labels, hu, viscera.bowel_content, "bowel", params.bowel_hu)
    _paint(labels, hu, viscera.bowel_gas, "bowel_gas", -990.0)
    _paint(labels, hu, viscera.bladder, "bladder", params.bladder_hu)
    _paint(labels, hu, viscera.vessels, "iliac_vessels", params.blood_hu)
    _paint(labels, hu, bones.disc, "intervertebral_disc", 85.0)
    _paint(labels, hu, bones.canal, "spinal_canal", 15.0)

    bone = bones.any_bone
    marrow = params.marrow_hu + params.marrow_variation_hu * _smooth_field(rng, grid, bone, 25.0)
    texture = rng.standard_normal(int(bone.sum()), dtype=np.float32)
    marrow[bone] += params.marrow_texture_hu * texture
    cortex = params.cortex_hu + 60.0 * _smooth_field(rng, grid, bone, 20.0)
    spine_marrow = bones.spine_bone & ~bones.spine_cortex
    sacrum_marrow = bones.sacrum & ~bones.sacrum_cortex
    _paint(labels, hu, bones.spine_bone, "lumbar_spine", cortex)
    hu[spine_marrow] = marrow[spine_marrow]
    _paint(labels, hu, bones.sacrum, "sacrum", cortex)
    hu[sacrum_marrow] = marrow[sacrum_marrow]
    for n, side in enumerate(("left", "right")):
        _paint(labels, hu, bones.femur[n], f"femur_{side}", marrow)
        hu[bones.femur_cortex[n]] = cortex[bones.femur_cortex[n]]
    for n, side in enumerate(("left", "right")):
        _paint(labels, hu, bones.hip_cortex[n], f"ilium_{side}_cortex", cortex)
        _paint(labels, hu, bones.hip_marrow[n], f"ilium_{side}_marrow", marrow)
        _paint(labels, hu, bones.si_joint[n], f"si_joint_{side}", params.si_joint_hu)
    return labels, hu


def _scene_grid(scan: SceneGrid, params: PhantomParameters) -> tuple[SceneGrid, slice]:
    """The grid the scene is built on, and the scan's slices in it.

    With thin slices it is the scan's grid. A thick-slice reconstruction averages the
    scene over the slice thickness, so the scene is built on slices about a pixel apart
    (``step`` of them per scan slice) that reach half the thickness beyond the first and
    last scan slice (``first`` of them before it).
    """
    if params.slice_thickness_mm == 0:
        return scan, slice(0, scan.shape[0])
    step = max(int(np.ceil(params.slice_spacing_mm / params.pixel_spacing_mm)), 1)
    fine = params.slice_spacing_mm / step
    first = int(np.ceil(0.5 * params.slice_thickness_mm / fine))
    origin = scan.origin_lps_mm - np.array([0.0, 0.0, first * fine])
    spacing = np.array([fine, *scan.spacing_kji_mm[1:]])
    shape = ((scan.shape[0] - 1) * step + 1 + 2 * first, scan.shape[1], scan.shape[2])
    scanned = slice(first, first + (scan.shape[0] - 1) * step + 1, step)
    return SceneGrid(origin, spacing, shape), scanned


def _slice_profile(thickness_mm: float, step_mm: float) -> NDArray[np.float64]:
    """Weights of the scene's slices ``step_mm`` apart in one slice of the given
    thickness: each scene slice stands for a slab of its spacing, weighted by how much of
    it lies within the slice."""
    reach = int(np.ceil(0.5 * thickness_mm / step_mm - 0.5))
    offset = np.arange(-reach, reach + 1) * step_mm
    overlap = np.clip(0.5 * thickness_mm - (np.abs(offset) - 0.5 * step_mm), 0.0, step_mm)
    return overlap / overlap.sum()


def _scanner(
    hu: NDArray[np.float32],
    spacing: NDArray[np.float64],
    params: PhantomParameters,
    rng: np.random.Generator,
    *,
    slices: slice = slice(None),
) -> NDArray[np.int16]:
    """Blur by the system resolution (and the slice profile of a thick slice), keep the
    scan's ``slices`` of the scene, add correlated noise, store as integer HU."""
    sigma = params.resolution_fwhm_mm / 2.3548 / spacing
    image = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    if params.slice_thickness_mm > 0:
        weights = _slice_profile(params.slice_thickness_mm, float(spacing[0]))
        image = ndimage.correlate1d(image, weights, axis=0, mode="nearest")
    image = np.ascontiguousarray(image[slices])
    if params.noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), 0.7)
        image += noise * np.float32(params.noise_hu / max(float(noise.std()), 1e-6))
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def _thinned_psis(
    thinned: PelvisShape, plain: dict[str, NDArray[np.float64]]
) -> dict[str, NDArray[np.float64]]:
    """The PSIS of a pelvis with thinned wings.

    Thinning pulls the PSIS vertex into the bone along its inward normal (the spine is
    long in that direction), so it no longer marks the posterior tip. The tip of the
    thinned bone is its vertex nearest to where the PSIS lies without thinning
    (``plain``, the same pose).
    """
    out = {}
    for side in ("left", "right"):
        vertices = getattr(thinned, f"{side}_hip").vertices_lps_mm
        nearest = int(np.argmin(np.linalg.norm(vertices - plain[f"psis_{side}"], axis=1)))
        out[f"psis_{side}"] = vertices[nearest].copy()
    return out


def make_phantom(
    *,
    seed: int = 0,
    position: str = "HFP",
    preset: str = "average",
    anatomy: str | Path | None = None,
    shape_model: ShapeModel | None = None,
    jitter: bool = True,
    progress: Progress | None = None,
    **overrides: Any,
) -> Phantom:
    """Build a phantom.

    Parameters
    ----------
    seed : int
        Decides the shape (unless ``anatomy`` is given), habitus jitter, bowel loops,
        marrow texture and noise. The same seed gives the same scene in LPS in every
        position; prone and supine differ only by the table and the gas in the bowel.
    position : {"HFP", "HFS", "FFP", "FFS"}
        Patient position. Feet-first and head-first give identical images in LPS.
    preset : str
        A name in :data:`bmbx_phantoms.PRESETS`.
    anatomy : path, optional
        A folder with ``left_hip.vtk``, ``right_hip.vtk`` and ``sacrum.vtk`` (LPS mm), used
        in its own coordinates instead of a shape drawn from the shape model.
    shape_model : ShapeModel, optional
        Defaults to the model shipped with the package.
    jitter : bool
        Vary habitus and density slightly with the seed (False: the preset exactly).
    progress : callable, optional
        Called with a short description before each step.
    **overrides
        Any :class:`PhantomParameters` field (e.g. ``pixel_spacing_mm=0.8``).
    """
    say = progress or (lambda _msg: None)
    position = position.upper()
    if position not in PATIENT_POSITIONS:
        raise ValueError(f"position must be one of {PATIENT_POSITIONS}, got {position!r}")
    prone = position.endswith("P")
    params = resolve_parameters(preset, seed=seed, jitter=jitter, **overrides)
    rng_shape, rng_tissue, rng_noise = (np.random.default_rng([seed, n]) for n in (1, 2, 3))

    say("shape")
    if anatomy is not None:
        shape = load_pelvis(anatomy)
        source: dict[str, Any] = {"source": "anatomy", "folder": Path(anatomy).name}
    else:
        shape, source = _choose_shape(rng_shape, params, shape_model or default_shape_model())
    raw = landmarks(shape)
    posing: dict[str, Any] = {
        "marks": raw,
        "yaw_deg": params.yaw_deg,
        "roll_deg": params.roll_deg,
        "pitch_deg": params.pitch_deg,
        "hip_scale": params.hip_scale,
    }
    posed = pose_shape(shape, wing_thickness_scale=params.wing_thickness_scale, **posing)
    marks = landmarks(posed)
    if any(scale != 1.0 for scale in params.wing_thickness_scale):
        marks.update(_thinned_psis(posed, landmarks(pose_shape(shape, **posing))))
    shape = posed
    points = shape.all_vertices_lps_mm()
    midline_x = float(shape.sacrum.vertices_lps_mm[:, 0].mean())
    femurs, femoral_heads = _femurs(shape, marks)
    hip_z = np.concatenate(
        [shape.left_hip.vertices_lps_mm[:, 2], shape.right_hip.vertices_lps_mm[:, 2]]
    )
    scan_bottom_z = float(hip_z.min()) - _SCAN_BELOW_HIP_MM

    outline = body_outline(
        np.concatenate([points, _femur_outline_points(femurs, scan_bottom_z)]),
        (marks["psis_left"], marks["psis_right"]),
        midline_x,
        skin_to_psis_mm=params.skin_to_psis_mm,
        lateral_mm=params.lateral_soft_tissue_mm,
        anterior_mm=params.anterior_soft_tissue_mm,
    )
    lo = np.array(
        [
            midline_x - outline.half_width_mm - 5.0,
            outline.anterior_y - _TABLE_ROOM_MM,
            scan_bottom_z,
        ]
    )
    hi = np.array(
        [
            midline_x + outline.half_width_mm + 5.0,
            outline.posterior_max_y + _TABLE_ROOM_MM,
            hip_z.max() + _SCAN_ABOVE_CREST_MM,
        ]
    )
    scan = SceneGrid.covering(
        lo, hi, pixel_mm=params.pixel_spacing_mm, slice_mm=params.slice_spacing_mm
    )
    grid, scanned = _scene_grid(scan, params)

    say("bones")
    bones = build_bones(
        shape,
        grid,
        femurs=femurs,
        cortex_thickness_mm=params.cortex_thickness_mm,
        si_joint_width_mm=params.si_joint_width_mm,
    )
    say("soft tissue")
    depth = depth_below_skin(grid, outline)
    fascia = depth > params.skin_thickness_mm + params.posterior_fat_fraction * (
        params.skin_to_psis_mm - params.skin_thickness_mm
    )
    hip_pts = np.concatenate([shape.left_hip.vertices_lps_mm, shape.right_hip.vertices_lps_mm])
    medial = np.argsort(np.abs(hip_pts[:, 0] - midline_x))[:40]
    pubis = hip_pts[medial].mean(axis=0)
    s1 = s1_top(shape.sacrum)
    front = _front_of_spine(grid, bones)
    l4_mid_z = s1[2] + 10.0 + 27.0 + 10.0 + 13.5
    bifurcation = np.array(
        [midline_x, float(np.interp(l4_mid_z, grid.z_mm, front)) - 12.0, l4_mid_z]
    )
    si_centres = []
    for n in range(2):
        idx = np.argwhere(bones.si_joint[n])
        if len(idx) == 0:
            hip_verts = (shape.left_hip, shape.right_hip)[n].vertices_lps_mm
            si_centres.append(hip_verts[np.argmin(np.linalg.norm(hip_verts - s1, axis=1))])
        else:
            c = idx.mean(axis=0)
            si_centres.append(grid.origin_lps_mm + (c * grid.spacing_kji_mm)[::-1])
    viscera = build_viscera(
        grid,
        fascia=fascia,
        bone=bones.any_bone,
        spine_front_y=front,
        midline_x_mm=midline_x,
        pelvis_half_width_mm=float(np.max(np.abs(points[:, 0] - midline_x))),
        pubis_lps_mm=pubis,
        bifurcation_lps_mm=bifurcation,
        si_joint_centres=(si_centres[0], si_centres[1]),
        asis=(marks["asis_left"], marks["asis_right"]),
        notch_apex=(marks["sciatic_notch_apex_left"], marks["sciatic_notch_apex_right"]),
        bladder_volume_ml=params.bladder_volume_ml,
        bowel_loops=params.bowel_loops,
        prone=prone,
        rng=rng_tissue,
    )
    table = table_mask(grid, outline, prone=prone)
    say("CT values")
    labels, hu = _assemble(grid, params, outline, bones, viscera, table, rng_tissue)
    ct = _scanner(hu, grid.spacing_kji_mm, params, rng_noise, slices=scanned)
    labels = np.ascontiguousarray(labels[scanned])  # the scene at each voxel's centre

    snapped = {}
    for name in LANDMARK_NAMES:
        side = "left" if name.endswith("left") else "right"
        snapped[name] = _snap_to_label(labels, scan, marks[name], ilium_labels(side))
    depth_psis = {
        side: round(
            outline.posterior_y(float(snapped[f"psis_{side}"][0]))
            - float(snapped[f"psis_{side}"][1]),
            2,
        )
        for side in ("left", "right")
    }
    truth = {
        "seed": int(seed),
        "position": position,
        "preset": preset,
        "parameters": params.to_json(),
        "shape": source,
        "landmarks": {k: [round(float(v), 3) for v in p] for k, p in snapped.items()},
        "landmarks_on_mesh": {k: [round(float(v), 3) for v in marks[k]] for k in LANDMARK_NAMES},
        # Not snapped: the head centre is the centre of the sphere fitted to the cup.
        "femoral_heads": femoral_heads,
        "midline_x_mm": round(midline_x, 3),
        "skin_to_psis_mm": depth_psis,
        "labels": dict(TRUTH_LABELS),
        "coordinate_system": "LPS",
    }
    info = ScanInfo(
        source=f"bmbx_phantoms seed {seed} preset {preset}",
        modality="CT",
        patient_position=position,
        manufacturer="bmbx_phantoms",
        slice_thickness_mm=params.slice_thickness_mm or None,
    )
    ct_volume = scan.volume(ct).with_info(info)
    label_volume = scan.volume(labels).with_info(info)
    return Phantom(ct=ct_volume, labels=label_volume, truth=truth, shape=shape)
