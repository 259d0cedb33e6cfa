"""Real pelvis shapes from the JHU I-STAR atlas: loading, blending, placing, landmarks.

An atlas case is a folder holding ``left_hip.vtk``, ``right_hip.vtk`` and ``sacrum.vtk``
(LPS mm; +x = patient left, +y = posterior, +z = head). Every atlas mesh has 5000
vertices in correspondence across cases, so landmarks are stored once as vertex indices
(``bmbx_plan/anatomy/data/atlas_landmarks.json``) and hold on every case and on any blend of cases.

How the landmark indices were picked
------------------------------------
Once, by :func:`derive_landmark_indices`, on the mean of the 30 atlas cases (each case
rigidly aligned to the mean, iterated to convergence; the mean keeps the average scanner
orientation of the supine patients). For each hip bone, with ``H`` its height (z extent)
and the *lateral view* meaning the (y, z) projection:

* ``iliac_crest_top``: the highest vertex (max z).
* ``psis`` / ``asis``: the most posterior (max y) / most anterior (min y) vertex among
  those in the upper 40 % of the bone (``z >= z_min + 0.6 H``), i.e. the posterior and
  anterior ends of the iliac crest (the pubis, lower down, is excluded).
* Posterior border: per 2 mm slab of z, the most posterior vertex (the lateral-view
  silhouette), from the PSIS down.
* ``sciatic_notch_apex``: the deepest point of the greater sciatic notch: first the
  silhouette point farthest inside the silhouette's convex hull; then ``piis`` = the
  silhouette point between PSIS and that point standing out most posteriorly from their
  chord; the ischial tuberosity = the silhouette point below it standing out most from
  the chord to the lowest silhouette point, and ``ischial_spine`` = the point between
  notch and tuberosity standing out most from their chord; finally the apex is re-picked
  as the silhouette point deepest (most anterior) from the chord PIIS -> ischial spine.
* ``aiis``: on the anterior silhouette (min y per slab), the notch under the ASIS is the
  most posterior point within ``0.15 H`` below the ASIS; the AIIS is the most anterior
  point within ``0.15 H`` below that notch.
* ``si_joint_hip`` / ``si_joint_sacrum`` vertex sets (per side): hip vertices closer than
  5 mm to that case's sacrum surface in at least half of the atlas cases, and sacrum
  vertices closer than 5 mm to that side's hip surface likewise.

The frozen indices are checked by ``tests/test_atlas.py``, which re-runs the derivation on
the atlas (when ``../shared/data`` is present) and requires every re-derived landmark to
lie within 5 mm of the frozen one on the mean shape.

Meshes not in atlas correspondence (another vertex count or another triangulation) get
their landmarks from the same geometric rules applied to the shape itself (see
:func:`landmarks`); that needs a roughly supine LPS-oriented pelvis and gives no
correspondence guarantee.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bmbx_plan.io.errors import InputError
from bmbx_plan.mesh import Mesh, distance_to_surface_mm, read_mesh

__all__ = [
    "BONES",
    "LANDMARK_NAMES",
    "PelvisShape",
    "atlas_cases",
    "centred",
    "derive_landmark_indices",
    "interpolate",
    "landmarks",
    "load_pelvis",
    "mean_shape",
    "si_joint_vertices",
    "transformed",
]

#: The three meshes of a case, also their file stems.
BONES = ("left_hip", "right_hip", "sacrum")

#: Point landmarks :func:`landmarks` returns, ``{name}_{side}`` for each side.
LANDMARK_NAMES = (
    "psis",
    "asis",
    "sciatic_notch_apex",
    "iliac_crest_top",
    "piis",
    "aiis",
    "ischial_spine",
)

_SIDES = ("left", "right")
_SLAB_MM = 2.0  # lateral-view silhouette sampling; about half the atlas edge length
_UPPER_FRACTION = 0.6  # crest region: upper 40 % of the hip bone's height
_AIIS_BAND = 0.15  # ASIS -> notch -> AIIS are each about 0.1 H apart
_SI_DISTANCE_MM = 5.0  # joint space is 1-4 mm in the atlas (median 3 mm)
_SI_MAJORITY = 0.5


@dataclass(frozen=True)
class PelvisShape:
    """The three bones of one pelvis, in their real relative position (LPS mm).

    Attributes
    ----------
    left_hip, right_hip, sacrum : Mesh
        The left hip bone has larger x than the right one; the sacrum (S1-S3 in the
        atlas) is posterior (larger y).
    """

    left_hip: Mesh
    right_hip: Mesh
    sacrum: Mesh

    def meshes(self) -> Iterator[tuple[str, Mesh]]:
        """``(name, mesh)`` for each bone, in :data:`BONES` order."""
        for name in BONES:
            yield name, getattr(self, name)

    def all_vertices_lps_mm(self) -> NDArray[np.float64]:
        """All vertices of the three meshes stacked, ``(N_left + N_right + N_sacrum, 3)``."""
        return np.concatenate([mesh.vertices_lps_mm for _, mesh in self.meshes()])

    def bounds_lps_mm(self) -> NDArray[np.float64]:
        """LPS bounding box of the three meshes, ``[[min xyz], [max xyz]]`` in mm."""
        boxes = np.stack([mesh.bounds_lps_mm() for _, mesh in self.meshes()])
        return np.stack([boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)])


def atlas_cases(root: str | Path) -> list[str]:
    """Names of the sub-folders of ``root`` that hold a complete case, sorted.

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder per case, each with ``left_hip.vtk``,
        ``right_hip.vtk`` and ``sacrum.vtk``.

    Raises
    ------
    InputError
        ``root`` is not a folder or holds no complete case.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(folder, "atlas folder does not exist")
    cases = sorted(
        sub.name
        for sub in folder.iterdir()
        if sub.is_dir() and all((sub / f"{bone}.vtk").is_file() for bone in BONES)
    )
    if not cases:
        raise InputError(
            folder, f"no case folders with {', '.join(b + '.vtk' for b in BONES)} found"
        )
    return cases


def load_pelvis(folder: str | Path) -> PelvisShape:
    """Read one case folder (``left_hip.vtk``, ``right_hip.vtk``, ``sacrum.vtk``).

    Raises
    ------
    InputError
        Missing folder or file (the error names it) or an unreadable mesh; also when the
        left hip bone does not lie at larger x than the right one (a RAS or mirrored
        file would otherwise swap the sides silently).
    """
    case = Path(folder)
    if not case.is_dir():
        raise InputError(case, "pelvis case folder does not exist")
    meshes = {}
    for bone in BONES:
        path = case / f"{bone}.vtk"
        if not path.is_file():
            raise InputError(path, f"missing {bone} mesh of the pelvis case")
        meshes[bone] = read_mesh(path)
    shape = PelvisShape(**meshes)
    left_x = shape.left_hip.vertices_lps_mm[:, 0].mean()
    right_x = shape.right_hip.vertices_lps_mm[:, 0].mean()
    if left_x <= right_x:
        raise InputError(
            case,
            f"left_hip (mean x {left_x:.1f} mm) is not left of right_hip (mean x "
            f"{right_x:.1f} mm); meshes must be in LPS (+x = patient left)",
        )
    return shape


def interpolate(shapes: Sequence[PelvisShape], weights: ArrayLike) -> PelvisShape:
    """Vertex-wise weighted blend of shapes in correspondence.

    Parameters
    ----------
    shapes : sequence of PelvisShape
        All with the same vertex counts and identical faces, bone by bone.
    weights : (S,) array_like
        One weight per shape, summing to 1 (an affine combination, so the result does
        not shrink or move; negative weights extrapolate).

    Returns
    -------
    PelvisShape
        Vertices ``sum_s w_s * v_s``, faces of the first shape. Shapes are blended in
        their own coordinates: align or :func:`centred` them first if their positions
        differ (atlas cases have unrelated table positions).

    Raises
    ------
    ValueError
        No shapes, wrong number of weights, weights not summing to 1, or shapes not in
        correspondence (the bone and the mismatch are named).
    """
    if len(shapes) == 0:
        raise ValueError("interpolate needs at least one shape")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (len(shapes),) or not np.all(np.isfinite(w)):
        raise ValueError(f"interpolate needs {len(shapes)} finite weights, got {w.shape}")
    if not np.isclose(w.sum(), 1.0, atol=1e-9):
        raise ValueError(f"interpolation weights must sum to 1, got {w.sum():.6g}")
    blended = {}
    for bone in BONES:
        meshes = [getattr(s, bone) for s in shapes]
        first = meshes[0]
        for n, mesh in enumerate(meshes[1:], start=1):
            if mesh.n_vertices != first.n_vertices:
                raise ValueError(
                    f"shapes not in correspondence: {bone} of shape {n} has "
                    f"{mesh.n_vertices} vertices, shape 0 has {first.n_vertices}"
                )
            if not np.array_equal(mesh.faces, first.faces):
                raise ValueError(
                    f"shapes not in correspondence: {bone} of shape {n} has other faces "
                    "than shape 0"
                )
        stacked = np.stack([m.vertices_lps_mm for m in meshes])
        blended[bone] = first.with_vertices(np.tensordot(w, stacked, axes=1))
    return PelvisShape(**blended)


def mean_shape(shapes: Sequence[PelvisShape], *, align: bool = True) -> PelvisShape:
    """Mean of shapes in correspondence, optionally after rigid alignment.

    Parameters
    ----------
    shapes : sequence of PelvisShape
    align : bool, optional, keyword-only
        Rigidly align each shape (all three bones together, no scaling) to the running
        mean and iterate (generalised Procrustes). The mean is anchored to the average
        position and orientation of the translation-centred inputs, centred at the origin.
        Without it, the plain vertex-wise mean of the inputs as they are.
    """
    n = len(shapes)
    if n == 0:
        raise ValueError("mean_shape needs at least one shape")
    if not align:
        return interpolate(shapes, np.full(n, 1.0 / n))
    points = [s.all_vertices_lps_mm() for s in shapes]
    points = [p - p.mean(axis=0) for p in points]
    mean = np.mean(points, axis=0)
    for _ in range(10):
        aligned = [_rigid_fit(p, mean) for p in points]
        new_mean = np.mean(aligned, axis=0)
        converged = np.max(np.abs(new_mean - mean)) < 1e-6
        mean = new_mean
        if converged:
            break
    matrices = [_rigid_matrix(p, mean) for p in points]
    moved = [transformed(s, _translation(-s.all_vertices_lps_mm().mean(axis=0))) for s in shapes]
    return interpolate(
        [transformed(s, m) for s, m in zip(moved, matrices, strict=True)], np.full(n, 1 / n)
    )


def transformed(shape: PelvisShape, matrix: ArrayLike) -> PelvisShape:
    """Apply one 4x4 affine (LPS mm -> LPS mm) to all three bones.

    Use it for rotations, scaling and asymmetry. A mirroring matrix (negative
    determinant) keeps the triangles outward-facing but does NOT swap the left and right
    hip bones: swap them yourself if you mirror across the mid-sagittal plane.

    Examples
    --------
    >>> shift = np.eye(4); shift[:3, 3] = (0.0, 0.0, 10.0)  # 10 mm toward the head
    """
    m = np.asarray(matrix, dtype=np.float64)
    return PelvisShape(**{name: mesh.transformed(m) for name, mesh in shape.meshes()})


def centred(
    shape: PelvisShape,
    *,
    at_lps_mm: ArrayLike = (0.0, 0.0, 0.0),
    reference: Literal["psis_midpoint", "centroid"] = "psis_midpoint",
) -> PelvisShape:
    """Translate a shape so a reference point lands on ``at_lps_mm``.

    Parameters
    ----------
    shape : PelvisShape
    at_lps_mm : (3,) array_like, optional, keyword-only
        Where the reference point goes, LPS mm.
    reference : {"psis_midpoint", "centroid"}, optional, keyword-only
        ``"psis_midpoint"``: midpoint between the two PSIS (see :func:`landmarks`);
        ``"centroid"``: mean of all vertices of the three bones.
    """
    target = np.asarray(at_lps_mm, dtype=np.float64).reshape(3)
    if reference == "psis_midpoint":
        points = landmarks(shape)
        current = 0.5 * (points["psis_left"] + points["psis_right"])
    elif reference == "centroid":
        current = shape.all_vertices_lps_mm().mean(axis=0)
    else:
        raise ValueError(f"reference must be 'psis_midpoint' or 'centroid', got {reference!r}")
    return transformed(shape, _translation(target - current))


# ----------------------------------------------------------------------- landmarks


def landmarks(shape: PelvisShape) -> dict[str, NDArray[np.float64]]:
    """Named anatomical points of a pelvis, LPS mm.

    Parameters
    ----------
    shape : PelvisShape

    Returns
    -------
    dict of str to (3,) ndarray
        Keys ``{name}_{side}`` for every name in :data:`LANDMARK_NAMES` and side in
        ``left``, ``right``: ``psis_left``, ``psis_right``, ``asis_left``, ...,
        ``sciatic_notch_apex_left``, ``sciatic_notch_apex_right``,
        ``iliac_crest_top_left``, ... Each point is a vertex of that side's hip mesh.

    Notes
    -----
    Hip meshes with the atlas's vertex count and triangulation use the frozen vertex
    indices (exact correspondence). Any other mesh gets the geometric rules of the module
    docstring applied to its own vertices, which assumes a roughly supine LPS-oriented
    pelvis (no gross rotation).
    """
    out: dict[str, NDArray[np.float64]] = {}
    for side in _SIDES:
        hip: Mesh = getattr(shape, f"{side}_hip")
        indices = _frozen_point_indices(f"{side}_hip", hip) or _point_rules(hip.vertices_lps_mm)
        for name in LANDMARK_NAMES:
            out[f"{name}_{side}"] = hip.vertices_lps_mm[indices[name]].copy()
    return out


def si_joint_vertices(
    shape: PelvisShape, side: Literal["left", "right"]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Vertex indices of the sacroiliac joint surfaces on one side.

    Parameters
    ----------
    shape : PelvisShape
    side : {"left", "right"}

    Returns
    -------
    hip_indices : (A,) ndarray of int64
        Vertices of the hip bone's auricular surface (indices into that hip mesh).
    sacrum_indices : (B,) ndarray of int64
        Vertices of the sacrum's auricular surface on that side (indices into the sacrum).

    Notes
    -----
    Atlas-correspondent meshes use the frozen sets; other meshes get the vertices within
    5 mm of the other bone's surface on this shape.
    """
    if side not in _SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    hip: Mesh = getattr(shape, f"{side}_hip")
    data = _landmark_data()
    hip_ok = _in_correspondence(f"{side}_hip", hip)
    sacrum_ok = _in_correspondence("sacrum", shape.sacrum)
    if hip_ok and sacrum_ok:
        sets = data["vertex_sets"]
        return (
            np.asarray(sets[f"si_joint_hip_{side}"], dtype=np.int64),
            np.asarray(sets[f"si_joint_sacrum_{side}"], dtype=np.int64),
        )
    near_hip = distance_to_surface_mm(shape.sacrum, hip.vertices_lps_mm) < _SI_DISTANCE_MM
    near_sacrum = distance_to_surface_mm(hip, shape.sacrum.vertices_lps_mm) < _SI_DISTANCE_MM
    return np.flatnonzero(near_hip).astype(np.int64), np.flatnonzero(near_sacrum).astype(np.int64)


def derive_landmark_indices(shapes: Sequence[PelvisShape]) -> dict[str, Any]:
    """Re-run the landmark pick on shapes in correspondence (the atlas cases).

    Parameters
    ----------
    shapes : sequence of PelvisShape

    Returns
    -------
    dict
        ``{"points": {"psis_left": {"mesh": "left_hip", "vertex": k}, ...},
        "vertex_sets": {"si_joint_hip_left": [...], ...}}``: the structure of
        ``bmbx_plan/anatomy/data/atlas_landmarks.json``. Point landmarks come from the
        geometric rules on the aligned mean shape, SI sets from a majority vote over the
        individual shapes.
    """
    mean = mean_shape(shapes)
    points: dict[str, dict[str, Any]] = {}
    for side in _SIDES:
        bone = f"{side}_hip"
        indices = _point_rules(getattr(mean, bone).vertices_lps_mm)
        for name in LANDMARK_NAMES:
            points[f"{name}_{side}"] = {"mesh": bone, "vertex": int(indices[name])}
    votes: dict[str, NDArray[np.float64]] = {}
    for shape in shapes:
        for side in _SIDES:
            hip: Mesh = getattr(shape, f"{side}_hip")
            near_hip = distance_to_surface_mm(shape.sacrum, hip.vertices_lps_mm)
            near_sacrum = distance_to_surface_mm(hip, shape.sacrum.vertices_lps_mm)
            for key, dist in (
                (f"si_joint_hip_{side}", near_hip),
                (f"si_joint_sacrum_{side}", near_sacrum),
            ):
                votes[key] = votes.get(key, 0.0) + (dist < _SI_DISTANCE_MM) / len(shapes)
    vertex_sets = {
        key: np.flatnonzero(frac >= _SI_MAJORITY).tolist() for key, frac in sorted(votes.items())
    }
    return {"points": points, "vertex_sets": vertex_sets}


def _point_rules(vertices: NDArray[np.float64]) -> dict[str, int]:
    """The geometric landmark rules (module docstring) on one hip bone's vertices."""
    y, z = vertices[:, 1], vertices[:, 2]
    height = float(z.max() - z.min())
    upper = np.flatnonzero(z >= z.min() + _UPPER_FRACTION * height)
    crest_top = int(np.argmax(z))
    psis = int(upper[np.argmax(y[upper])])
    asis = int(upper[np.argmin(y[upper])])

    # posterior silhouette in the lateral (y, z) view, top to bottom, from the PSIS down
    back = _silhouette(vertices, posterior=True)
    back = back[z[back] < z[psis]]
    back = np.concatenate([[psis], back])
    profile = np.column_stack([y[back], z[back]])
    hull = _posterior_hull(profile)
    depth = _depth_below_hull(profile, hull)
    apex0 = int(np.argmax(depth))
    piis = _most_prominent(profile, 0, apex0)
    tuberosity = _most_prominent(profile, apex0, len(profile) - 1)
    spine = _most_prominent(profile, apex0, tuberosity)
    chord = _posterior_offset(profile[piis : spine + 1], profile[piis], profile[spine])
    apex = piis + int(np.argmin(chord))

    # anterior silhouette: the notch under the ASIS, then the AIIS below it
    front = _silhouette(vertices, posterior=False)
    zf = z[front]
    below_asis = front[(zf < z[asis]) & (zf >= z[asis] - _AIIS_BAND * height)]
    if len(below_asis) == 0:
        raise ValueError("no anterior border found below the ASIS")
    notch = int(below_asis[np.argmax(y[below_asis])])
    band = front[(zf < z[notch]) & (zf >= z[notch] - _AIIS_BAND * height)]
    if len(band) == 0:
        raise ValueError("no anterior border found below the ASIS-AIIS notch")
    aiis = int(band[np.argmin(y[band])])
    return {
        "psis": psis,
        "asis": asis,
        "sciatic_notch_apex": int(back[apex]),
        "iliac_crest_top": crest_top,
        "piis": int(back[piis]),
        "aiis": aiis,
        "ischial_spine": int(back[spine]),
    }


def _silhouette(vertices: NDArray[np.float64], *, posterior: bool) -> NDArray[np.int64]:
    """Per z slab, the most posterior (or anterior) vertex; ordered from the top down."""
    y, z = vertices[:, 1], vertices[:, 2]
    slab = np.floor((z.max() - z) / _SLAB_MM).astype(np.int64)
    key = -y if posterior else y
    order = np.lexsort((key, slab))  # by slab, then most extreme first
    first = np.concatenate([[True], slab[order][1:] != slab[order][:-1]])
    return order[first].astype(np.int64)


def _posterior_hull(profile: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices of the convex chain bounding a top-down (y, z) profile on the +y side."""
    hull: list[int] = []
    for n in range(len(profile)):
        while len(hull) >= 2:
            a, b = profile[hull[-2]], profile[hull[-1]]
            c = profile[n]
            # b is not on the +y hull when it lies on the -y side of the chord a -> c
            if _posterior_offset(b[None], a, c)[0] <= 0:
                hull.pop()
            else:
                break
        hull.append(n)
    return np.asarray(hull, dtype=np.int64)


def _posterior_offset(
    points: NDArray[np.float64], a: NDArray[np.float64], b: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Signed distance (mm) of (y, z) points from the line a -> b, positive toward +y."""
    d = b - a
    normal = np.array([-d[1], d[0]])  # perpendicular to the chord
    if normal[0] < 0:
        normal = -normal
    length = float(np.hypot(*d))
    if length == 0:
        return points[:, 0] - a[0]
    return ((points - a) @ normal) / length


def _depth_below_hull(
    profile: NDArray[np.float64], hull: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Distance (mm) of each profile point inside the hull chain bridging it."""
    depth = np.zeros(len(profile))
    for a, b in itertools.pairwise(hull):
        span = slice(int(a), int(b) + 1)
        depth[span] = -_posterior_offset(profile[span], profile[a], profile[b])
    return depth


def _most_prominent(profile: NDArray[np.float64], start: int, stop: int) -> int:
    """Profile index in [start, stop] standing out most on the +y side of their chord."""
    lo, hi = sorted((start, stop))
    if hi - lo < 2:
        return lo
    offsets = _posterior_offset(profile[lo : hi + 1], profile[lo], profile[hi])
    return lo + int(np.argmax(offsets[1:-1])) + 1


# -------------------------------------------------------------------- frozen data


@lru_cache(maxsize=1)
def _landmark_data() -> dict[str, Any]:
    text = resources.files("bmbx_plan.anatomy").joinpath("data/atlas_landmarks.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _faces_sha256(faces: NDArray[np.int64]) -> str:
    return hashlib.sha256(np.ascontiguousarray(faces, dtype="<i8").tobytes()).hexdigest()


def _in_correspondence(bone: str, mesh: Mesh) -> bool:
    data = _landmark_data()
    return (
        mesh.n_vertices == data["n_vertices"][bone]
        and _faces_sha256(mesh.faces) == data["faces_sha256"][bone]
    )


def _frozen_point_indices(bone: str, mesh: Mesh) -> dict[str, int] | None:
    if not _in_correspondence(bone, mesh):
        return None
    side = bone.removesuffix("_hip")
    points = _landmark_data()["points"]
    return {name: int(points[f"{name}_{side}"]["vertex"]) for name in LANDMARK_NAMES}


# ------------------------------------------------------------------ rigid helpers


def _translation(offset: ArrayLike) -> NDArray[np.float64]:
    m = np.eye(4)
    m[:3, 3] = np.asarray(offset, dtype=np.float64).reshape(3)
    return m


def _rigid_matrix(source: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """4x4 rotation + translation minimising the squared distance source -> target."""
    cs, ct = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = ct - rotation @ cs
    return m


def _rigid_fit(source: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    m = _rigid_matrix(source, target)
    return source @ m[:3, :3].T + m[:3, 3]
