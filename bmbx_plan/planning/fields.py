"""Distance maps of one side, computed once on an isotropic LPS planning grid.

The planner and the checker read every constraint off these maps by nearest-voxel
lookup, so a search over 10^5 trajectories and the check of one trajectory use the same
numbers. The grid is aligned with LPS and its origin snapped to multiples of its spacing:
the same anatomy in LPS gives the same maps, whatever the patient position or the order
in which the CT stores its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from bmbx_plan.anatomy import LABELS, Anatomy, label_mask
from bmbx_plan.anatomy._grid import ball
from bmbx_plan.anatomy.bone import bounding_box
from bmbx_plan.anatomy.external import TRAVERSED_RISK_GROUPS
from bmbx_plan.anatomy.landmarks import si_joint_points
from bmbx_plan.distance import distance_mm
from bmbx_plan.planning.parameters import NEEDLES, PlanningParameters, Side
from bmbx_plan.resample import resample_to
from bmbx_plan.volume import Volume

__all__ = ["BLOCKED_MM", "SideFields", "side_fields"]

FloatArray = NDArray[np.float64]
Mask = NDArray[np.bool_]

#: Path slack of voxels a needle may not cross at all (bone, gas, keep-out zones).
BLOCKED_MM = -1000.0
# Around the PSIS the planning grid reaches this far beyond the entry search radius
# laterally, anteriorly and cranio-caudally (the core lies within about 40 mm of its
# cortex entry), and medially at least this far beyond the midline (skin entries of a
# slim patient lie near it, 30-50 mm medial to the PSIS). Medially, posteriorly and
# cranio-caudally it also holds the longest path the longest catalogue needle of this
# diameter can take back from a cortex entry within the cone of directions. Samples
# outside the grid count as blocked, and a path does not reach the skin by leaving the
# grid: the planner never proposes a path it could not see.
_REACH_MM = 60.0
_MEDIAL_REACH_MM = 50.0
# The outer-cortex normal is the gradient of the ilium mask smoothed over this scale
# (voxel staircases would tilt a raw gradient by up to 45 degrees).
_NORMAL_SIGMA_MM = 2.0
# Distances beyond these are never binding (the largest margin is 10 mm, the score
# saturates 20 mm beyond a margin), so they are computed only up to here.
_CAP_MM = 40.0
# The planner keeps away from the SI joint including its ligaments: behind the auricular
# surfaces the bones stay 4-6 mm apart around the interosseous ligament. Soft tissue this
# close to both the sacrum and the ilium counts as joint (the segmented cleft is the part
# within 4 mm).
_SI_LIGAMENT_MM = 6.0
_DEPTH_CAP_MM = 10.0


@dataclass(frozen=True, eq=False)
class SideFields:
    """Everything the evaluation of one side's trajectories needs.

    All arrays share the shape of ``grid`` (an LPS-aligned isotropic grid: k -> S,
    j -> P, i -> L). Distances are in mm from voxel centres to the nearest boundary of a
    structure (half a voxel less than the distance between voxel centres).

    Attributes
    ----------
    side : Side
    grid : Volume
        The planning grid; its array holds the resampled label map.
    inside : (K, J, I) bool ndarray
        Inside the body (the skin lies where a path leaves it).
    path_slack_mm : (K, J, I) float32 ndarray
        On soft tissue: distance to the nearest structure to avoid minus that
        structure's margin; :data:`BLOCKED_MM` on anything a needle may not cross. The
        target ilium is not an obstacle here (see ``ilium_depth_mm``).
    ilium_depth_mm : (K, J, I) float32 ndarray
        Signed distance to the surface of the target ilium, positive inside (the core's
        clearance).
    entry_depth_mm : (K, J, I) float32 ndarray
        The same for the ilium as the needle meets it, closed over pits narrower than
        the needle: where the needle enters the bone and how it approaches.
    marrow : (K, J, I) bool ndarray
        Inside the ilium's cortical shell.
    si_distance_mm : (K, J, I) float32 ndarray
        Distance to this side's SI joint or the sacrum.
    surface_smooth : (K, J, I) float32 ndarray
        The ilium as the needle meets it, smoothed: its gradient gives the outward
        normal (:meth:`normals_at`).
    landmarks_lps_mm : dict of str to (3,) ndarray
        ``psis``, ``asis``, ``sciatic_notch_apex`` of this side.
    midline_x_mm : float
    has_skin : bool
    lying : {"prone", "supine", "decubitus"} or None
        How the patient lay for the scan, from its DICOM PatientPosition (None when
        unknown).
    """

    side: Side
    grid: Volume
    inside: Mask
    path_slack_mm: NDArray[np.float32]
    ilium_depth_mm: NDArray[np.float32]
    entry_depth_mm: NDArray[np.float32]
    marrow: Mask
    si_distance_mm: NDArray[np.float32]
    surface_smooth: NDArray[np.float32]
    landmarks_lps_mm: dict[str, FloatArray]
    midline_x_mm: float
    has_skin: bool
    lying: str | None
    _obstacles: dict[str, Mask] = field(repr=False, default_factory=dict)

    @property
    def spacing_mm(self) -> float:
        """Voxel size of the planning grid."""
        return float(self.grid.spacing_mm[0])

    def _index(self, points_lps_mm: NDArray[np.floating]) -> NDArray[np.floating]:
        """Continuous grid index (k, j, i) of LPS points: ((z, y, x) - origin) / spacing."""
        origin = self.grid.origin_lps_mm.astype(np.float32)
        scale = np.float32(1.0 / self.spacing_mm)
        return (points_lps_mm[..., ::-1] - origin[::-1]) * scale

    def lookup(self, points_lps_mm: NDArray[np.floating]) -> tuple[NDArray[np.intp], Mask]:
        """Flat indices of the voxels nearest to ``points`` (``(..., 3)``) and whether
        each point lies on the grid (off-grid points get index 0)."""
        kji = np.rint(self._index(points_lps_mm)).astype(np.intp)
        return self._flat(kji, self.grid.shape)

    @staticmethod
    def _flat(
        kji: NDArray[np.intp], shape: tuple[int, ...], upper: int = 0
    ) -> tuple[NDArray[np.intp], Mask]:
        """Flat indices of grid indices ``kji`` (``(..., 3)``) on a grid of ``shape``, and
        whether each lies on it at least ``upper`` voxels below its upper faces (others
        get index 0)."""
        k, j, i = kji[..., 0], kji[..., 1], kji[..., 2]
        n_k, n_j, n_i = (n - upper for n in shape)
        ok = (k >= 0) & (k < n_k) & (j >= 0) & (j < n_j) & (i >= 0) & (i < n_i)
        flat = (k * shape[1] + j) * shape[2] + i
        return np.where(ok, flat, 0), ok

    def interpolate(
        self, field: NDArray[np.float32], points_lps_mm: NDArray[np.floating]
    ) -> tuple[NDArray[np.float32], Mask]:
        """Trilinear value of ``field`` at ``points`` (``(..., 3)``) and whether each point
        lies between voxel centres of the grid (elsewhere the value is 0).

        Distances read this way change continuously with the point: a needle moved by a
        fraction of a voxel sees its clearance move by about that fraction (at most
        sqrt(3) times it), where the nearest voxel can jump by a whole voxel.
        """
        kji = self._index(points_lps_mm)
        base = np.floor(kji)
        weight = (kji - base).astype(np.float32)
        shape = self.grid.shape
        flat, ok = self._flat(base.astype(np.intp), shape, upper=1)  # all 8 corners on it
        strides = np.array([shape[1] * shape[2], shape[2], 1])
        values = field.reshape(-1)
        # per axis, the weights of its lower and upper neighbour
        axes = [(1.0 - weight[..., a], weight[..., a]) for a in range(3)]
        out = np.zeros(ok.shape, np.float32)
        for ck, cj, ci in np.ndindex(2, 2, 2):
            w = axes[0][ck] * axes[1][cj] * axes[2][ci]
            out += w * values[flat + int(np.dot((ck, cj, ci), strides))]
        return np.where(ok, out, np.float32(0.0)), ok

    def normals_at(self, points_lps_mm: NDArray[np.floating]) -> NDArray[np.float32]:
        """Outward unit normals (LPS, ``(..., 3)``) of the ilium surface at the voxels
        nearest to ``points``: minus the gradient of ``surface_smooth`` by central
        differences (one-sided on the grid's faces); zero far from the surface."""
        kji = np.rint(self._index(points_lps_mm)).astype(np.intp)
        flat, ok = self._flat(kji, self.grid.shape)
        values = self.surface_smooth.reshape(-1)
        gradient = np.zeros((*flat.shape, 3), np.float32)
        for axis, n in enumerate(self.grid.shape):
            stride = int(np.prod(self.grid.shape[axis + 1 :]))
            at = np.where(ok, kji[..., axis], 0)
            below = np.maximum(at - 1, 0)
            above = np.minimum(at + 1, n - 1)
            rise = values[flat + (above - at) * stride] - values[flat + (below - at) * stride]
            # grid axes (k, j, i) are (S, P, L): the LPS gradient is the reversed one
            gradient[..., 2 - axis] = rise / np.maximum(above - below, 1)
        norm = np.linalg.norm(gradient, axis=-1, keepdims=True)
        normal = np.where(norm > 1e-3, -gradient / np.maximum(norm, 1e-12), 0.0)
        return np.where(ok[..., None], normal, 0.0).astype(np.float32)

    @cached_property
    def structure_trees(self) -> dict[str, cKDTree]:
        """KD-trees of the boundary voxels of every structure reported in
        ``clearances_mm`` (built on first use)."""
        trees = {}
        for name, mask in self._obstacles.items():
            box = bounding_box(mask, 1)
            shell = mask[box] & ~ndimage.binary_erosion(mask[box])
            corner = np.array([b.start for b in box])
            points = self.grid.index_to_lps(np.argwhere(shell) + corner)
            if len(points):
                trees[name] = cKDTree(points)
        return trees


def _planning_grid(
    ct: Volume, anatomy: Anatomy, side: Side, parameters: PlanningParameters
) -> Volume:
    """The isotropic LPS-aligned box around this side's PSIS that the planner looks at."""
    grid_mm = float(parameters.grid_mm)
    psis = anatomy.landmarks_lps_mm[f"psis_{side.value}"]
    bounds = ct.bounds_lps_mm()
    ls = side.lateral_sign
    radius = parameters.entry_search_radius_mm
    reach = radius + _REACH_MM
    path = max(
        n.usable_length_mm
        for n in (parameters.needle, *NEEDLES.values())
        if n.outer_diameter_mm == parameters.needle.outer_diameter_mm
    )
    medial = radius + path * np.sin(np.radians(parameters.max_axial_angle_deg))
    cranio = max(reach, radius + path * np.sin(np.radians(parameters.max_craniocaudal_limit_deg)))
    x_lateral = psis[0] + ls * reach
    x_medial = min(
        psis[0] - ls * max(reach, medial),
        anatomy.midline_x_mm - ls * _MEDIAL_REACH_MM,
        key=lambda v: ls * v,
    )
    lo = np.array([min(x_lateral, x_medial), psis[1] - reach, psis[2] - cranio])
    hi = np.array(
        [
            max(x_lateral, x_medial),
            min(float(bounds[1, 1]), psis[1] + radius + path),
            psis[2] + cranio,
        ]
    )
    lo = np.maximum(lo, bounds[0] - grid_mm)
    hi = np.minimum(hi, bounds[1] + grid_mm)
    lo = np.floor(lo / grid_mm) * grid_mm
    hi = np.ceil(hi / grid_mm) * grid_mm
    size_xyz = np.maximum(np.rint((hi - lo) / grid_mm).astype(int) + 1, 1)
    return Volume.from_components(
        np.zeros(tuple(size_xyz[::-1]), np.uint8), spacing_mm=(grid_mm,) * 3, origin_lps_mm=lo
    )


def _distance_outside(mask: Mask, spacing_mm: float, cap_mm: float) -> NDArray[np.float32]:
    """Distance (mm) from each voxel centre outside ``mask`` to the mask's boundary, 0
    inside, at most ``cap_mm`` (computed only where it can be smaller: in the mask's
    bounding box grown by the cap)."""
    out = np.full(mask.shape, cap_mm, np.float32)
    if not mask.any():
        return out
    box = bounding_box(mask, int(np.ceil(cap_mm / spacing_mm)) + 1)
    d = distance_mm(~mask[box], spacing_mm)
    d -= np.float32(0.5 * spacing_mm)
    np.clip(d, 0.0, cap_mm, out=d)
    out[box] = d
    return out


def _auricular_points(anatomy: Anatomy, side: Side) -> FloatArray:
    """Auricular (SI joint) surface points of the fitted hip bone and sacrum of ``side``."""
    if anatomy.shape_fit is None:
        return np.zeros((0, 3))
    points = si_joint_points(anatomy.shape_fit)
    return np.concatenate(
        [points[f"si_joint_hip_{side.value}"], points[f"si_joint_sacrum_{side.value}"]]
    )


def _rasterized(points_lps_mm: FloatArray, grid: Volume) -> Mask:
    """The voxels of ``grid`` that contain at least one of the points."""
    out = np.zeros(grid.shape, bool)
    index = np.rint(grid.lps_to_index(points_lps_mm)).astype(np.intp).reshape(-1, 3)
    index = index[np.all((index >= 0) & (index < np.array(grid.shape)), axis=1)]
    out[tuple(index.T)] = True
    return out


def _depth_inside(mask: Mask, spacing_mm: float) -> NDArray[np.float32]:
    """Distance (mm) from each voxel centre inside ``mask`` to its boundary, 0 outside."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    box = bounding_box(mask, 1)
    d = distance_mm(mask[box], spacing_mm)
    d -= np.float32(0.5 * spacing_mm)
    np.maximum(d, 0.0, out=d)
    out[box] = d
    return out


def _ligament_space(
    sacrum: Mask, ilium: Mask, ilium_distance_mm: NDArray[np.float32], spacing_mm: float
) -> Mask:
    """Soft tissue within :data:`_SI_LIGAMENT_MM` of both the sacrum and the ilium (whose
    distance map, capped beyond that, is given)."""
    near_sacrum = _distance_outside(sacrum, spacing_mm, _SI_LIGAMENT_MM + spacing_mm)
    near = (near_sacrum <= _SI_LIGAMENT_MM) & (ilium_distance_mm <= _SI_LIGAMENT_MM)
    return near & ~sacrum & ~ilium


def _needle_surface(ilium: Mask, radius_mm: float, spacing_mm: float) -> Mask:
    """The ilium as the needle meets it: closed by a ball of the needle's radius.

    Pits and canals in the cortex narrower than the needle (nutrient canals, one-voxel
    notches of a segmentation) cannot take its tip; the needle meets the bone where it
    bridges them, so depths and normals are measured from that surface.
    """
    pad = int(np.ceil(radius_mm / spacing_mm)) + 1
    box = bounding_box(ilium, pad)
    element = ball(radius_mm, np.full(3, spacing_mm))
    out = ilium.copy()
    out[box] |= ndimage.binary_closing(ilium[box], structure=element, border_value=0)
    return out


def _smoothed(mask: Mask, spacing_mm: float) -> NDArray[np.float32]:
    """``mask`` smoothed over :data:`_NORMAL_SIGMA_MM` (0 far from it): the gradient of
    this is the surface normal without the tilt of voxel staircases."""
    out = np.zeros(mask.shape, np.float32)
    sigma = _NORMAL_SIGMA_MM / spacing_mm
    box = bounding_box(mask, int(np.ceil(3 * sigma)) + 2)
    out[box] = ndimage.gaussian_filter(mask[box].astype(np.float32), sigma)
    return out


def _lying(position: str) -> str | None:
    """How the patient lay, from a DICOM PatientPosition: HFP, FFS, HFDL, LFP ... (the
    first two letters say which end entered the gantry first, the rest how they lay)."""
    return {"P": "prone", "S": "supine", "DL": "decubitus", "DR": "decubitus"}.get(
        position.strip().upper()[2:]
    )


def side_fields(anatomy: Anatomy, side: Side | str, parameters: PlanningParameters) -> SideFields:
    """Build the planning maps of one side.

    Parameters
    ----------
    anatomy : Anatomy
        From :func:`bmbx_plan.segment_pelvis`.
    side : Side or {"left", "right"}
    parameters : PlanningParameters
        Gives the margins and the grid size.
    """
    side = Side.parse(side)
    ct = anatomy.labels
    g = float(parameters.grid_mm)
    grid = _planning_grid(ct, anatomy, side, parameters)
    # one resampling: labels (< 128) with the cortex in the top bit, 255 outside the CT
    code = np.asarray(anatomy.labels.array, np.uint8) | (anatomy.cortex.astype(np.uint8) << 7)
    coded = np.asarray(resample_to(ct.with_array(code), grid, order=0, fill_value=255).array)
    in_view = coded != 255
    lab = np.where(in_view, coded & 0x7F, 0).astype(np.uint8)
    cortex = in_view & (coded >= 128)
    s, o = side.value, side.other.value
    ilium = lab == LABELS[f"ilium_{s}"]
    if not ilium.any():
        raise ValueError(f"the {s} ilium is not in view around its PSIS")

    obstacles: dict[str, Mask] = {
        "sacrum": label_mask(lab, "sacrum"),
        "si_joint": lab == LABELS[f"si_joint_{s}"],
        "sciatic_notch": lab == LABELS[f"sciatic_notch_{s}"],
        "lumbar_spine": lab == LABELS["lumbar_spine"],
        "femur": lab == LABELS[f"femur_{s}"],
        f"ilium_{o}": lab == LABELS[f"ilium_{o}"],
        "bowel_gas": lab == LABELS["bowel_gas"],
        "contrast_lumen": lab == LABELS["contrast_lumen"],
    }
    # The segmented joint is only the visible cleft; the fitted pelvis adds both
    # auricular surfaces, where the joint is even when it is narrow or partly fused.
    obstacles["si_joint"] |= _rasterized(_auricular_points(anatomy, side), grid)
    ilium_distance = _distance_outside(ilium, g, _DEPTH_CAP_MM)
    obstacles["si_joint"] |= _ligament_space(obstacles["sacrum"], ilium, ilium_distance, g)
    if anatomy.external is not None:
        for group, mask in anatomy.external.risk_masks().items():
            if group in TRAVERSED_RISK_GROUPS:
                continue
            volume = ct.with_array(mask.astype(np.uint8))
            obstacles[group] = resample_to(volume, grid, order=0).array > 0
    margin_of = {
        "sacrum": "si_joint",
        "si_joint": "si_joint",
        "sciatic_notch": None,  # the keep-out region already is the margin
        "lumbar_spine": "bone",
        "femur": "bone",
        f"ilium_{o}": "bone",
        "bowel_gas": "bowel",
        "contrast_lumen": "vessels",  # an enhanced vessel, or bowel or bladder: 5 mm all
        "vessels": "vessels",
        "bowel": "bowel",
        "bladder": "bladder",
    }
    # One distance transform per distinct margin, over the union of its structures; the
    # sacrum and the joint (the SI joint margin) are also the core's SI distance.
    si_distance = _distance_outside(obstacles["sacrum"] | obstacles["si_joint"], g, _CAP_MM)
    slack = si_distance - np.float32(parameters.margin("si_joint"))
    by_margin: dict[float, Mask] = {}
    for name, mask in obstacles.items():
        key = margin_of.get(name, "vessels")
        if key == "si_joint":
            continue
        margin = 0.0 if key is None else parameters.margin(key)
        by_margin[margin] = by_margin.get(margin, np.zeros(lab.shape, bool)) | mask
    for margin, mask in by_margin.items():
        far = _distance_outside(mask, g, _CAP_MM)
        np.minimum(slack, far - np.float32(margin), out=slack)

    if anatomy.has_skin:
        inside = in_view & (lab != 0) & (lab != LABELS["table"])
        # neither air outside the patient nor the CT table is an obstacle: a given skin
        # entry may lie a hair outside the skin, and on a supine scan the posterior skin
        # rests on the table, which is not there when the biopsy is done prone
        passable = (lab == LABELS["body"]) | ilium | (lab == 0) | (lab == LABELS["table"])
    else:
        inside = in_view
        passable = ((lab == 0) | ilium) & in_view
    slack[~passable] = BLOCKED_MM

    surface = _needle_surface(ilium, parameters.needle.radius_mm, g)
    depth = _depth_inside(ilium, g) - ilium_distance
    entry_depth = _depth_inside(surface, g) - _distance_outside(surface, g, _DEPTH_CAP_MM)

    landmarks = {
        "psis": anatomy.landmarks_lps_mm[f"psis_{s}"],
        "asis": anatomy.landmarks_lps_mm[f"asis_{s}"],
        "sciatic_notch_apex": anatomy.landmarks_lps_mm[f"sciatic_notch_apex_{s}"],
    }
    lying = _lying(anatomy.labels.info.patient_position)
    return SideFields(
        side=side,
        grid=grid.with_array(lab),
        inside=inside,
        path_slack_mm=slack,
        ilium_depth_mm=depth,
        entry_depth_mm=entry_depth,
        marrow=ilium & ~cortex,
        si_distance_mm=si_distance,
        surface_smooth=_smoothed(surface, g),
        landmarks_lps_mm={k: np.asarray(v, float) for k, v in landmarks.items()},
        midline_x_mm=float(anatomy.midline_x_mm),
        has_skin=anatomy.has_skin,
        lying=lying,
        _obstacles={k: v for k, v in obstacles.items() if v.any()},
    )
