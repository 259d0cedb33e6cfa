"""``segment_pelvis``: everything the planner needs to know about the pelvis of a CT."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from bmbx_plan.anatomy._grid import (
    WorkGrid,
    ball_around,
    bounding_box,
    enclosed,
    to_full_resolution,
)
from bmbx_plan.anatomy.body import BodyMask, segment_body
from bmbx_plan.anatomy.bone import (
    DEFAULT_BONE_THRESHOLD_HU,
    bone_and_lumina,
    cortical_band,
    partial_volume_rim,
)
from bmbx_plan.anatomy.external import ExternalMasks, load_external_masks
from bmbx_plan.anatomy.landmarks import ShapeFit, fit_shape_model, pelvis_landmarks
from bmbx_plan.anatomy.pelvis import (
    PelvisBones,
    joint_clefts,
    joint_sheets,
    low_density_bone,
    split_pelvis,
)
from bmbx_plan.anatomy.shape_model import ShapeModel
from bmbx_plan.distance import distance_mm
from bmbx_plan.io.errors import InputError
from bmbx_plan.mesh import voxelize
from bmbx_plan.resample import resample_to
from bmbx_plan.volume import Volume

__all__ = ["LABELS", "LABEL_GROUPS", "Anatomy", "NoPelvisError", "label_mask", "segment_pelvis"]

Mask = NDArray[np.bool_]
Progress = Callable[[str], None]

#: Values of the exclusive label map ``labels.nii.gz`` written by ``bmbx-plan segment``.
LABELS: dict[str, int] = {
    "body": 1,
    "ilium_left": 2,
    "ilium_right": 3,
    "sacrum": 4,
    "lumbar_spine": 5,
    "femur_left": 6,
    "femur_right": 7,
    "table": 8,
    "bowel_gas": 9,
    "si_joint_left": 10,
    "si_joint_right": 11,
    "sciatic_notch_left": 12,
    "sciatic_notch_right": 13,
    "spinal_canal": 14,
    # contrast-filled vessels, bowel and bladder (enhanced lumina: no bone, no path)
    "contrast_lumen": 15,
}
#: Labels a planner treats as one structure: the sacral canal and foramina lie inside
#: the sacrum and keep the sacrum's margin.
LABEL_GROUPS: dict[str, tuple[str, ...]] = {"sacrum": ("sacrum", "spinal_canal")}


def label_mask(labels: NDArray[np.integer], name: str) -> Mask:
    """Where a label map holds ``name``, or any label of its group in :data:`LABEL_GROUPS`."""
    return np.isin(labels, [LABELS[n] for n in LABEL_GROUPS.get(name, (name,))])


# A fitted shape model that misses the bone surface by more than this (rms) did not find
# a pelvis: the bone in the scan is something else (ribs, spine, limbs).
_MAX_FIT_RMS_MM = 5.0
# Bone of a side farther than this outside the fitted hip bone seeds the femur.
_FEMUR_MARGIN_MM = 6.0
# Bone over the sacrum farther than this outside the fitted pelvis is a vertebra (the fit
# is a few mm off at worst; a vertebra lies 1-2 cm from the nearest pelvic bone) ...
_SPINE_MARGIN_MM = 10.0
# ... when there is at least this much of it (less is a spur or the fit's error) ...
_MIN_VERTEBRA_SEED_ML = 2.0
# ... and it lies no lower than this under the top of the fitted sacrum.
_VERTEBRA_BELOW_TOP_MM = 10.0
# The fitted pelvis is this close to the bone surface (rms 1-2 mm on the cohort).
_FIT_ERROR_MM = 2.0
# Voxels this deep inside a fitted bone take its label as a watershed seed; counted in
# voxels of the grid the pass runs on (the ~1.5 mm working grid for the second passes,
# the CT grid for the sacrum completion).
_FIT_TRUST_VOXELS = 3
# ... one voxel less for the sacrum: where the ala touches the ilium with no joint space
# between them (a fused or dense joint) no sheet or cleft shows the boundary and only the
# fit can place it; with 3 voxels the ilium took up to 8 voxels of the ala there.
_SACRUM_TRUST_VOXELS = 2
# Joint spaces are looked for this far around the sacrum (the first pass's and the fitted).
_SHEET_SEARCH_MM = 10.0
# Missed sacral marrow is added only this close to the segmented sacrum.
_SACRUM_COMPLETION_MM = 8.0
# Keep-out region around the apex of each greater sciatic notch (superior gluteal
# vessels, sciatic nerve): the planner keeps the core at least 10 mm away; this region
# marks where the neurovascular bundle runs.
_NOTCH_KEEPOUT_MM = 10.0
# Soft voxels of the filled sacrum this far outside the fitted sacrum are its canal or a
# foramen: more than one voxel of the working grid (the fit's boundary is that uncertain).
_CANAL_OUTSIDE_FIT_MM = 2.0
# ... and inside the fitted sacrum closed by a ball of this radius: the canal (up to about
# 2 cm wide at S1) and the foramina are tunnels of the fitted bone.
_CANAL_RADIUS_MM = 12.0
# The SI joint region: non-bone voxels this close to both the sacrum and that ilium.
_SI_JOINT_REACH_MM = 4.0
# The bones of the label map the separation passes hand back to the CT grid.
_BONES = ("ilium_left", "ilium_right", "sacrum", "lumbar_spine", "femur_left", "femur_right")
# The crest must lie this far below the top of the scan, and the notch apex this far
# above its bottom, for the posterior wing to be fully in view.
_COVERAGE_MARGIN_MM = 5.0


class NoPelvisError(InputError):
    """The CT does not show the pelvis the planner needs (or shows it cut off)."""


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The segmented pelvis of one CT (all masks on the CT's grid).

    Attributes
    ----------
    labels : Volume
        Exclusive label map (uint8) with values from :data:`LABELS`.
    cortex : (K, J, I) bool ndarray
        Cortical shell of the hip bones; the rest of each ilium is marrow.
    landmarks_lps_mm : dict
        ``psis_left``, ``asis_left``, ``sciatic_notch_apex_left``, ... (LPS mm).
    midline_x_mm : float
        L coordinate of the mid-sagittal plane (from the bones, not x = 0).
    has_skin : bool
        Whether the CT shows air around the patient (a skin surface to enter through).
    shape_fit : ShapeFit
        The pelvis shape model fitted to the bones (meshes, residuals, SI joint surfaces).
    external : ExternalMasks or None
        Risk structures imported from another segmentation.
    notes : tuple of str
    """

    labels: Volume
    cortex: Mask
    landmarks_lps_mm: dict[str, NDArray[np.float64]]
    midline_x_mm: float
    has_skin: bool
    shape_fit: ShapeFit
    external: ExternalMasks | None = None
    notes: tuple[str, ...] = field(default=())

    def mask(self, name: str) -> Mask:
        """Boolean mask of one label name."""
        if name not in LABELS:
            raise KeyError(f"unknown label {name!r}; labels are {sorted(LABELS)}")
        return np.asarray(self.labels.array == LABELS[name])

    def ilium(self, side: str) -> Mask:
        """Whole hip bone (cortex and marrow) of ``"left"`` or ``"right"``."""
        return self.mask(f"ilium_{side}")

    def marrow(self, side: str) -> Mask:
        """Marrow of one ilium: inside its cortical shell."""
        return self.ilium(side) & ~self.cortex


def _z_range(ct: Volume) -> tuple[float, float]:
    bounds = ct.bounds_lps_mm()
    return float(bounds[0, 2]), float(bounds[1, 2])


def _near(
    mask: Mask, spacing: NDArray[np.float64], reach_mm: float, *, within: Mask | None = None
) -> Mask:
    """Voxels within ``reach_mm`` of ``mask`` (computed in the mask's padded box; with
    ``within``, only the answer inside ``within``'s padded bounding box is computed)."""
    pad = int(np.ceil(reach_mm / float(spacing.min()))) + 1
    out = np.zeros(mask.shape, bool)
    region = tuple(slice(0, n) for n in mask.shape)
    if within is not None:
        if not within.any():
            return out
        region = bounding_box(within, pad)
    local = mask[region]
    if not local.any():
        return out
    box = bounding_box(local, pad)
    target = tuple(
        slice(r.start + b.start, r.start + b.stop) for r, b in zip(region, box, strict=True)
    )
    out[target] = distance_mm(~local[box], spacing) <= reach_mm
    return out


def _check_coverage(
    ct: Volume,
    bones: Mapping[str, Mask],
    landmarks: Mapping[str, NDArray[np.float64]],
    source: str,
) -> None:
    """Refuse scans whose field of view cuts the posterior iliac wing."""
    low, high = _z_range(ct)
    span = f"the scan covers z = {low:.0f} to {high:.0f} mm"
    axial, sign = ct.axis_of(2)
    for side in ("left", "right"):
        ilium = bones[f"ilium_{side}"]
        top_slice = ilium.take(ct.shape[axial] - 1 if sign > 0 else 0, axis=axial)
        if top_slice.sum() * ct.voxel_volume_mm3 / ct.spacing_mm[axial] > 100.0:
            raise NoPelvisError(
                source,
                f"the pelvis is cut off above the iliac crest "
                f"({side} ilium reaches the top of the scan; {span})",
            )
        notch_z = float(landmarks[f"sciatic_notch_apex_{side}"][2])
        if notch_z < low + _COVERAGE_MARGIN_MM:
            raise NoPelvisError(
                source,
                f"the pelvis is cut off at or above the greater "
                f"sciatic notch ({side} notch at z = {notch_z:.0f} mm; {span})",
            )


def _refine_femurs(
    split: PelvisBones, fit: ShapeFit, fitted: Sequence[Mask], grid: Volume
) -> PelvisBones:
    """Second pass for the femoral heads: bone of a side that lies well outside both
    fitted hip bones (and below the acetabulum) seeds the femur, the fitted hip bone seeds
    the hip, and a watershed on the depth below the bone surface cuts at the joint.

    Bone inside the other fitted hip bone is no femur: the first pass can give a pubic
    body to the far side across a symphysis without a visible cleft; the fitted model
    takes it back (:func:`_reconcile_with_fit`).

    ``fitted`` are the fitted meshes voxelized on ``grid`` (the masks' grid).
    """
    out = {}
    hips = fitted[0] | fitted[1]
    for n, side in enumerate(("left", "right")):
        hip, femur = getattr(split, f"ilium_{side}"), getattr(split, f"femur_{side}")
        out[f"ilium_{side}"], out[f"femur_{side}"] = hip, femur
        region = hip | femur
        if not region.any() or not fitted[n].any():
            continue
        pad = int(np.ceil(_FEMUR_MARGIN_MM / grid.spacing_mm.min())) + 2
        box = bounding_box(region | fitted[n], pad)
        sub, fit_sub = region[box], fitted[n][box]
        inside = ndimage.binary_erosion(fit_sub, iterations=2)
        outside = distance_mm(~hips[box], grid.spacing_mm) > _FEMUR_MARGIN_MM
        heights = fit.meshes[n].vertices_lps_mm[:, 2]
        below = grid.lps_coordinate(2, box) < float(heights.min() + 0.5 * np.ptp(heights))
        markers = np.zeros(sub.shape, np.int32)
        markers[sub & inside] = 1
        markers[sub & outside & below] = 2
        if (markers == 2).sum() * grid.voxel_volume_mm3 < 2000.0 or not (markers == 1).any():
            continue
        depth = distance_mm(sub, grid.spacing_mm)
        regions = watershed(-depth, markers, mask=sub)
        new_hip, new_femur = np.zeros_like(hip), np.zeros_like(hip)
        new_hip[box], new_femur[box] = regions == 1, regions == 2
        out[f"ilium_{side}"], out[f"femur_{side}"] = new_hip, new_femur
    return replace(split, **out)


def _sheets_at_joints(
    bone: Mask, low: Mask, ct: Volume, work: WorkGrid, sacrum: Mask, bone_threshold_hu: float
) -> Mask:
    """The :func:`joint_sheets` in the box of ``sacrum`` (on ``work.coarse``: the first
    pass's and the fitted one, since the first pass can cut deep into the sacrum) grown by
    :data:`_SHEET_SEARCH_MM`, found on the CT and marking their blocks on the working grid
    (a one-voxel joint space must survive the coarser grid); ``low`` is the
    :func:`~bmbx_plan.anatomy.pelvis.low_density_bone` of ``bone``."""
    if not sacrum.any():
        return np.zeros(work.coarse.shape, bool)
    pad = int(np.ceil(_SHEET_SEARCH_MM / work.coarse.spacing_mm.min()))
    box = work.fine_box(bounding_box(sacrum, pad))
    sheets = joint_sheets(bone, ct, bone_threshold_hu=bone_threshold_hu, box=box, low=low)
    return work.pool(sheets, min_fraction=0.0)


def _reconcile_with_fit(
    split: PelvisBones, fitted: Sequence[Mask], grid: Volume, sheets: Mask
) -> PelvisBones:
    """Re-decide the bone where the first pass and the fitted model disagree.

    Where the first pass and the fitted hip bones and sacrum (``fitted``, voxelized on
    ``grid``) agree, the label stands and seeds a watershed on the depth below the bone
    surface, where the joint spaces ``sheets`` count as surface; the voxels where they
    disagree (e.g. sacral marrow that flooded into a hip bone through a fatty, partly
    fused SI joint) go to the bone they connect to through the thickest bone, and the
    seeds meet in the joint space where there is one.

    Bone over the sacrum farther than :data:`_SPINE_MARGIN_MM` outside every fitted bone
    is a vertebra the first pass joined to the pelvis (an L5 transverse process touching
    the ala or the wing, as with a transitional vertebra or a tilted pelvis): it seeds
    the lumbar spine, so no vertebra ends up in the ilium the planner plans in.
    """
    names = ("ilium_left", "ilium_right", "sacrum")
    region = split.ilium_left | split.ilium_right | split.sacrum
    if not region.any():
        return split
    box = bounding_box(region, 2)
    sub = region[box]
    markers = np.zeros(sub.shape, np.int32)
    for value, (name, model) in enumerate(zip(names, fitted, strict=True), start=1):
        # Deep inside the fitted bone the model decides; near its surface (where the
        # model is a few mm off) only where the first pass agrees.
        trust = _SACRUM_TRUST_VOXELS if name == "sacrum" else _FIT_TRUST_VOXELS
        deep = sub & ndimage.binary_erosion(model[box], iterations=trust)
        agree = getattr(split, name)[box] & ndimage.binary_erosion(model[box])
        markers[(deep | agree) & (markers == 0)] = value
    if any(not (markers == v).any() for v in (1, 2, 3)):
        return split
    pelvis = fitted[0][box] | fitted[1][box] | fitted[2][box]
    outside = distance_mm(~pelvis, grid.spacing_mm)
    vertebra = sub & _over_sacrum(fitted[2], grid, box) & (markers == 0)
    vertebra &= outside > _SPINE_MARGIN_MM
    seeded = vertebra.sum() * grid.voxel_volume_mm3 >= _MIN_VERTEBRA_SEED_ML * 1000.0
    if seeded:
        markers[vertebra] = len(names) + 1
    depth = distance_mm(sub & ~sheets[box], grid.spacing_mm)
    regions = watershed(-depth, markers, mask=sub)
    if seeded:
        # Where the vertebra touches a bone without a cleft the watershed cuts at the
        # narrowest neck and leaves the tip of the process on the pelvis; the vertebra
        # is all the bone outside the fitted pelvis (beyond the fit's error) it reaches.
        loose, _ = ndimage.label(sub & (outside > _FIT_ERROR_MM))
        reached = np.unique(loose[vertebra])
        regions[np.isin(loose, reached[reached > 0])] = len(names) + 1
    masks = []
    for value in range(1, len(names) + 2):
        mask = np.zeros(grid.shape, bool)
        mask[box] = regions == value
        masks.append(mask)
    return replace(
        split,
        ilium_left=masks[0],
        ilium_right=masks[1],
        sacrum=masks[2],
        lumbar_spine=split.lumbar_spine | masks[3],
    )


def _over_sacrum(sacrum: Mask, grid: Volume, box: tuple[slice, ...]) -> Mask:
    """Voxels of ``box`` between the left and right ends of ``sacrum`` and no lower than
    :data:`_VERTEBRA_BELOW_TOP_MM` under its top (the column L5 stands in: its body sits
    on S1, its transverse processes beside the alae; lower down, bone outside a poorly
    fitted sacrum is still sacrum)."""
    points = grid.index_to_lps(np.argwhere(sacrum))
    if not len(points):
        return np.zeros(tuple(s.stop - s.start for s in box), bool)
    x, z = grid.lps_coordinate(0, box), grid.lps_coordinate(2, box)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.asarray((x > lo[0]) & (x < hi[0]) & (z > hi[2] - _VERTEBRA_BELOW_TOP_MM))


def _complete_sacrum(split: PelvisBones, fitted: Mask, ct: Volume) -> PelvisBones:
    """Add sacral marrow the shell fill missed.

    The sacrum leaks through its foramina and a thin anterior cortex, so fatty sacral
    marrow can stay outside the bone mask. The fitted sacrum (``fitted``, voxelized on
    ``ct``) says where the bone is: voxels well inside it (3 voxels), next to the
    segmented sacrum and claimed by no other bone, are sacrum.
    """
    if not fitted.any() or not split.sacrum.any():
        return split
    inner = np.zeros_like(fitted)
    around = bounding_box(fitted, 1)
    inner[around] = ndimage.binary_erosion(fitted[around], iterations=_FIT_TRUST_VOXELS)
    if not inner.any():
        return split
    # Only the box of the fitted sacrum can change.
    box = bounding_box(inner, 0)
    others = (
        split.ilium_left[box]
        | split.ilium_right[box]
        | split.lumbar_spine[box]
        | split.femur_left[box]
        | split.femur_right[box]
    )
    near = _near(split.sacrum, ct.spacing_mm, _SACRUM_COMPLETION_MM, within=inner)[box]
    sacrum = split.sacrum.copy()
    sacrum[box] |= inner[box] & near & ~others
    return replace(split, sacrum=sacrum)


def _bones_on_grid(labels: NDArray[np.uint8], split: PelvisBones) -> PelvisBones:
    """The bones of an exclusive label map (values: 1 + index in :data:`_BONES`)."""
    masks: dict[str, Mask] = {name: np.zeros(labels.shape, bool) for name in _BONES}
    # Compare only inside each bone's box: six full-volume comparisons cost seconds.
    boxes = ndimage.find_objects(labels, max_label=len(_BONES))
    for n, (name, box) in enumerate(zip(_BONES, boxes, strict=True), start=1):
        if box is not None:
            masks[name][box] = labels[box] == n
    return replace(
        split,
        ilium_left=masks["ilium_left"],
        ilium_right=masks["ilium_right"],
        sacrum=masks["sacrum"],
        lumbar_spine=masks["lumbar_spine"],
        femur_left=masks["femur_left"],
        femur_right=masks["femur_right"],
    )


def _label_map(split: PelvisBones) -> NDArray[np.uint8]:
    """The bones of ``split`` as one exclusive label map (1 + index in :data:`_BONES`)."""
    labels = np.zeros(split.sacrum.shape, np.uint8)
    for n, name in enumerate(_BONES, start=1):
        labels[getattr(split, name)] = n
    return labels


def _split_bones(
    ct: Volume,
    bone: Mask,
    bone_threshold_hu: float,
    say: Progress,
    source: str,
    span: str,
    model: ShapeModel | None,
) -> tuple[PelvisBones, ShapeFit, list[str]]:
    """Hip bones, sacrum, spine and femurs on the CT grid, and the fitted shape model.

    The separation passes (watershed, fit, second passes against the fit) run on the
    working grid of about 1.5 mm; the result is carried back to the CT's voxels, where the
    cuts between bones are re-drawn at full resolution, and bone they left out joins the
    bone it touches (:func:`_with_loose_bone`).
    """
    work = WorkGrid.of(ct)
    low = low_density_bone(bone, ct, bone_threshold_hu=bone_threshold_hu)
    clefts = joint_clefts(bone, ct, bone_threshold_hu=bone_threshold_hu, low=low)
    coarse_bone = work.pool(bone, min_fraction=0.5)
    # Any cleft voxel marks its block: a 2 mm cleft must survive the coarser grid.
    coarse_clefts = work.pool(clefts, min_fraction=0.0) & coarse_bone
    split = split_pelvis(
        coarse_bone, work.coarse, bone_threshold_hu=bone_threshold_hu, clefts=coarse_clefts
    )
    del coarse_bone, coarse_clefts
    notes = list(split.notes)
    volume = work.coarse.voxel_volume_mm3
    parts = {"ilium_left": split.ilium_left, "ilium_right": split.ilium_right}
    parts["sacrum"] = split.sacrum
    missing = [name for name, m in parts.items() if m.sum() * volume < 20_000.0]
    if missing:
        raise NoPelvisError(
            source, f"no pelvis in the field of view (found no {', '.join(missing)}); {span}"
        )
    say("landmarks")
    try:
        fit = fit_shape_model(
            split.ilium_left, split.ilium_right, split.sacrum, work.coarse, model=model
        )
    except ValueError as exc:
        raise NoPelvisError(source, f"the bones do not form a pelvis ({exc}); {span}") from None
    if fit.rms_mm > _MAX_FIT_RMS_MM:
        raise NoPelvisError(
            source,
            f"no pelvis in the field of view: the bone found does not "
            f"match a pelvis (shape model residual {fit.rms_mm:.1f} mm); {span}",
        )
    notes.extend(fit.notes)
    # Each fitted bone is voxelized once and serves every pass on the working grid.
    fitted = [voxelize(mesh, work.coarse) for mesh in fit.meshes]
    split = _refine_femurs(split, fit, fitted, work.coarse)
    sheets = _sheets_at_joints(bone, low, ct, work, split.sacrum | fitted[2], bone_threshold_hu)
    split = _reconcile_with_fit(split, fitted, work.coarse, sheets)
    del fitted, low
    labels = to_full_resolution(work, _label_map(split), bone, lambda box: clefts[box])
    split = _bones_on_grid(labels, split)
    del labels
    split = _complete_sacrum(split, voxelize(fit.meshes[2], ct), ct)
    return _with_loose_bone(split, bone), replace(fit, grid=ct), notes


def _with_loose_bone(split: PelvisBones, bone: Mask) -> PelvisBones:
    """Give the voxels of ``bone`` that the separation left out to the bone they touch.

    The separation connects voxels through their faces (a joint cleft one voxel wide
    must part two bones), so bone that meets the rest only along an edge or at a corner,
    such as a thin posterior iliac spine on a coarse grid, is left out. Each piece of
    such voxels (touching by a face, an edge or a corner) that touches one bone joins
    it; one that touches several is shared out voxel by voxel to the nearest. The loose
    voxels are few, so they are handled as a list with their 26 neighbours.
    """
    labels = _label_map(split)
    at = np.flatnonzero(bone & (labels == 0))
    if at.size == 0:
        return split
    shape = np.array(bone.shape)
    steps = np.array([s for s in np.ndindex(3, 3, 3) if s != (1, 1, 1)]) - 1
    near = np.stack(np.unravel_index(at, bone.shape), axis=1)[:, None, :] + steps
    valid = np.all((near >= 0) & (near < shape), axis=2)
    flat = np.ravel_multi_index(tuple(np.clip(near, 0, shape - 1).transpose(2, 0, 1)), bone.shape)
    touched = np.where(valid, labels.reshape(-1)[flat], np.uint8(0))
    # the pieces: loose voxels connected through any of their 26 neighbours
    position = np.minimum(np.searchsorted(at, flat), at.size - 1)
    linked = valid & (at[position] == flat)
    rows = np.broadcast_to(np.arange(at.size)[:, None], linked.shape)[linked]
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, position[linked])), (at.size,) * 2)
    count, piece = connected_components(graph, directed=False)
    highest = np.zeros(count, np.uint8)
    np.maximum.at(highest, piece, touched.max(axis=1))
    lowest = np.full(count, 255, np.uint8)
    np.minimum.at(lowest, piece, np.where(touched > 0, touched, np.uint8(255)).min(axis=1))
    claimed = np.where(highest[piece] == lowest[piece], highest[piece], np.uint8(0))
    shared = (highest[piece] > 0) & (highest[piece] != lowest[piece])
    if shared.any():
        # each voxel of a piece touching several bones goes to the nearest
        where = np.zeros(bone.shape, bool)
        where.reshape(-1)[at[shared]] = True
        box = bounding_box(where, 2)
        nearest = ndimage.distance_transform_edt(
            labels[box] == 0, return_distances=False, return_indices=True
        )
        closest = labels[box][tuple(nearest)]
        corner = np.array([b.start for b in box])
        inside = np.stack(np.unravel_index(at[shared], bone.shape), axis=1) - corner
        claimed[shared] = closest[tuple(inside.T)]
    labels.reshape(-1)[at] = claimed
    return _bones_on_grid(labels, split)


def _without_cavities(split: PelvisBones) -> PelvisBones:
    """Fill the pockets each hip bone and the sacrum enclose.

    Fatty marrow or noise can leave small soft-tissue pockets inside the filled shell;
    they are marrow, and as "soft tissue" they would put false bone surfaces inside the
    wing (the planner measures the core's clearance to the bone surface).
    """
    out = {}
    names = ("ilium_left", "ilium_right", "sacrum")
    for name in names:
        mask = getattr(split, name)
        if not mask.any():
            continue
        box = bounding_box(mask, 1)
        others = np.zeros(mask[box].shape, bool)
        for other in _BONES:
            if other != name:
                others |= getattr(split, other)[box]
        filled = mask.copy()
        filled[box] = enclosed(mask[box]) & ~others | mask[box]
        out[name] = filled
    return replace(split, **out)


def _sacral_canal(sacrum: Mask, fit: ShapeFit, ct: Volume, bone_threshold_hu: float) -> Mask:
    """The sacral canal and foramina that the shell fill closed into the sacrum.

    In axial and sagittal slices they are holes in the sacrum's shell and are filled like
    marrow. The fitted sacrum keeps them open. Canal are the voxels of ``sacrum`` below
    the shell threshold, more than :data:`_CANAL_OUTSIDE_FIT_MM` outside the fitted
    sacrum but inside its closing by a ball of :data:`_CANAL_RADIUS_MM` (the tunnels and
    holes of the fitted bone, not the marrow beyond its ends: the model covers S1-S3).
    """
    out = np.zeros(sacrum.shape, bool)
    if not sacrum.any():
        return out
    pad = int(np.ceil(_CANAL_RADIUS_MM / ct.spacing_mm.min())) + 1
    box = bounding_box(sacrum, pad)
    fitted = voxelize(fit.meshes[2], ct)[box]
    if not fitted.any():
        return out
    outside = distance_mm(~fitted, ct.spacing_mm)
    grown = outside <= _CANAL_RADIUS_MM
    closed = distance_mm(grown, ct.spacing_mm) > _CANAL_RADIUS_MM
    soft = np.asarray(ct.array[box]) < bone_threshold_hu
    out[box] = sacrum[box] & soft & closed & (outside > _CANAL_OUTSIDE_FIT_MM)
    return out


def _body_labels(ct: Volume, body: BodyMask, lumina_at: NDArray[np.intp]) -> NDArray[np.uint8]:
    """Label map with the body, the table, bowel gas and the contrast-filled lumina (flat
    indices ``lumina_at``; all zero without air around the patient)."""
    labels = np.zeros(ct.shape, np.uint8)
    if body.has_air:
        np.copyto(labels, np.uint8(LABELS["body"]), where=body.body)
        np.copyto(labels, np.uint8(LABELS["table"]), where=body.table)
        gas = np.asarray(ct.array) < -500.0
        gas &= body.body
        np.copyto(labels, np.uint8(LABELS["bowel_gas"]), where=gas)
        inside = lumina_at[body.body.reshape(-1)[lumina_at]]
        labels.reshape(-1)[inside] = LABELS["contrast_lumen"]
    return labels


def _any_bone(split: PelvisBones, box: tuple[slice, ...]) -> Mask:
    """Whether each voxel of ``box`` belongs to any bone."""
    out = split.ilium_left[box] | split.ilium_right[box]
    for name in ("sacrum", "lumbar_spine", "femur_left", "femur_right"):
        out |= getattr(split, name)[box]
    return out


def _mark_joints_and_notches(
    labels: NDArray[np.uint8],
    split: PelvisBones,
    landmarks: Mapping[str, NDArray[np.float64]],
    ct: Volume,
) -> None:
    """Label the SI joints (non-bone voxels near both the sacrum and an ilium) and the
    keep-out regions around the sciatic notch apices, in place; bone is never relabelled.

    Both are small: they are worked out in their own boxes, not on the whole grid.
    """
    near_sacrum = _near(split.sacrum, ct.spacing_mm, _SI_JOINT_REACH_MM)
    joint_box = bounding_box(near_sacrum, 0) if near_sacrum.any() else None
    for side in ("left", "right"):
        if joint_box is not None:
            ilium = getattr(split, f"ilium_{side}")
            near_ilium = _near(ilium, ct.spacing_mm, _SI_JOINT_REACH_MM, within=near_sacrum)
            joint = near_sacrum[joint_box] & near_ilium[joint_box]
            joint &= ~_any_bone(split, joint_box)
            np.copyto(labels[joint_box], np.uint8(LABELS[f"si_joint_{side}"]), where=joint)
        apex = landmarks[f"sciatic_notch_apex_{side}"]
        index = np.rint(ct.lps_to_index([apex])[0]).astype(int)
        if np.all((index >= 0) & (index < np.array(ct.shape))):
            box, keepout = ball_around(index, _NOTCH_KEEPOUT_MM, ct)
            keepout &= ~_any_bone(split, box)
            np.copyto(labels[box], np.uint8(LABELS[f"sciatic_notch_{side}"]), where=keepout)


def segment_pelvis(
    ct: Volume,
    *,
    bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU,
    masks: str | Path | None = None,
    shape_model: ShapeModel | None = None,
    progress: Progress | None = None,
) -> Anatomy:
    """Segment the pelvis of a CT for biopsy planning.

    Parameters
    ----------
    ct : Volume
        HU, any patient position and storage order.
    bone_threshold_hu : float
        Threshold of the cortical shell (marrow is filled in, not thresholded).
    masks : path, optional
        External masks (a TotalSegmentator output folder or multilabel file) whose risk
        structures are resampled onto the CT.
    shape_model : ShapeModel, optional
        The statistical shape model fitted to the bones (it separates them where no joint
        space shows and places the landmarks). Defaults to the packaged model of the 30
        JHU atlas pelves; any model in atlas correspondence serves, e.g. one built with
        :func:`~bmbx_plan.anatomy.shape_model.build_shape_model` from other pelves.
    progress : callable, optional
        Called with a short description before each step.

    Raises
    ------
    NoPelvisError
        No bone, no pelvis in the field of view, or a pelvis cut off above the iliac
        crest or at the sciatic notch; the message says what is missing and which z-range
        the scan covers.
    """
    canonical = _canonical(ct)
    anatomy = _segment(
        canonical if canonical is not None else ct,
        bone_threshold_hu=bone_threshold_hu,
        shape_model=shape_model,
        progress=progress,
    )
    if canonical is not None and not np.allclose(canonical.affine_lps, ct.affine_lps):
        # back onto the CT's own grid: flips and permutations only, exact
        labels = resample_to(anatomy.labels, ct, order=0).array
        cortex = canonical.with_array(anatomy.cortex.astype(np.uint8))
        anatomy = replace(
            anatomy,
            labels=ct.with_array(labels),
            cortex=np.asarray(resample_to(cortex, ct, order=0).array > 0),
        )
    if masks is not None:
        if progress is not None:
            progress("external masks")
        external = load_external_masks(masks, ct)
        anatomy = replace(anatomy, external=external, notes=(*anatomy.notes, *external.notes))
    return anatomy


#: Array axes (k, j, i) along +S, +P, +L: the order segmentation works in, so that its
#: result does not depend on how the CT stores its voxels.
_CANONICAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _canonical(ct: Volume) -> Volume | None:
    """``ct`` stored in the canonical axis order (None for an oblique grid)."""
    try:
        return ct.reoriented(_CANONICAL_DIRECTION)
    except ValueError:
        return None


def _segment(
    ct: Volume,
    *,
    bone_threshold_hu: float,
    shape_model: ShapeModel | None,
    progress: Progress | None,
) -> Anatomy:
    say = progress or (lambda _msg: None)
    source = ct.info.source or "CT"
    low, high = _z_range(ct)
    span = f"the scan covers z = {low:.0f} to {high:.0f} mm"
    notes: list[str] = []

    say("body")
    body = segment_body(ct)
    notes.extend(body.notes)
    say("bone")
    bone, lumina = bone_and_lumina(
        ct, body=body.body if body.has_air else None, bone_threshold_hu=bone_threshold_hu
    )
    if not bone.any():
        raise NoPelvisError(
            source, f"no bone found (nothing above {bone_threshold_hu:.0f} HU forms bone); {span}"
        )
    # kept as a list of voxels through the separation: there are few, if any
    lumina_at = np.flatnonzero(lumina)
    del lumina
    lumina_ml = float(lumina_at.size) * ct.voxel_volume_mm3 / 1000.0
    if lumina_ml > 1.0:
        notes.append(
            f"found {lumina_ml:.0f} mL of contrast-filled vessels, bowel or bladder: "
            "labelled contrast_lumen, a keep-out"
        )
    say("hip bones and sacrum")
    split, fit, split_notes = _split_bones(
        ct, bone, bone_threshold_hu, say, source, span, shape_model
    )
    del bone
    notes.extend(split_notes)
    parts = {
        "ilium_left": split.ilium_left,
        "ilium_right": split.ilium_right,
        "sacrum": split.sacrum,
    }
    landmarks = pelvis_landmarks(fit, masks=(split.ilium_left, split.ilium_right), grid=ct)
    _check_coverage(ct, {**parts}, landmarks, source)
    split = _without_cavities(split)
    # the hip bones' tables where the needle meets and the core keeps clear of them: at
    # the blurred edge, not where the blur falls below the shell threshold. The sacrum, a
    # keep-out, keeps the blurred layer (as experts draw it): larger is the safe side.
    rim = partial_volume_rim(
        split.ilium_left | split.ilium_right, ct, threshold_hu=bone_threshold_hu
    )
    split = replace(
        split, ilium_left=split.ilium_left & ~rim, ilium_right=split.ilium_right & ~rim
    )
    del rim
    canal = _sacral_canal(split.sacrum, fit, ct, bone_threshold_hu)

    say("cortex, joints and keep-out zones")
    hips = split.ilium_left | split.ilium_right
    # the cortex (array work that releases the GIL) is found while the labels are drawn
    with ThreadPoolExecutor(max_workers=1) as worker:
        cortex_job = worker.submit(cortical_band, hips, ct)
        labels = _body_labels(ct, body, lumina_at)
        _mark_joints_and_notches(labels, split, landmarks, ct)
        cortex = cortex_job.result() & hips
    del hips
    for name in (
        "lumbar_spine",
        "femur_left",
        "femur_right",
        "sacrum",
        "ilium_left",
        "ilium_right",
    ):
        mask = getattr(split, name)
        if mask.any():
            box = bounding_box(mask, 0)
            np.copyto(labels[box], np.uint8(LABELS[name]), where=mask[box])
    np.copyto(labels, np.uint8(LABELS["spinal_canal"]), where=canal)

    # The mid-sagittal plane passes through the sacrum (the spinous processes and the
    # median sacral crest lie on it), whatever the scanner's x = 0 is.
    midline = float(ct.index_to_lps(np.argwhere(split.sacrum))[:, 0].mean())
    return Anatomy(
        labels=ct.with_array(labels),
        cortex=cortex,
        landmarks_lps_mm=landmarks,
        midline_x_mm=midline,
        has_skin=body.has_air,
        shape_fit=fit,
        notes=tuple(notes),
    )
