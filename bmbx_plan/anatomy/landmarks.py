"""Pelvic landmarks from bone masks, by fitting the statistical pelvis shape model.

The shape model (:func:`bmbx_plan.anatomy.shape_model.default_shape_model`) has its
vertices in correspondence with the JHU pelvis atlas, and the landmarks (PSIS, ASIS,
deepest point of the greater sciatic notch, ...) and the sacroiliac joint surfaces are
frozen there as vertex indices (``data/atlas_landmarks.json``). Fitting the model to the
segmented left hip, right hip and sacrum therefore carries every landmark onto the
patient, whatever the scan orientation, and the shape prior fills in what the scan does
not show.

How :func:`fit_shape_model` works
---------------------------------
1. Surface points: the centres of the boundary voxel faces of each mask, in LPS mm (so
   any storage order, flips or spacing are handled by the grid's affine, never by array
   axes), subsampled to a few thousand per bone.
2. Initial pose: the model's left-to-right hip axis is turned onto the data's (this
   corrects yaw and roll, and stays valid when the scan cuts the pelvis), the hip
   centroids are aligned, and when the data are shorter than the model along the
   cranio-caudal axis the model is also tried shifted up and down (a scan cut below the
   crest or above the acetabulum). Each start is refined by a few rigid
   data-to-model ICP iterations and the start with the smallest residual is kept.
3. Iterative fit, per bone and in both directions: model vertices to their nearest
   data point (only where data exist: inside the grid and within a gate of the data,
   so a partial scan does not drag the model) and data points to their nearest model
   vertex (so every visible bone surface is explained), each trimmed by its worst 10 %.
   For these pairs one Gauss-Newton step updates the similarity transform and the mode
   coefficients together (Tikhonov-regularised in standard-deviation units, clipped to
   +-3 SD); residuals are mostly point-to-plane along the model normal. A first stage
   shares one similarity between the three bones; a second stage gives each bone its
   own similarity, weakly tied to the shared one, which absorbs left/right asymmetry
   and sacroiliac posture that the 12 modes of 30 atlas cases do not span.

Why joint steps and pose-free modes: the atlas cases were only centred when the model
was built, so its first modes are mostly pose and size. Alternating a similarity fit
(Umeyama) with a mode fit lets the free pose absorb those modes and stall: on phantoms
drawn from the model it stopped at 6 % too small with the shape modes shrunk to a
third. The modes are therefore used without their first-order similarity part, and pose
and shape are solved in one linear system; phantoms from the model then come back to
a few tenths of a mm. Umeyama remains in use for the coarse rigid start.

Landmarks (:func:`pelvis_landmarks`) are the frozen vertices of the fitted meshes, then
snapped to the centre of the nearest voxel of that side's mask (the same convention as
the phantom's ground truth).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from bmbx_plan.anatomy.shape_model import BONES, ShapeModel, default_shape_model
from bmbx_plan.mesh import Mesh
from bmbx_plan.volume import Volume

__all__ = [
    "LANDMARK_NAMES",
    "SIDES",
    "AtlasLandmarks",
    "ShapeFit",
    "atlas_landmarks",
    "fit_shape_model",
    "mask_surface_points",
    "pelvis_landmarks",
    "si_joint_points",
]

#: Point landmarks on each hip bone; :func:`pelvis_landmarks` returns ``{name}_{side}``.
LANDMARK_NAMES = (
    "psis",
    "asis",
    "sciatic_notch_apex",
    "iliac_crest_top",
    "piis",
    "aiis",
    "ischial_spine",
)

#: Patient sides, in the order of the hip bones in :data:`BONES`.
SIDES = ("left", "right")

_LANDMARK_FILE = "data/atlas_landmarks.json"
# Trimming: the worst 10 % of the correspondences of each bone and direction are dropped.
_TRIM_QUANTILE = 0.9
# A correspondence counts only if shorter than max(floor, factor * median data->model
# distance): early on this is wide (coarse pose), at convergence it hugs the surface and
# excludes model parts outside the scan and data the model does not describe (the
# atlas sacrum is S1-S3 only; real sacrum masks go down to the coccyx).
_GATE_FLOOR_MM = 6.0
_GATE_FACTOR = 3.0
# Default number of surface points per bone for data->model correspondences.
_DEFAULT_POINTS = 3000
# The KD-tree of the data keeps at most this many boundary points per bone; the rest
# would only make nearest-point queries slower without improving them at 1 mm.
_MAX_TREE_POINTS = 20_000
# Coarse pose search: points per bone and rigid iterations per start.
_COARSE_POINTS = 800
_COARSE_ITERATIONS = 8
# A start shifted along S-I is tried when the data are this much shorter than the model.
_SHIFT_MIN_MM = 10.0
# Sacrum re-seating before stage 2 (see _seat_sacrum): start shifts along the pelvis's
# S-I and A-P axes (about one sacral segment and half of one), and how far (median
# vertex move) the best seat must lie from the present one to be tried.
_SACRUM_RISE_MM = (-20.0, -10.0, 0.0, 10.0, 20.0)
_SACRUM_DEPTH_MM = (-10.0, 0.0, 10.0)
_SACRUM_MOVE_MM = 5.0
# Iterations stop when the fitted vertices moved less than this (RMS, mm).
_CONVERGED_MM = (0.3, 0.1)  # shared-pose stage, per-bone stage
# Model->data correspondences use every second vertex (about 4 mm apart on the hips):
# plenty of pairs, half the nearest-point queries.
_MODEL_STRIDE = 2
# More than this fraction of a hip's model surface without data nearby: a partial fit.
_PARTIAL_FRACTION = 0.1
_SD_LIMIT = 3.0
# Weight of the tangential part of a pair's residual relative to its normal part.
_TANGENT_WEIGHT = 0.1
# Per-bone poses: Tikhonov tie to the shared pose (per unit weight, mm^2) and the lever
# arm (mm) that turns rotation and log-scale into displacements.
_BONE_TIE = 0.05
_LEVER_MM = 50.0
# Levenberg damping of the Gauss-Newton steps (relative to the diagonal).
_DAMPING = 1e-3
# Landmarks are snapped to the nearest mask voxel within this distance.
_SNAP_REACH_MM = 10.0


# --------------------------------------------------------------------- frozen indices


@dataclass(frozen=True, eq=False)
class AtlasLandmarks:
    """The landmark vertex indices frozen on the atlas meshes.

    Attributes
    ----------
    points : mapping of str to (int, int)
        ``{name}_{side}`` -> (bone index into :data:`BONES`, vertex index).
    vertex_sets : mapping of str to (int, (K,) ndarray of int64)
        ``si_joint_hip_{side}`` and ``si_joint_sacrum_{side}`` -> (bone index, vertices).
    n_vertices : tuple of int
        Vertex count of each bone's mesh the indices refer to.
    faces_sha256 : tuple of str
        SHA-256 of each bone's triangles (little-endian int64), to check correspondence.
    """

    points: Mapping[str, tuple[int, int]]
    vertex_sets: Mapping[str, tuple[int, NDArray[np.int64]]]
    n_vertices: tuple[int, ...]
    faces_sha256: tuple[str, ...]

    def check_model(self, model: ShapeModel) -> None:
        """Raise ``ValueError`` unless ``model`` is in correspondence with the atlas."""
        for b, bone in enumerate(BONES):
            faces = np.ascontiguousarray(model.faces[b], dtype="<i8")
            if (
                model.mean_lps_mm.shape[1] != self.n_vertices[b]
                or hashlib.sha256(faces.tobytes()).hexdigest() != self.faces_sha256[b]
            ):
                raise ValueError(
                    f"shape model {bone} mesh is not in correspondence with the atlas "
                    "landmark indices (other vertex count or triangles)"
                )


@lru_cache(maxsize=1)
def atlas_landmarks() -> AtlasLandmarks:
    """Read the frozen landmark vertex indices shipped with the package.

    Returns
    -------
    AtlasLandmarks
        Parsed from ``bmbx_plan/anatomy/data/atlas_landmarks.json``.
    """
    text = resources.files("bmbx_plan.anatomy").joinpath(_LANDMARK_FILE).read_text()
    data: dict[str, Any] = json.loads(text)
    points = {
        name: (BONES.index(entry["mesh"]), int(entry["vertex"]))
        for name, entry in data["points"].items()
    }
    sets = {}
    for name, indices in data["vertex_sets"].items():
        side = name.rsplit("_", 1)[1]
        bone = "sacrum" if name.startswith("si_joint_sacrum") else f"{side}_hip"
        sets[name] = (BONES.index(bone), np.asarray(indices, dtype=np.int64))
    return AtlasLandmarks(
        points=points,
        vertex_sets=sets,
        n_vertices=tuple(int(data["n_vertices"][bone]) for bone in BONES),
        faces_sha256=tuple(str(data["faces_sha256"][bone]) for bone in BONES),
    )


# ------------------------------------------------------------------------ the result


@dataclass(frozen=True, eq=False)
class ShapeFit:
    """The shape model fitted to one pelvis.

    Attributes
    ----------
    meshes : tuple of three Mesh
        Fitted left hip, right hip and sacrum, LPS mm, in atlas vertex correspondence.
    transform : (4, 4) ndarray
        The shared similarity transform (model frame -> LPS mm): ``s * R`` in the upper
        3x3 block, translation in the last column.
    bone_transforms : (3, 4, 4) ndarray
        The similarity actually applied to each bone (equal to ``transform`` when the
        per-bone refinement is off).
    coefficients_sd : (M,) ndarray
        Mode coefficients in standard deviations, within +-3, of the model's modes with
        their whole-pelvis similarity part removed (that part is in ``transform``).
    rms_mm, p95_mm : float
        RMS and 95th percentile of the distance from the data surface points the model
        explains (within the correspondence gate) to the fitted surface, mm.
    explained_fraction : float
        Fraction of the data surface points within the gate (the rest is bone the model
        does not describe, e.g. the lower sacrum and coccyx, or segmentation leaks).
    covered_fraction : (3,) ndarray
        Per bone, fraction of the fitted model surface that has data nearby.
    partial : bool
        Whether the masks cover only part of the pelvis (scan cut, or bone missing).
    iterations : int
        Alternating iterations run (both stages).
    grid : Volume
        The grid the masks were defined on (geometry only is used).
    notes : tuple of str
        Sentences on anything to know: partial coverage, unusual orientation, clipped
        modes, no convergence.
    """

    meshes: tuple[Mesh, ...]
    transform: NDArray[np.float64]
    bone_transforms: NDArray[np.float64]
    coefficients_sd: NDArray[np.float64]
    rms_mm: float
    p95_mm: float
    explained_fraction: float
    covered_fraction: NDArray[np.float64]
    partial: bool
    iterations: int
    grid: Volume
    notes: tuple[str, ...]

    @property
    def scale(self) -> float:
        """Isotropic scale of :attr:`transform` (model mm -> patient mm)."""
        return float(np.cbrt(np.linalg.det(self.transform[:3, :3])))


# ---------------------------------------------------------------------- surface points


def mask_surface_points(mask: ArrayLike, grid: Volume) -> tuple[NDArray[np.float64], bool]:
    """Points on the surface of a mask: the centres of its boundary voxel faces, LPS mm.

    A face between a mask voxel and a background 6-neighbour lies on the staircase
    surface of the mask, so unlike boundary voxel centres (half a voxel inside) these
    points do not shrink the bone.

    Parameters
    ----------
    mask : (K, J, I) array_like of bool
        On the voxel grid of ``grid``.
    grid : Volume
        Supplies the geometry (``affine_lps``); its voxel values are not used.

    Returns
    -------
    points : (P, 3) ndarray of float64
        LPS mm of the centre of every face between a mask voxel and a background voxel.
    touches_border : bool
        Whether the mask reaches a face of the grid (the scan cut through the bone).
        The grid's own faces are not bone surface, so they give no points.
    """
    array = np.asarray(mask, dtype=bool)
    if array.shape != grid.shape:
        raise ValueError(f"mask shape {array.shape} differs from the grid's {grid.shape}")
    if not array.any():
        return np.zeros((0, 3)), False
    # Crop to the mask's bounding box plus one background voxel, so the cost scales with
    # the bone, not the scan.
    lo, hi = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        filled = np.flatnonzero(array.any(axis=other))
        lo[axis] = max(int(filled[0]) - 1, 0)
        hi[axis] = min(int(filled[-1]) + 2, array.shape[axis])
    touches = any(array.take(0, axis=a).any() or array.take(-1, axis=a).any() for a in range(3))
    crop = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    # Edge padding: where the crop ends at the grid's edge the bone continues outside (no
    # face there); elsewhere the crop's outer layer is background, which is replicated.
    padded = np.pad(crop, 1, mode="edge")
    core = (slice(1, -1),) * 3
    faces = []
    for axis in range(3):
        for step in (-1, 1):
            shifted = list(core)
            shifted[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            index = np.argwhere(crop & ~padded[tuple(shifted)]).astype(np.float64)
            index[:, axis] += 0.5 * step
            faces.append(index)
    return grid.index_to_lps(np.concatenate(faces) + lo), bool(touches)


# ------------------------------------------------------------------------ the fitting


@dataclass
class _Bone:
    """Data of one bone during the fit."""

    tree: cKDTree
    tree_points: NDArray[np.float64]
    sample: NDArray[np.float64]
    coarse: NDArray[np.float64]


@dataclass
class _Pairs:
    """Correspondences: model vertex ``vertex`` of bone ``bone`` should lie on ``target``."""

    bone: NDArray[np.int64]
    vertex: NDArray[np.int64]
    target: NDArray[np.float64]
    weight: NDArray[np.float64]
    data_to_model_mm: NDArray[np.float64]
    covered: NDArray[np.float64]


def fit_shape_model(
    left_hip: ArrayLike,
    right_hip: ArrayLike,
    sacrum: ArrayLike,
    grid: Volume,
    *,
    model: ShapeModel | None = None,
    n_points: int = _DEFAULT_POINTS,
    regularization_mm2: float = 0.01,
    per_bone: bool = True,
    max_iterations: int = 60,
    seed: int = 0,
) -> ShapeFit:
    """Fit the pelvis shape model to segmented bones.

    Parameters
    ----------
    left_hip, right_hip, sacrum : (K, J, I) array_like of bool
        Masks of the patient's left hip bone (ilium, the side at larger LPS x), right hip
        bone and sacrum, all on ``grid``'s voxels. The hip masks may cover only part of
        the bone (scan cut); the sacrum mask may include the coccyx.
    grid : Volume
        Geometry of the masks. Any storage order works: orientation is read from
        ``grid.affine_lps``, never from the array axes.
    model : ShapeModel, optional
        Defaults to :func:`~bmbx_plan.anatomy.shape_model.default_shape_model`.
    n_points : int
        Surface points per bone used for data->model correspondences.
    regularization_mm2 : float
        Tikhonov weight on the mode coefficients (SD units), per correspondence: one SD
        on a mode costs as much as moving every correspondence by
        ``sqrt(regularization_mm2)`` mm along its normal. The default (0.1 mm) recovers
        in-model shapes to a few tenths of a mm while keeping partial fits sane.
    per_bone : bool
        Run the second stage, where each bone gets its own similarity transform.
    max_iterations : int
        Upper bound on the alternating iterations of each stage.
    seed : int
        Seeds the random choice of surface points (the fit is deterministic).

    Returns
    -------
    ShapeFit

    Raises
    ------
    ValueError
        A mask with another shape than the grid, an empty or tiny mask, or hip masks on
        the wrong sides (left hip not at larger x than the right one: swapped labels or
        a wrong affine).
    """
    model = model if model is not None else default_shape_model()
    if n_points < 100:
        raise ValueError(f"n_points must be at least 100, got {n_points}")
    if regularization_mm2 < 0:
        raise ValueError(f"regularization_mm2 must be >= 0, got {regularization_mm2}")
    rng = np.random.default_rng(seed)
    notes: list[str] = []

    bones: list[_Bone] = []
    touches: list[bool] = []
    for name, mask in zip(BONES, (left_hip, right_hip, sacrum), strict=True):
        points, touch = mask_surface_points(mask, grid)
        if len(points) < 50:
            raise ValueError(f"{name} mask has too few surface voxels ({len(points)})")
        touches.append(touch)
        bones.append(
            _Bone(
                tree=cKDTree(tree_points := _subsample(points, _MAX_TREE_POINTS, rng)),
                tree_points=tree_points,
                sample=_subsample(points, n_points, rng),
                coarse=_subsample(points, _COARSE_POINTS, rng),
            )
        )

    basis = _Basis.of(model)
    start, start_note = _initial_pose(bones, basis.mean)
    notes.extend(start_note)

    state = _refine(
        _State(start, np.repeat(start[np.newaxis], 3, axis=0), np.zeros(model.n_modes)),
        bones,
        basis,
        grid,
        per_bone=False,
        max_iterations=max_iterations,
        regularization_mm2=regularization_mm2,
    )
    if per_bone:
        # Stage 2 from where stage 1 left the sacrum, and from the best re-seated sacrum
        # when that differs; the fit that matches the masks better wins.
        trials = [state]
        seated = _seat_sacrum(bones[2], state.vertices(basis)[2], state.shared[:3, :3], grid)
        if seated is not None:
            moved = state.transforms.copy()
            moved[2] = seated @ moved[2]
            trials.append(_State(state.shared, moved, state.coefficients, state.iterations))
        state = min(
            (
                _refine(
                    trial,
                    bones,
                    basis,
                    grid,
                    per_bone=True,
                    max_iterations=max_iterations,
                    regularization_mm2=regularization_mm2,
                )
                for trial in trials
            ),
            key=lambda fitted: _match_cost(bones, fitted.vertices(basis), grid),
        )
    if not state.converged:
        notes.append(f"the fit did not converge within {max_iterations} iterations per stage")

    vertices = state.vertices(basis)
    meshes = tuple(Mesh(vertices[b], model.faces[b]) for b in range(3))
    pairs = _correspondences(bones, vertices, grid)
    gate = _gate(pairs.data_to_model_mm)
    residuals, explained = [], []
    for b, bone in enumerate(bones):
        near_mm, _ = cKDTree(vertices[b]).query(bone.sample)
        keep = near_mm < gate
        explained.append(keep)
        residuals.append(_surface_distance(meshes[b], bone.sample[keep]))
    residual = np.concatenate(residuals)
    explained_fraction = float(np.mean(np.concatenate(explained)))
    covered = pairs.covered

    partial = bool(any(touches[:2]) or np.any(covered[:2] < 1.0 - _PARTIAL_FRACTION))
    if partial:
        parts = ", ".join(
            f"{BONES[b]} {100 * covered[b]:.0f} %" for b in range(2) if covered[b] < 0.99
        )
        cut = [BONES[b] for b in range(2) if touches[b]]
        notes.append(
            "partial fit: the masks cover only part of the pelvis"
            + (f" ({', '.join(cut)} reach the edge of the scan)" if cut else "")
            + (f"; model surface with data nearby: {parts}" if parts else "")
            + "; the rest is extrapolated by the shape model"
        )
    if explained_fraction < 0.9:
        notes.append(
            f"only {100 * explained_fraction:.0f} % of the mask surface lies within "
            f"{gate:.1f} mm of the fitted model (extra bone in the masks, or a poor fit)"
        )
    clipped = np.flatnonzero(np.abs(state.coefficients) >= _SD_LIMIT - 1e-9)
    if clipped.size:
        notes.append(f"mode(s) {', '.join(str(m) for m in clipped)} clipped at +-{_SD_LIMIT} SD")
    return ShapeFit(
        meshes=meshes,
        transform=state.shared,
        bone_transforms=state.transforms,
        coefficients_sd=state.coefficients,
        rms_mm=float(np.sqrt(np.mean(residual**2))) if residual.size else float("nan"),
        p95_mm=float(np.percentile(residual, 95)) if residual.size else float("nan"),
        explained_fraction=explained_fraction,
        covered_fraction=covered,
        partial=partial,
        iterations=state.iterations,
        grid=grid,
        notes=tuple(notes),
    )


@dataclass(frozen=True, eq=False)
class _Basis:
    """The model as the fit uses it: mean (3, N, 3), pose-free modes (M, 3, N, 3), faces."""

    mean: NDArray[np.float64]
    modes: NDArray[np.float64]
    faces: tuple[NDArray[np.int64], ...]

    @classmethod
    def of(cls, model: ShapeModel) -> _Basis:
        return cls(
            model.mean_lps_mm, _pose_free_modes(model.mean_lps_mm, model.modes_mm), model.faces
        )

    def shape(self, coefficients: NDArray[np.float64]) -> NDArray[np.float64]:
        flat = self.modes.reshape(len(self.modes), -1)
        return self.mean + _combine(coefficients, flat).reshape(self.mean.shape)


@dataclass(frozen=True, eq=False)
class _State:
    """Where the fit stands: shared pose, per-bone poses, mode coefficients."""

    shared: NDArray[np.float64]
    transforms: NDArray[np.float64]
    coefficients: NDArray[np.float64]
    iterations: int = 0
    converged: bool = False

    def vertices(self, basis: _Basis) -> NDArray[np.float64]:
        return _apply_each(self.transforms, basis.shape(self.coefficients))


def _refine(
    state: _State,
    bones: Sequence[_Bone],
    basis: _Basis,
    grid: Volume,
    *,
    per_bone: bool,
    max_iterations: int,
    regularization_mm2: float,
) -> _State:
    """One stage of alternating correspondences and joint Gauss-Newton steps."""
    centres = np.stack([bone.tree_points.mean(axis=0) for bone in bones]) if per_bone else None
    shared, transforms, coefficients = state.shared, state.transforms, state.coefficients
    iterations = state.iterations
    after = _apply_each(transforms, basis.shape(coefficients))
    for _ in range(max_iterations):
        iterations += 1
        before = after
        shared, transforms, coefficients = _gauss_newton_step(
            _correspondences(bones, before, grid),
            vertices=before,
            normals=_vertex_normals(before, basis.faces),
            shared=shared,
            transforms=transforms,
            coefficients=coefficients,
            modes=basis.modes,
            centres=centres,
            regularization_mm2=regularization_mm2,
        )
        after = _apply_each(transforms, basis.shape(coefficients))
        if np.sqrt(np.mean(np.sum((after - before) ** 2, axis=-1))) < _CONVERGED_MM[per_bone]:
            return _State(shared, transforms, coefficients, iterations, converged=True)
    return _State(shared, transforms, coefficients, iterations, converged=False)


def _seat_sacrum(
    bone: _Bone, vertices: NDArray[np.float64], frame: NDArray[np.float64], grid: Volume
) -> NDArray[np.float64] | None:
    """A rigid move (4x4, LPS -> LPS) of the fitted sacrum to another seat, or None.

    The sacrum's height and depth between the hips vary between people more than the
    shape modes reach from the mean shape, and once the correspondence gate has tightened
    the pairs no longer see a sacrum 15-20 mm away: stage 1 can end with the sacrum a
    segment too low. Rigid ICP from starts shifted along the pelvis's own S-I and A-P axes
    (``frame``: columns L, P, S of the fitted pose) finds the seat whose trimmed two-way
    RMS to the sacrum mask is lowest; it is returned
    when it lies more than ``_SACRUM_MOVE_MM`` from the present one, and the caller lets
    the per-bone stage from both seats decide.
    """
    model = vertices[:: 2 * _MODEL_STRIDE]  # about 6 mm apart: plenty for a rigid seat
    axes = frame / np.linalg.norm(frame, axis=0)
    seats = []
    for rise in _SACRUM_RISE_MM:
        for depth in _SACRUM_DEPTH_MM:
            pose = np.eye(4)
            pose[:3, 3] = rise * axes[:, 2] + depth * axes[:, 1]
            for _ in range(_COARSE_ITERATIONS):
                index, target, weight, _ = _closest_both_ways(
                    bone, bone.coarse, _apply(pose, model), grid
                )
                pose = _similarity(model[index], target, weight, scale=False)
            cost = _closest_both_ways(bone, bone.coarse, _apply(pose, model), grid)[3]
            seats.append((cost, pose))
    best = min(seats, key=lambda seat: seat[0])[1]
    moved = np.linalg.norm(_apply(best, model) - model, axis=1)
    return best if np.median(moved) > _SACRUM_MOVE_MM else None


def _closest_both_ways(
    bone: _Bone, data: NDArray[np.float64], vertices: NDArray[np.float64], grid: Volume
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], float]:
    """Trimmed closest-point pairs between ``data`` and one bone's ``vertices``, both ways.

    Returns the vertex index and data point of each pair, weights giving each direction
    the same total, and the RMS of the kept distances. Model vertices outside the scan
    are left out (a cut scan cannot show them).
    """
    near, index = cKDTree(vertices).query(data)
    keep = near <= np.quantile(near, _TRIM_QUANTILE)
    visible = np.flatnonzero(grid.contains_lps(vertices))
    back, found = bone.tree.query(vertices[visible])
    keep_back = back <= np.quantile(back, _TRIM_QUANTILE) if back.size else np.zeros(0, bool)
    parts = [(index[keep], data[keep], near[keep])]
    if keep_back.any():
        parts.append((visible[keep_back], bone.tree_points[found[keep_back]], back[keep_back]))
    return (
        np.concatenate([vertex for vertex, _, _ in parts]),
        np.concatenate([point for _, point, _ in parts]),
        np.concatenate([np.full(len(d), 1 / len(d)) for _, _, d in parts]),
        float(np.sqrt(np.mean([np.mean(d**2) for _, _, d in parts]))),
    )


def _match_cost(bones: Sequence[_Bone], vertices: NDArray[np.float64], grid: Volume) -> float:
    """How well fitted bones match their masks: the RMS of the mask->model and (in-scan)
    model->mask distances, each capped at ``_GATE_FLOOR_MM``, averaged over the bones.

    Capped, not trimmed: a first-pass mask can hold a lot of bone that is not its own (a
    hip mask that took part of the sacrum); a trimmed RMS is then ruled by those far
    points, a capped one by how closely the fit follows the rest.
    """
    costs = []
    for b, bone in enumerate(bones):
        near, _ = cKDTree(vertices[b]).query(bone.sample)
        back, _ = bone.tree.query(vertices[b][grid.contains_lps(vertices[b])])
        both = [np.mean(np.minimum(d, _GATE_FLOOR_MM) ** 2) for d in (near, back) if d.size]
        costs.append(np.sqrt(np.mean(both)))
    return float(np.mean(costs))


def _surface_distance(mesh: Mesh, points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Distance (mm) from each point to the triangles around its nearest vertex, (P,).

    Exact whenever the closest triangle touches the nearest vertex (nearly always for
    points near a fine mesh); otherwise a slight overestimate. Pure numpy, so the fit
    does not pay for loading VTK.
    """
    if len(points) == 0:
        return np.zeros(0)
    verts, faces = mesh.vertices_lps_mm, mesh.faces
    _, nearest = cKDTree(verts).query(points)
    # Vertex -> incident triangles as a padded table (repeat the first where fewer).
    owner = faces.reshape(-1)
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=len(verts))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = int(counts.max())
    slot = np.minimum(np.arange(width), np.maximum(counts[nearest, np.newaxis] - 1, 0))
    tri = faces[order[starts[nearest, np.newaxis] + slot] // 3]  # (P, width, 3)
    corners = verts[tri]  # (P, width, 3 corners, 3)
    dist = _point_triangle_distance(points[:, np.newaxis], corners)
    out = dist.min(axis=1)
    # Vertices in no triangle (none in the atlas) fall back to the vertex distance.
    alone = counts[nearest] == 0
    out[alone] = np.linalg.norm(points[alone] - verts[nearest[alone]], axis=1)
    return np.asarray(out)


def _point_triangle_distance(
    points: NDArray[np.float64], corners: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Exact point-to-triangle distance; ``points`` (..., 3), ``corners`` (..., 3, 3)."""
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    normal = np.cross(b - a, c - a)
    area2 = np.linalg.norm(normal, axis=-1)
    unit = normal / np.where(area2 > 0, area2, 1.0)[..., np.newaxis]
    height = np.einsum("...k,...k->...", points - a, unit)
    foot = points - height[..., np.newaxis] * unit
    # The foot is inside when it lies on the inner side of all three edges.
    inside = area2 > 0
    for p, q in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("...k,...k->...", np.cross(q - p, foot - p), unit) >= 0
    edge = np.full(height.shape, np.inf)
    for p, q in ((a, b), (b, c), (c, a)):
        d = q - p
        length2 = np.einsum("...k,...k->...", d, d)
        t = np.einsum("...k,...k->...", points - p, d) / np.where(length2 > 0, length2, 1.0)
        closest = p + np.clip(t, 0.0, 1.0)[..., np.newaxis] * d
        edge = np.minimum(edge, np.linalg.norm(points - closest, axis=-1))
    return np.asarray(np.where(inside, np.abs(height), edge))


def _combine(
    coefficients: NDArray[np.float64], flat_modes: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``sum_m c_m * mode_m`` for flattened modes (M, K); einsum avoids BLAS threads."""
    return np.asarray(np.einsum("m,mk->k", coefficients, flat_modes))


def _gate(data_to_model_mm: NDArray[np.float64]) -> float:
    return float(max(_GATE_FLOOR_MM, _GATE_FACTOR * np.median(data_to_model_mm)))


def _subsample(
    points: NDArray[np.float64], n: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    if len(points) <= n:
        return points
    return points[np.sort(rng.choice(len(points), size=n, replace=False))]


def _apply(matrix: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(points @ matrix[:3, :3].T + matrix[:3, 3])


def _apply_each(
    transforms: NDArray[np.float64], shape: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Each bone ``b`` of ``shape`` (3, N, 3) mapped by ``transforms[b]``."""
    return (
        np.einsum("bij,bnj->bni", transforms[:, :3, :3], shape) + transforms[:, np.newaxis, :3, 3]
    )


def _rotation_between(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """The smallest rotation taking direction ``a`` to direction ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    sin, cos = float(np.linalg.norm(axis)), float(a @ b)
    if sin < 1e-12:
        return np.eye(3)  # the hip axis is checked to point to +x, so never antiparallel
    k = axis / sin
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sin * cross + (1 - cos) * cross @ cross


def _initial_pose(
    bones: Sequence[_Bone], mean: NDArray[np.float64]
) -> tuple[NDArray[np.float64], list[str]]:
    """Pick the rigid start (4x4, model frame -> LPS) among a few coarse candidates."""
    notes = []
    data_left = bones[0].tree_points.mean(axis=0)
    data_right = bones[1].tree_points.mean(axis=0)
    axis = data_left - data_right
    if axis[0] <= 0:
        raise ValueError(
            "the left hip mask does not lie at larger LPS x than the right one: swapped "
            "masks or a wrong image orientation"
        )
    model_axis = mean[0].mean(axis=0) - mean[1].mean(axis=0)
    rotation = _rotation_between(model_axis, axis)
    tilt = np.degrees(np.arccos(np.clip(axis[0] / np.linalg.norm(axis), -1, 1)))
    if tilt > 30:
        notes.append(
            f"the left-right hip axis is {tilt:.0f} deg from LPS x: unusual patient "
            "position, check the fitted landmarks"
        )
    # Centroids and S-I extent of the two hips only: the sacrum mask may reach the coccyx
    # while the atlas sacrum stops at S3.
    model_hips = mean[:2].reshape(-1, 3) @ rotation.T
    data_hips = np.concatenate([bones[0].tree_points, bones[1].tree_points])
    model_centre = rotation @ (0.5 * (mean[0].mean(axis=0) + mean[1].mean(axis=0)))
    centre = 0.5 * (data_left + data_right) - model_centre
    up = rotation[:, 2]
    shortfall = np.ptp(model_hips @ up) - np.ptp(data_hips @ up)
    shifts = [0.0]
    if shortfall > _SHIFT_MIN_MM:
        shifts += [0.5 * shortfall, -0.5 * shortfall]
    best, best_cost = np.eye(4), np.inf
    for shift in shifts:
        start = np.eye(4)
        start[:3, :3] = rotation
        start[:3, 3] = centre + shift * up
        pose, cost = _coarse_rigid(bones, mean, start)
        if cost < best_cost:
            best, best_cost = pose, cost
    return best, notes


def _coarse_rigid(
    bones: Sequence[_Bone], mean: NDArray[np.float64], start: NDArray[np.float64]
) -> tuple[NDArray[np.float64], float]:
    """Rigid data->model ICP on the mean shape; returns the pose and its trimmed RMS."""
    pose = start
    stride = 3  # every third vertex: about 1.5 mm apart less density, 3x faster
    verts = mean[:, ::stride]
    data = np.concatenate([bone.coarse for bone in bones])
    which = np.concatenate([np.full(len(bone.coarse), b) for b, bone in enumerate(bones)])
    cost = np.inf
    for _ in range(_COARSE_ITERATIONS + 1):
        current = _apply(pose, verts.reshape(-1, 3)).reshape(verts.shape)
        dist = np.empty(len(data))
        match = np.empty((len(data), 3))
        for b in range(3):
            sel = which == b
            dist[sel], idx = cKDTree(current[b]).query(data[sel])
            match[sel] = verts[b][idx]
        keep = dist <= np.quantile(dist, _TRIM_QUANTILE)
        cost = float(np.sqrt(np.mean(dist[keep] ** 2)))
        pose = _similarity(match[keep], data[keep], np.ones(int(keep.sum())), scale=False)
    return pose, cost


def _correspondences(
    bones: Sequence[_Bone], vertices: NDArray[np.float64], grid: Volume
) -> _Pairs:
    """Trimmed, gated closest-point pairs in both directions, per bone.

    Each bone and direction gets the same total weight, so a bone's share of the fit does
    not depend on how many points or vertices it has.
    """
    d2m = []
    m2d = []
    subset = np.arange(0, vertices.shape[1], _MODEL_STRIDE)
    for b, bone in enumerate(bones):
        dist, idx = cKDTree(vertices[b]).query(bone.sample)
        d2m.append((dist, idx))
        m2d.append(bone.tree.query(vertices[b, subset]))
    gate = _gate(np.concatenate([d for d, _ in d2m]))
    bone_ids, vertex_ids, targets, weights = [], [], [], []
    covered = np.zeros(3)
    for b, bone in enumerate(bones):
        # model -> data, only where the scan could show this vertex and shows bone near it
        dist, idx = m2d[b]
        visible = (dist < gate) & grid.contains_lps(vertices[b, subset])
        covered[b] = float(np.mean(visible))
        keep = (
            visible & (dist <= np.quantile(dist[visible], _TRIM_QUANTILE))
            if visible.any()
            else visible
        )
        vidx = subset[keep]
        # data -> model
        dist2, vidx2 = d2m[b]
        near = dist2 < gate
        keep2 = near & (dist2 <= np.quantile(dist2[near], _TRIM_QUANTILE)) if near.any() else near
        for v, target in ((vidx, bone.tree_points[idx[keep]]), (vidx2[keep2], bone.sample[keep2])):
            if len(v) == 0:
                continue
            bone_ids.append(np.full(len(v), b))
            vertex_ids.append(v)
            targets.append(target)
            weights.append(np.full(len(v), 1.0 / len(v)))
    weight = np.concatenate(weights)
    return _Pairs(
        bone=np.concatenate(bone_ids),
        vertex=np.concatenate(vertex_ids),
        target=np.concatenate(targets),
        weight=weight * (len(weight) / weight.sum()),
        data_to_model_mm=np.concatenate([d for d, _ in d2m]),
        covered=covered,
    )


def _similarity(
    source: NDArray[np.float64],
    target: NDArray[np.float64],
    weight: NDArray[np.float64],
    *,
    scale: bool = True,
) -> NDArray[np.float64]:
    """Weighted least-squares similarity (Umeyama 1991) taking ``source`` onto ``target``.

    Returns the 4x4 matrix ``[[s R, t], [0, 1]]``; ``s = 1`` when ``scale`` is False.
    """
    w = weight / weight.sum()
    mu_s = w @ source
    mu_t = w @ target
    src = source - mu_s
    dst = target - mu_t
    cov = (dst * w[:, np.newaxis]).T @ src
    u, sing, vt = np.linalg.svd(cov)
    flip = np.ones(3)
    flip[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rotation = (u * flip) @ vt
    s = float(sing @ flip / (w @ np.sum(src**2, axis=1))) if scale else 1.0
    out = np.eye(4)
    out[:3, :3] = s * rotation
    out[:3, 3] = mu_t - s * rotation @ mu_s
    return out


def _pose_free_modes(mean: NDArray[np.float64], modes: NDArray[np.float64]) -> NDArray[np.float64]:
    """The modes minus their first-order similarity part (translation, rotation, scale of
    the whole pelvis about its centroid), shape (M, 3, N, 3).

    The atlas cases were only centred, so the first modes are 80-90 % pose and size
    (mode 0: 6.5 deg of pelvic tilt per SD; mode 1: -4 % size per SD). The fit has a free
    similarity transform, so leaving that part in the modes makes the penalised modes and
    the free pose explain the same thing: the fit then puts it in the pose and loses the
    true shape part of those modes. Without it, the prior acts on shape only.
    """
    points = mean.reshape(-1, 3)
    centred = points - points.mean(axis=0)
    basis = [np.repeat(np.eye(3)[k][np.newaxis], len(points), axis=0) for k in range(3)]
    basis += [np.cross(np.eye(3)[k], centred) for k in range(3)]
    basis.append(centred)
    q, _ = np.linalg.qr(np.stack([b.reshape(-1) for b in basis], axis=1))
    flat = modes.reshape(len(modes), -1)
    along = np.einsum("mk,kj->mj", flat, q)
    return np.asarray(flat - np.einsum("mj,kj->mk", along, q)).reshape(modes.shape)


def _vertex_normals(
    vertices: NDArray[np.float64], faces: Sequence[NDArray[np.int64]]
) -> NDArray[np.float64]:
    """Unit vertex normals (area-weighted face normals) of each bone, shape (3, N, 3)."""
    # Orientation does not matter here: normals only define the tangent plane of a pair.
    return np.stack([Mesh(v, f).vertex_normals() for v, f in zip(vertices, faces, strict=True)])


def _small_transform(
    rotation_rad: NDArray[np.float64],
    translation_mm: NDArray[np.float64],
    log_scale: float,
    centre: NDArray[np.float64],
) -> NDArray[np.float64]:
    """4x4 ``x -> exp(log_scale) R (x - centre) + centre + translation``, R = exp([w]x)."""
    out = np.eye(4)
    out[:3, :3] = np.exp(log_scale) * Rotation.from_rotvec(rotation_rad).as_matrix()
    out[:3, 3] = centre + translation_mm - out[:3, :3] @ centre
    return out


def _deviation(
    transform: NDArray[np.float64], shared: NDArray[np.float64], centre: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Parameters (rotation vector, translation of ``centre``, log scale) of the 7-vector
    taking the shared pose to ``transform``."""
    diff = transform @ np.linalg.inv(shared)
    scale = float(np.cbrt(np.linalg.det(diff[:3, :3])))
    rotvec = Rotation.from_matrix(diff[:3, :3] / scale).as_rotvec()
    moved = diff[:3, :3] @ centre + diff[:3, 3] - centre
    return np.concatenate([rotvec, moved, [np.log(scale)]])


def _pose_jacobian(
    vertices: NDArray[np.float64], centre: NDArray[np.float64]
) -> NDArray[np.float64]:
    """d(vertex)/d(rotation vector, translation, log scale) about ``centre``, (P, 3, 7)."""
    rel = vertices - centre
    jac = np.zeros((len(vertices), 3, 7))
    # d(w x rel)/dw = -[rel]x
    jac[:, 0, 1], jac[:, 0, 2] = rel[:, 2], -rel[:, 1]
    jac[:, 1, 0], jac[:, 1, 2] = -rel[:, 2], rel[:, 0]
    jac[:, 2, 0], jac[:, 2, 1] = rel[:, 1], -rel[:, 0]
    jac[:, :, 3:6] = np.eye(3)
    jac[:, :, 6] = rel
    return jac


def _gauss_newton_step(
    pairs: _Pairs,
    *,
    vertices: NDArray[np.float64],
    normals: NDArray[np.float64],
    shared: NDArray[np.float64],
    transforms: NDArray[np.float64],
    coefficients: NDArray[np.float64],
    modes: NDArray[np.float64],
    centres: NDArray[np.float64] | None,
    regularization_mm2: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """One joint update of the pose(s) and the mode coefficients for fixed pairs.

    Solving pose and shape together (rather than alternating a similarity fit and a mode
    fit) matters because the atlas modes also carry size and orientation: alternating
    steps trade one for the other and crawl along that valley.

    Each pair's residual is measured mostly along the model normal (point-to-plane) with
    a small tangential part, so surfaces can slide into place while staying well posed.
    ``centres`` (one per bone) switches on one extra similarity per bone, tied to the
    shared pose by a weak Tikhonov term.
    """
    n_modes = len(modes)
    n_pose = 7 if centres is None else 28
    pivot = np.average(pairs.target, axis=0, weights=pairs.weight)
    x = vertices[pairs.bone, pairs.vertex]
    n = normals[pairs.bone, pairs.vertex]
    blocks = [_pose_jacobian(x, pivot)]
    if centres is not None:
        # One 7-column block per bone, zero for the other bones' pairs.
        local = _pose_jacobian(x, centres[pairs.bone])
        onehot = pairs.bone[:, np.newaxis] == np.arange(3)
        blocks.append(
            (local[:, :, np.newaxis, :] * onehot[:, np.newaxis, :, np.newaxis]).reshape(
                len(x), 3, 21
            )
        )
    linear = transforms[pairs.bone, :3, :3]  # s R of each pair's bone
    blocks.append(linear @ modes[:, pairs.bone, pairs.vertex].transpose(1, 2, 0))
    jac = np.concatenate(blocks, axis=2)
    residual = pairs.target - x
    # Whitening: sqrt of the metric n n^T + a (I - n n^T), times sqrt(weight).
    root_a = np.sqrt(_TANGENT_WEIGHT)
    outer = n[:, :, np.newaxis] * n[:, np.newaxis, :]
    metric = (1 - root_a) * outer + root_a * np.eye(3)
    metric *= np.sqrt(pairs.weight)[:, np.newaxis, np.newaxis]
    jw = (metric @ jac).reshape(-1, jac.shape[2])
    rw = (metric @ residual[:, :, np.newaxis]).reshape(-1)
    # einsum rather than BLAS: a tall-skinny product is where multithreaded BLAS on a
    # busy machine loses 100x to thread contention (measured 0.9 s vs 5 ms).
    normal_matrix = np.einsum("pi,pj->ij", jw, jw)
    rhs = np.einsum("pi,p->i", jw, rw)
    total = pairs.weight.sum()
    modes_slice = slice(n_pose, n_pose + n_modes)
    normal_matrix[modes_slice, modes_slice] += regularization_mm2 * total * np.eye(n_modes)
    rhs[modes_slice] -= regularization_mm2 * total * coefficients
    current_dev = np.zeros((3, 7))
    if centres is not None:
        # Tie each bone to the shared pose: rotation and scale as displacements at the
        # lever arm, translation in mm.
        lever = np.array([_LEVER_MM] * 3 + [1.0] * 3 + [_LEVER_MM]) ** 2
        for b in range(3):
            cols = slice(7 * (b + 1), 7 * (b + 2))
            tie = _BONE_TIE * pairs.weight[pairs.bone == b].sum() * lever
            current_dev[b] = _deviation(transforms[b], shared, centres[b])
            normal_matrix[cols, cols] += np.diag(tie)
            rhs[cols] -= tie * current_dev[b]
    normal_matrix[np.diag_indices_from(normal_matrix)] *= 1.0 + _DAMPING
    step = np.linalg.solve(normal_matrix, rhs)
    update = _small_transform(step[:3], step[3:6], float(step[6]), pivot)
    new_shared = update @ shared
    if centres is None:
        new_transforms = np.repeat(new_shared[np.newaxis], 3, axis=0)
    else:
        new_transforms = np.stack(
            [
                _small_transform(
                    step[7 * (b + 1) : 7 * (b + 1) + 3],
                    step[7 * (b + 1) + 3 : 7 * (b + 1) + 6],
                    float(step[7 * (b + 1) + 6]),
                    centres[b],
                )
                @ update
                @ transforms[b]
                for b in range(3)
            ]
        )
    new_coefficients = np.clip(coefficients + step[modes_slice], -_SD_LIMIT, _SD_LIMIT)
    return new_shared, new_transforms, new_coefficients


# -------------------------------------------------------------------------- landmarks


def pelvis_landmarks(
    fit: ShapeFit,
    *,
    masks: tuple[ArrayLike, ArrayLike] | None = None,
    grid: Volume | None = None,
    reach_mm: float = _SNAP_REACH_MM,
) -> dict[str, NDArray[np.float64]]:
    """Named landmarks of the fitted pelvis, LPS mm.

    Parameters
    ----------
    fit : ShapeFit
        From :func:`fit_shape_model` with an atlas-correspondent model.
    masks : (left hip, right hip) pair of (K, J, I) bool arrays, optional
        When given, each landmark is moved to the centre of the nearest voxel of its
        side's mask (the convention of the phantom's ground truth). Landmarks outside the
        grid (a partial scan) or with no mask voxel within ``reach_mm`` stay where the
        fitted model puts them.
    grid : Volume, optional
        Geometry of ``masks``; defaults to ``fit.grid``.
    reach_mm : float
        Largest snapping distance, mm.

    Returns
    -------
    dict of str to (3,) ndarray of float64
        ``{name}_{side}`` for every name in :data:`LANDMARK_NAMES` (``psis``, ``asis``,
        ``sciatic_notch_apex``, ``iliac_crest_top``, ``piis``, ``aiis``,
        ``ischial_spine``) and side in ``left``, ``right``.
    """
    frozen = atlas_landmarks()
    for b, mesh in enumerate(fit.meshes):
        if mesh.n_vertices != frozen.n_vertices[b]:
            raise ValueError(f"fitted {BONES[b]} mesh is not in atlas correspondence")
    out: dict[str, NDArray[np.float64]] = {}
    for side_index, side in enumerate(SIDES):
        names = [f"{name}_{side}" for name in LANDMARK_NAMES]
        points = np.stack(
            [fit.meshes[frozen.points[n][0]].vertices_lps_mm[frozen.points[n][1]] for n in names]
        )
        if masks is not None:
            points = _snap(
                np.asarray(masks[side_index], dtype=bool), grid or fit.grid, points, reach_mm
            )
        out.update(zip(names, points, strict=True))
    return out


def si_joint_points(fit: ShapeFit) -> dict[str, NDArray[np.float64]]:
    """The sacroiliac joint surfaces of the fitted pelvis, LPS mm.

    Parameters
    ----------
    fit : ShapeFit

    Returns
    -------
    dict of str to (K, 3) ndarray of float64
        ``si_joint_hip_left``, ``si_joint_hip_right`` (auricular surface vertices of each
        hip bone) and ``si_joint_sacrum_left``, ``si_joint_sacrum_right`` (the sacrum's
        auricular surfaces), as fitted mesh vertices: keep-out geometry for the planner.
    """
    frozen = atlas_landmarks()
    return {
        name: fit.meshes[bone].vertices_lps_mm[indices].copy()
        for name, (bone, indices) in frozen.vertex_sets.items()
    }


def _snap(
    mask: NDArray[np.bool_], grid: Volume, points: NDArray[np.float64], reach_mm: float
) -> NDArray[np.float64]:
    """Each point moved to the centre of the nearest ``mask`` voxel within ``reach_mm``."""
    if mask.shape != grid.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the grid's {grid.shape}")
    out = points.copy()
    half = reach_mm / grid.spacing_mm
    # A landmark outside the scan keeps the model's estimate: the nearest voxel would be
    # on the cut face, which is not where the landmark is.
    inside = grid.contains_lps(points)
    for n, point in enumerate(points):
        if not inside[n]:
            continue
        centre = grid.lps_to_index(point[np.newaxis])[0]
        lo = np.clip(np.floor(centre - half).astype(int), 0, np.asarray(grid.shape))
        hi = np.clip(np.ceil(centre + half).astype(int) + 1, 0, np.asarray(grid.shape))
        box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        index = np.argwhere(box)
        if len(index) == 0:
            continue
        lps = grid.index_to_lps(index + lo)
        dist = np.linalg.norm(lps - point, axis=1)
        best = int(np.argmin(dist))
        if dist[best] <= reach_mm:
            out[n] = lps[best]
    return out
