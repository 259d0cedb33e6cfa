"""An independent second opinion on a plan's hard constraints: surface meshes and VTK.

The search (:mod:`bmbx_plan.planning.evaluate`) reads every constraint off distance maps
on a resampled isotropic grid, by nearest-voxel lookup at points sampled along the
needle. This module shares none of that code. It builds triangle surfaces of the label
masks on the CT's own grid (marching cubes, :func:`bmbx_plan.mesh.mesh_from_mask`) and
answers the same questions the way VTK users do:

* line versus surface: :class:`vtkModifiedBSPTree` ``IntersectWithLine`` (every crossing
  of a segment with a surface, exact on the triangles);
* point to surface: :class:`vtkImplicitPolyDataDistance` (exact signed distance to the
  nearest triangle, negative inside);
* the outer-cortex normal: area-weighted normals of the triangles around the crossing
  (a :class:`vtkStaticPointLocator` over the triangle centroids);
* angles, lengths and the distance to the sciatic-notch apex: closed-form geometry.

:func:`check_candidate` judges one trajectory against prebuilt locators (a
:class:`SideScene`): a per-candidate Python loop over it is the baseline that existing
open planners use, and ``benchmarks/bench_plan.py`` times it against the vectorised
search. :func:`cross_check` recomputes a plan's hard constraints with it and compares
them with the planner's verdicts.

Tolerance
---------
Two methods that see the same anatomy through different voxels cannot agree to better
than those voxels. The planner resamples the labels onto its planning grid by nearest
neighbour (a boundary moves by up to half a CT voxel diagonal) and looks every map up
at the nearest planning voxel (up to half a planning voxel diagonal); the meshes here
lie on the CT voxel boundaries. Values measured in mm therefore agree when they differ
by at most ``tolerance_mm = (|CT spacing| + sqrt(3) grid_mm) / 2``
(:func:`cross_check_tolerance_mm`). A blocked path length has two uncertain ends and
gets twice that. The SI joint distances (and the path clearance, which the SI margin
often binds) get another half planning voxel diagonal plus half a planning voxel: the
planner marks the fitted auricular surface points straight on its grid, a whole voxel
per point. The marrow fraction agrees when the planner's value lies between the share
of core points more than ``tolerance_mm`` inside the marrow surface and the share of
points less than ``tolerance_mm`` outside it. The needle's angles are pure geometry
(:data:`CRANIOCAUDAL_TOLERANCE_DEG`); the cortex incidence depends on how each method
estimates the normal of a staircase surface (:data:`INCIDENCE_TOLERANCE_DEG`). A
constraint agrees when both methods give the same verdict, or when their values lie
within these tolerances (a borderline case that either verdict fits).

What is compared
----------------
The label masks are meshed as they are, the way the planner's maps see them; the
needle's path may not cross any labelled structure but the body and the target ilium
(nor leave the body), keeps each structure's margin (the SI joint's, the bone's, the
bowel's or, for contrast-filled lumina, the vessels'; imported risk structures their
own), and the SI joint includes the auricular surfaces of the fitted pelvis
(:attr:`Anatomy.shape_fit`), as in the planner. A segmentation that leaves soft-tissue
pockets inside a hip bone gives both methods internal surfaces to measure the core's
clearance to; ``side_scene(..., fill_cavities=True)`` meshes the bones without them (the
clearance to the outer boundary only).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIdList, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData, vtkStaticPointLocator
from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance
from vtkmodules.vtkFiltersFlowPaths import vtkModifiedBSPTree
from vtkmodules.vtkFiltersModeling import vtkSelectEnclosedPoints

from bmbx_plan.anatomy import LABEL_GROUPS, LABELS, Anatomy, label_mask
from bmbx_plan.mesh import Mesh, mesh_from_mask
from bmbx_plan.planning.constraints import ConstraintResult
from bmbx_plan.planning.parameters import PlanningParameters, Side
from bmbx_plan.planning.results import CrossCheck, Trajectory
from bmbx_plan.volume import Volume

__all__ = [
    "CRANIOCAUDAL_TOLERANCE_DEG",
    "INCIDENCE_TOLERANCE_DEG",
    "METHOD",
    "CandidateCheck",
    "SideScene",
    "Surface",
    "check_candidate",
    "compare",
    "cross_check",
    "cross_check_tolerance_mm",
    "side_scene",
    "skin_entry",
]

FloatArray = NDArray[np.float64]

#: How :class:`~bmbx_plan.planning.results.CrossCheck` names this method.
METHOD = (
    "surface meshes of the CT-grid labels (marching cubes); vtkModifiedBSPTree line "
    "intersections, vtkImplicitPolyDataDistance distances, mesh-patch cortex normals"
)
#: Both methods compute the cranio-caudal angle from the same two points; only the
#: rounding of the reported points separates them.
CRANIOCAUDAL_TOLERANCE_DEG = 0.1
#: Both methods estimate the outer-cortex normal of a staircase voxel surface at the
#: same scale (see :data:`NORMAL_SIGMA_MM`), but the planner from a smoothed mask on
#: its planning grid at the voxel nearest the entry, this module from the CT-grid
#: triangles around the crossing. On the seed-0 phantom (2 x 2 x 2.5 mm voxels) the two
#: incidences of 376 random candidates differ by 1.3 deg (median), 4.1 deg (90th
#: percentile) and 9.1 deg (99th percentile); the largest differences sit on the
#: curved rim of the crest, where a mm along the surface turns the normal by degrees.
INCIDENCE_TOLERANCE_DEG = 10.0
#: The outer-cortex normal is the area-weighted mean of the triangle normals with a
#: Gaussian weight of this width around the crossing (the planner smooths its ilium
#: mask over the same 2 mm), out to three widths: a single voxel step would tilt the
#: normal of one triangle by up to 45 deg.
NORMAL_SIGMA_MM = 2.0
# Points are sampled along the needle this far apart for the distance queries: a distance
# changes by at most 1 mm per mm, so the sampled minimum is at most 0.25 mm too large.
_STEP_MM = 0.5
# VTK's parametric tolerance of line/triangle intersection.
_LINE_TOLERANCE = 1e-9
# Comparisons of a value with its limit allow for float rounding.
_EPS = 1e-6

#: Constraints this module recomputes, their unit and whether a value passes at most
#: (True) or at least (False) the limit.
_RULES: dict[str, tuple[str, bool]] = {
    "needle_length": ("mm", True),
    "soft_tissue_path": ("mm", True),
    "path_clearance": ("mm", False),
    "cortex_incidence": ("deg", True),
    "craniocaudal_angle": ("deg", True),
    "core_length": ("mm", False),
    "core_cortex_clearance": ("mm", False),
    "core_in_marrow": ("fraction", False),
    "sciatic_notch": ("mm", False),
    "si_joint": ("mm", False),
}


# --------------------------------------------------------------------------- surfaces


def _polydata(mesh: Mesh) -> Any:
    """A ``vtkPolyData`` of triangles sharing the mesh's arrays (copied)."""
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices_lps_mm), deep=True))
    cells = vtkCellArray()
    offsets = np.arange(0, 3 * mesh.n_faces + 1, 3, dtype=np.int64)
    cells.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_to_vtkIdTypeArray(np.ascontiguousarray(mesh.faces.ravel()), deep=True),
    )
    polydata = vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(cells)
    return polydata


@dataclass(frozen=True)
class _Profile:
    """A segment against one surface (see :meth:`Surface.along`)."""

    inside: NDArray[np.bool_]  # per query point
    crossings: FloatArray  # mm from the segment's start, sorted
    inside_mm: float  # length of the segment inside


@dataclass(frozen=True, eq=False)
class Surface:
    """One closed surface with its VTK locators.

    Attributes
    ----------
    name : str
        Label name (``"sacrum"``, ``"ilium_left"`` ...), ``"body"`` for the skin, or an
        imported risk group.
    mesh : Mesh
        Outward-facing triangles in LPS mm.
    margin : str or None
        The :attr:`PlanningParameters.margins_mm` key that sets the needle's clearance to
        this structure on its way to the bone (None: only crossing it is checked).
    blocks : bool
        Whether the needle may not cross it at all (bone, gas, joint, keep-out zone).
    closed : bool
        A closed surface has an inside; an open patch (the fitted SI joint surfaces) only
        a distance and crossings.

    Examples
    --------
    A 4 mm cube and a segment through it along x:

    >>> cube = Mesh(
    ...     [[x, y, z] for x in (0, 4) for y in (0, 4) for z in (0, 4)],
    ...     [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
    ...      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
    ... )
    >>> surface = Surface("cube", cube)
    >>> start, end = np.array([-1.0, 1.0, 2.5]), np.array([5.0, 1.0, 2.5])
    >>> profile = surface.along(start, end, np.array([0.0, 3.0, 6.0]))
    >>> profile.crossings.tolist(), profile.inside.tolist(), profile.inside_mm
    ([1.0, 5.0], [False, True, False], 4.0)
    >>> surface.distance_mm(np.array([[6.0, 1.0, 2.5], [2.0, 2.0, 2.0]])).tolist()
    [2.0, 2.0]
    """

    name: str
    mesh: Mesh
    margin: str | None = None
    blocks: bool = True
    closed: bool = True
    _data: Any = field(init=False, repr=False)
    _bounds: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_data", _polydata(self.mesh))
        object.__setattr__(self, "_bounds", self.mesh.bounds_lps_mm())

    # The locators are built on first use: the body surface (millions of triangles on a
    # fine CT) is only ever crossed, never measured.
    @cached_property
    def _tree(self) -> Any:
        tree = vtkModifiedBSPTree()
        tree.SetDataSet(self._data)
        tree.BuildLocator()
        return tree

    @cached_property
    def _distance(self) -> Any:
        distance = vtkImplicitPolyDataDistance()
        distance.SetInput(self._data)
        return distance

    @cached_property
    def _enclosed(self) -> Any:
        enclosed = vtkSelectEnclosedPoints()
        # hits closer than this share of the surface's size count as one; the default
        # (1e-3, a fraction of a mm on a pelvis) merges both walls of a thin shell
        enclosed.SetTolerance(1e-9)
        enclosed.Initialize(self._data)
        return enclosed

    def build_locators(self, *, distance: bool = True) -> None:
        """Build the locators now (line intersection, inside test and, with
        ``distance``, point distance) rather than on first use."""
        _ = self._tree, self._enclosed
        if distance:
            _ = self._distance

    def crossings(
        self, start_lps_mm: FloatArray, end_lps_mm: FloatArray
    ) -> tuple[FloatArray, NDArray[np.intp]]:
        """Where the segment crosses the surface: distances from ``start`` (mm, sorted)
        and the triangle crossed at each."""
        points, cells = vtkPoints(), vtkIdList()
        self._tree.IntersectWithLine(
            start_lps_mm.tolist(), end_lps_mm.tolist(), _LINE_TOLERANCE, points, cells
        )
        count = points.GetNumberOfPoints()
        if count == 0:
            return np.zeros(0), np.zeros(0, np.intp)
        hit = vtk_to_numpy(points.GetData()).astype(np.float64)
        ids = np.array([cells.GetId(n) for n in range(count)], np.intp)
        axis = end_lps_mm - start_lps_mm
        t = (hit - start_lps_mm) @ axis / max(float(np.linalg.norm(axis)), 1e-12)
        order = np.argsort(t, kind="stable")
        return t[order], ids[order]

    def distance_mm(self, points_lps_mm: FloatArray) -> FloatArray:
        """Exact unsigned distance from each point (``(N, 3)``) to the nearest triangle."""
        if not len(points_lps_mm):
            return np.zeros(0)
        values = vtkDoubleArray()
        self._distance.FunctionValue(
            numpy_to_vtk(np.ascontiguousarray(points_lps_mm, np.float64), deep=True), values
        )
        return np.abs(np.asarray(vtk_to_numpy(values), np.float64))

    def contains(self, points_lps_mm: FloatArray) -> NDArray[np.bool_]:
        """Whether each point (``(N, 3)``) lies inside the surface (rays cast in several
        directions vote, so a ray through an edge cannot flip the answer)."""
        if not self.closed:
            return np.zeros(len(points_lps_mm), bool)
        return np.array(
            [bool(self._enclosed.IsInsideSurface(*x)) for x in points_lps_mm.tolist()], bool
        )

    def box_distance_mm(self, points_lps_mm: FloatArray) -> float:
        """A lower bound of the distance from any of the points to the surface (the gap
        between their bounding box and the surface's)."""
        lo, hi = points_lps_mm.min(axis=0), points_lps_mm.max(axis=0)
        gap = np.maximum(np.maximum(self._bounds[0] - hi, lo - self._bounds[1]), 0.0)
        return float(np.linalg.norm(gap))

    def along(
        self, start_lps_mm: FloatArray, end_lps_mm: FloatArray, t_mm: FloatArray
    ) -> _Profile:
        """Which points of a segment lie inside the surface, where it crosses the surface,
        and how much of it lies inside.

        Parameters
        ----------
        start_lps_mm, end_lps_mm : (3,) ndarray
        t_mm : (N,) ndarray
            Distances of the query points from ``start`` along the segment.

        Returns
        -------
        _Profile

        Notes
        -----
        The crossings cut the segment into pieces, each wholly inside or outside; the
        vote of rays from each piece's midpoint decides which. Inside-ness is never read
        off the normal of the nearest triangle, which is ill-defined at the edges and
        corners of a voxel surface (the sign of ``vtkImplicitPolyDataDistance`` flips
        there, several mm from thin structures).
        """
        length = float(np.linalg.norm(end_lps_mm - start_lps_mm))
        ends = np.stack([start_lps_mm, end_lps_mm])
        outside = _Profile(np.zeros(len(t_mm), bool), np.zeros(0), 0.0)
        if length <= 0.0 or self.box_distance_mm(ends) > 0.0:
            return outside  # the surface's bounding box is not even reached
        crossings, _ = self.crossings(start_lps_mm, end_lps_mm)
        if not self.closed:
            return _Profile(outside.inside, crossings, 0.0)
        cuts = np.concatenate([[0.0], np.clip(crossings, 0.0, length), [length]])
        middle = 0.5 * (cuts[:-1] + cuts[1:])
        direction = (end_lps_mm - start_lps_mm) / length
        inside = self.contains(start_lps_mm + np.outer(middle, direction))
        piece = np.clip(np.searchsorted(cuts[1:-1], t_mm, side="right"), 0, len(inside) - 1)
        return _Profile(inside[piece], crossings, float(np.diff(cuts)[inside].sum()))

    def signed_distance_mm(
        self, start_lps_mm: FloatArray, end_lps_mm: FloatArray, t_mm: FloatArray
    ) -> tuple[FloatArray, _Profile]:
        """Distance from points of a segment to the surface, negative inside (see
        :meth:`along`), and the segment's profile."""
        profile = self.along(start_lps_mm, end_lps_mm, t_mm)
        length = float(np.linalg.norm(end_lps_mm - start_lps_mm))
        direction = (end_lps_mm - start_lps_mm) / max(length, 1e-12)
        distance = self.distance_mm(start_lps_mm + np.outer(t_mm, direction))
        return np.where(profile.inside, -distance, distance), profile

    def inside_length_mm(self, start_lps_mm: FloatArray, end_lps_mm: FloatArray) -> float:
        """Length of the segment that lies inside the surface."""
        return self.along(start_lps_mm, end_lps_mm, np.zeros(0)).inside_mm


@dataclass(frozen=True, eq=False)
class _Normals:
    """Area-weighted triangle normals around a point of one surface."""

    normals: FloatArray  # (M, 3), length = twice the triangle area
    centroids: FloatArray  # (M, 3)
    locator: Any

    @classmethod
    def of(cls, mesh: Mesh) -> _Normals:
        tri = mesh.vertices_lps_mm[mesh.faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        if mesh.volume_mm3() < 0:  # inward-wound: flip to outward
            normals = -normals
        centroids = np.ascontiguousarray(tri.mean(axis=1))
        points = vtkPoints()
        points.SetData(numpy_to_vtk(centroids, deep=True))
        cloud = vtkPolyData()
        cloud.SetPoints(points)
        locator = vtkStaticPointLocator()
        locator.SetDataSet(cloud)
        locator.BuildLocator()
        return cls(normals, centroids, locator)

    def at(self, point_lps_mm: FloatArray, sigma_mm: float) -> FloatArray:
        """Outward unit normal at a point on the surface, Gaussian-weighted over
        ``sigma_mm`` (zero when no triangle lies within three widths)."""
        ids = vtkIdList()
        self.locator.FindPointsWithinRadius(3.0 * sigma_mm, point_lps_mm.tolist(), ids)
        near = np.array([ids.GetId(n) for n in range(ids.GetNumberOfIds())], np.intp)
        if not len(near):
            return np.zeros(3)
        offset = self.centroids[near] - point_lps_mm
        weight = np.exp(-np.sum(offset * offset, axis=1) / (2.0 * sigma_mm**2))
        total = weight @ self.normals[near]
        norm = float(np.linalg.norm(total))
        return np.asarray(total / norm) if norm > 0 else np.zeros(3)


@dataclass(frozen=True, eq=False)
class SideScene:
    """Everything :func:`check_candidate` needs for one side, built once per anatomy.

    Attributes
    ----------
    side : Side
    ilium : Surface
        The target hip bone (cortex and marrow).
    marrow : Surface or None
        The inside of its cortical shell (None when the anatomy has no marrow there).
    body : Surface
        The skin: everything inside the patient (the table excluded); without skin in the
        CT, the boundary of the field of view.
    obstacles : tuple of Surface
        Every other labelled structure the needle may not cross, and imported risk
        structures it must keep its margin from.
    si : tuple of Surface
        This side's SI joint (the segmented cleft and the fitted auricular surfaces) and
        the sacrum; usually also among ``obstacles``.
    notch_apex_lps_mm : (3,) ndarray
    has_skin : bool
    ct_spacing_mm : (3,) ndarray
        Voxel size of the grid the meshes were made on (sets the tolerance).
    """

    side: Side
    ilium: Surface
    marrow: Surface | None
    body: Surface
    obstacles: tuple[Surface, ...]
    si: tuple[Surface, ...]
    notch_apex_lps_mm: FloatArray
    has_skin: bool
    ct_spacing_mm: FloatArray
    _normals: _Normals = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_normals", _Normals.of(self.ilium.mesh))
        for surface in (self.ilium, self.marrow, *self.obstacles):
            if surface is not None:
                surface.build_locators()
        self.body.build_locators(distance=False)

    def entering(self, cells: NDArray[np.intp], direction_lps: FloatArray) -> NDArray[np.bool_]:
        """Whether a line along ``direction`` enters the ilium through each triangle."""
        return np.asarray(self._normals.normals[cells] @ direction_lps < 0.0)

    def cortex_normal(self, point_lps_mm: ArrayLike) -> FloatArray:
        """Outward unit normal of the ilium surface at a point on it."""
        return self._normals.at(np.asarray(point_lps_mm, np.float64).reshape(3), NORMAL_SIGMA_MM)


def _margin_of(name: str) -> str | None:
    """The margin that keeps the needle's path away from a labelled structure."""
    if name in ("sacrum", "si_joint_left", "si_joint_right"):
        return "si_joint"
    if name.startswith("sciatic_notch"):
        return None  # the keep-out region is itself the margin
    if name == "bowel_gas":
        return "bowel"
    if name == "contrast_lumen":
        return "vessels"
    return "bone"


def _auricular_patches(anatomy: Anatomy, side: Side) -> dict[str, Mesh]:
    """The auricular (SI joint) surfaces of the fitted hip bone and sacrum of ``side``:
    the triangles of the fitted meshes whose corners are all auricular vertices."""
    if getattr(anatomy, "shape_fit", None) is None:
        return {}
    from bmbx_plan.anatomy.landmarks import atlas_landmarks

    out = {}
    for bone in ("hip", "sacrum"):
        name = f"si_joint_{bone}_{side.value}"
        index, vertices = atlas_landmarks().vertex_sets[name]
        mesh = anatomy.shape_fit.meshes[index]
        faces = mesh.faces[np.isin(mesh.faces, vertices).all(axis=1)]
        if len(faces):
            out[name] = Mesh(mesh.vertices_lps_mm, faces)
    return out


def _box_mesh(grid: Volume) -> Mesh:
    """The closed surface of the field of view (outer faces of the edge voxels)."""
    shape = np.array(grid.shape, float)
    corners = np.array([[k, j, i] for k in (0, 1) for j in (0, 1) for i in (0, 1)], float)
    index = corners * shape - 0.5
    faces = np.array(
        [
            [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
            [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
        ]
    )  # fmt: skip
    mesh = Mesh(grid.index_to_lps(index), faces)
    return mesh if mesh.volume_mm3() > 0 else Mesh(mesh.vertices_lps_mm, faces[:, ::-1])


def _filled(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The mask with its internal cavities filled (worked out in its bounding box)."""
    where = np.argwhere(mask)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_fill_holes(mask[box])
    return out


@dataclass
class _Meshes:
    """The surfaces of one anatomy, built on first use and shared by both sides."""

    fill_cavities: bool
    surfaces: dict[str, Surface | None] = field(default_factory=dict)
    scenes: dict[Side, SideScene] = field(default_factory=dict)


def _surface(anatomy: Anatomy, meshes: _Meshes, name: str) -> Surface | None:
    """The surface of a label, ``"body"``, or an imported risk group."""
    if name in meshes.surfaces:
        return meshes.surfaces[name]
    grid = anatomy.labels
    labels = np.asarray(grid.array)
    surface: Surface | None = None
    if name == "body":
        if anatomy.has_skin:
            body = (labels != 0) & (labels != LABELS["table"])
            surface = Surface("body", mesh_from_mask(body, grid))
        else:  # the path leaves the data where it leaves the field of view
            surface = Surface("body", _box_mesh(grid))
    elif name in LABELS:
        mask = label_mask(labels, name)
        if mask.any():
            if name.startswith("ilium_") and meshes.fill_cavities:
                mask = _filled(mask)
            surface = Surface(name, mesh_from_mask(mask, grid), _margin_of(name))
    elif anatomy.external is not None:
        risk = anatomy.external.risk_masks().get(name)
        if risk is not None and np.any(risk):
            # imported structures keep a margin but do not change the labels: inside one
            # the clearance is simply negative
            surface = Surface(name, mesh_from_mask(risk, grid), name, blocks=False)
    meshes.surfaces[name] = surface
    return surface


def _build_scene(anatomy: Anatomy, side: Side, meshes: _Meshes) -> SideScene:
    grid = anatomy.labels
    s = side.value
    target = f"ilium_{s}"
    ilium = _surface(anatomy, meshes, target)
    if ilium is None:
        raise ValueError(f"the anatomy has no {target} label to cross-check against")
    bone = _filled(anatomy.ilium(s)) if meshes.fill_cavities else anatomy.ilium(s)
    marrow_mask = bone & ~np.asarray(anatomy.cortex, bool)
    marrow = Surface("marrow", mesh_from_mask(marrow_mask, grid)) if marrow_mask.any() else None
    grouped = {n for group in LABEL_GROUPS.values() for n in group} - set(LABEL_GROUPS)
    names = [name for name in LABELS if name not in ("body", "table", target, *grouped)]
    if anatomy.external is not None:
        from bmbx_plan.anatomy.external import TRAVERSED_RISK_GROUPS

        names += [g for g in anatomy.external.risk_masks() if g not in TRAVERSED_RISK_GROUPS]
    obstacles = [o for o in (_surface(anatomy, meshes, n) for n in names) if o is not None]
    # The segmented joint is only the visible cleft; the fitted pelvis knows both
    # auricular surfaces, where the joint is even when it is narrow or partly fused.
    for name, patch in _auricular_patches(anatomy, side).items():
        obstacles.append(Surface(name, patch, "si_joint", blocks=False, closed=False))
    si = tuple(o for o in obstacles if o.name in ("sacrum", f"si_joint_{s}") or not o.closed)
    body = _surface(anatomy, meshes, "body") or Surface("body", _box_mesh(grid))
    return SideScene(
        side=side,
        ilium=ilium,
        marrow=marrow,
        body=body,
        obstacles=tuple(obstacles),
        si=si,
        notch_apex_lps_mm=np.asarray(anatomy.landmarks_lps_mm[f"sciatic_notch_apex_{s}"], float),
        has_skin=bool(anatomy.has_skin),
        ct_spacing_mm=np.asarray(grid.spacing_mm, float),
    )


# The planner cross-checks each side of one anatomy: build the meshes once per anatomy.
_MESHES: weakref.WeakKeyDictionary[Anatomy, dict[bool, _Meshes]] = weakref.WeakKeyDictionary()


def side_scene(anatomy: Anatomy, side: Side | str, *, fill_cavities: bool = False) -> SideScene:
    """The meshes and VTK locators of one side (built on first use, cached per anatomy).

    Parameters
    ----------
    anatomy : Anatomy
    side : Side or {"left", "right"}
    fill_cavities : bool, optional, keyword-only
        Mesh the hip bones without their internal cavities (voxels of another label
        enclosed by the bone), so that the core's clearance is measured to the outer
        boundary only. By default the label masks are meshed as they are, which is how
        the planner's maps see them: a segmentation that leaves soft-tissue pockets in
        the marrow makes both methods measure the core's clearance to those pockets.

    Returns
    -------
    SideScene
    """
    side = Side.parse(side)
    by_fill = _MESHES.setdefault(anatomy, {})
    meshes = by_fill.setdefault(fill_cavities, _Meshes(fill_cavities))
    if side not in meshes.scenes:
        meshes.scenes[side] = _build_scene(anatomy, side, meshes)
    return meshes.scenes[side]


def cross_check_tolerance_mm(scene: SideScene, parameters: PlanningParameters) -> float:
    """Half the CT voxel diagonal plus half the planning voxel diagonal (mm): how far the
    same boundary can lie apart in the planner's maps and in the CT-grid meshes."""
    return 0.5 * float(np.linalg.norm(scene.ct_spacing_mm)) + 0.5 * math.sqrt(3.0) * float(
        parameters.grid_mm
    )


# ---------------------------------------------------------------------- one trajectory


@dataclass(frozen=True)
class CandidateCheck:
    """The hard constraints of one trajectory, measured on meshes.

    Attributes
    ----------
    values : dict of str to float
        Per constraint name (NaN when it cannot be measured, e.g. no skin within reach).
    passed : dict of str to bool
    marrow_fraction_range : tuple of float
        Share of core points more than the tolerance inside the marrow surface, and
        less than the tolerance outside it.
    skin_entry_lps_mm : (3,) ndarray
        The skin entry used (given, or found on the body surface).
    cortex_hit_lps_mm : (3,) ndarray
        Where the line first meets the ilium surface (NaN when it never does).
    blocking : tuple of str
        Structures the soft-tissue path crosses.
    """

    values: dict[str, float]
    passed: dict[str, bool]
    marrow_fraction_range: tuple[float, float]
    skin_entry_lps_mm: FloatArray
    cortex_hit_lps_mm: FloatArray
    blocking: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        """Whether every hard constraint passes."""
        return all(self.passed.values())


_NONE = np.zeros(0)


def _stations(length_mm: float) -> FloatArray:
    """Distances 0 to ``length_mm`` (both included) at most :data:`_STEP_MM` apart."""
    count = max(int(np.ceil(length_mm / _STEP_MM)), 1) + 1
    return np.linspace(0.0, max(length_mm, 0.0), count)


def _margin(p: PlanningParameters, surface: Surface) -> float:
    return 0.0 if surface.margin is None else p.margin(surface.margin)


def _segment_point_distance(a: FloatArray, b: FloatArray, p: FloatArray) -> float:
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom == 0.0 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - p))


def skin_entry(
    scene: SideScene, cortex_entry_lps_mm: ArrayLike, direction_lps: ArrayLike, reach_mm: float
) -> FloatArray:
    """Where the needle line, followed back from the cortex entry, leaves the body.

    Parameters
    ----------
    scene : SideScene
    cortex_entry_lps_mm : (3,) array_like
    direction_lps : (3,) array_like
        Skin toward tip.
    reach_mm : float
        How far back to look.

    Returns
    -------
    (3,) ndarray
        The body-surface crossing nearest to the cortex entry; NaN when the line stays in
        the body for ``reach_mm``.
    """
    c = np.asarray(cortex_entry_lps_mm, np.float64).reshape(3)
    d = np.asarray(direction_lps, np.float64).reshape(3)
    d = d / np.linalg.norm(d)
    t, _ = scene.body.crossings(c, c - reach_mm * d)
    if not len(t):
        return np.full(3, np.nan)
    return np.asarray(c - float(t[0]) * d)


def check_candidate(
    scene: SideScene,
    parameters: PlanningParameters,
    cortex_entry_lps_mm: ArrayLike,
    core_end_lps_mm: ArrayLike,
    *,
    skin_entry_lps_mm: ArrayLike | None = None,
    tolerance_mm: float | None = None,
) -> CandidateCheck:
    """Judge the hard constraints of one trajectory with line/surface intersections and
    point/surface distances.

    Parameters
    ----------
    scene : SideScene
        From :func:`side_scene`.
    parameters : PlanningParameters
        Needle, core lengths, margins and angle limits.
    cortex_entry_lps_mm, core_end_lps_mm : (3,) array_like
        Where the needle meets the ilium and where the core ends (LPS mm); the core starts
        ``parameters.seat_depth_mm`` beyond the cortex entry.
    skin_entry_lps_mm : (3,) array_like, optional
        By default the body surface crossing behind the cortex entry
        (:func:`skin_entry`), looked for as far as the needle reaches.
    tolerance_mm : float, optional
        Boundary uncertainty (:func:`cross_check_tolerance_mm` by default): the stretch
        of the path this close to the cortex entry may touch the ilium, and the first
        stretch this close to the skin may lie outside the body.

    Returns
    -------
    CandidateCheck
    """
    p = parameters
    r = p.needle.radius_mm
    tol = cross_check_tolerance_mm(scene, p) if tolerance_mm is None else float(tolerance_mm)
    c = np.asarray(cortex_entry_lps_mm, np.float64).reshape(3)
    end = np.asarray(core_end_lps_mm, np.float64).reshape(3)
    to_end = end - c
    d = to_end / np.linalg.norm(to_end)
    core_start = c + p.seat_depth_mm * d
    if skin_entry_lps_mm is None:
        # look as far back as a needle with the shortest acceptable core could reach:
        # beyond that, the needle length fails whatever else the path meets
        reach = p.needle.usable_length_mm - p.seat_depth_mm - p.min_core_length_mm
        skin = skin_entry(scene, c, d, reach)
        skin_found = bool(np.all(np.isfinite(skin)))
        path_start = skin if skin_found else c - reach * d
    else:
        skin = np.asarray(skin_entry_lps_mm, np.float64).reshape(3)
        skin_found = True
        path_start = skin
    values: dict[str, float] = {}

    # pure geometry
    # without skin within reach the needle is at least this long (and too short)
    values["needle_length"] = float(np.linalg.norm(end - path_start))
    values["core_length"] = float(np.linalg.norm(end - c)) - p.seat_depth_mm
    values["craniocaudal_angle"] = math.degrees(math.asin(min(abs(float(d[2])), 1.0)))
    values["sciatic_notch"] = _segment_point_distance(c, end, scene.notch_apex_lps_mm) - r

    # the soft-tissue path: skin entry to cortex entry
    path_length = float(np.linalg.norm(c - path_start))
    t_path = _stations(path_length)
    path = path_start + np.outer(t_path, d)
    blocked, blocking = 0.0, []
    crossed = np.zeros(len(t_path), bool)  # path points inside something not crossable
    for surface in scene.obstacles:
        if surface.blocks:
            profile = surface.along(path_start, c, t_path)
            if profile.inside_mm > 0.0:
                blocked += profile.inside_mm
                blocking.append(surface.name)
                crossed |= profile.inside
    if path_length > tol:
        # the shaft must not pass through the target ilium before the cortex entry ...
        near = t_path > path_length - tol
        profile = scene.ilium.along(path_start, c - tol * d, np.minimum(t_path, path_length - tol))
        if profile.inside_mm > 0.0:
            blocked += profile.inside_mm
            blocking.append(scene.ilium.name)
            crossed |= profile.inside & ~near
        # ... nor through air or the table between the skin and the bone; before the
        # skin (a drawn entry in the air, or on the table of a supine scan) it may
        profile = scene.body.along(path_start + tol * d, c, t_path - tol)
        leading = 0.0
        if len(profile.crossings) and not profile.inside[0]:
            leading = float(profile.crossings[0])
        outside = (path_length - tol) - leading - profile.inside_mm
        if outside > 1e-9:
            blocked += outside
            blocking.append("outside the body")
            crossed |= ~profile.inside & (t_path >= tol + leading)
    values["soft_tissue_path"] = blocked

    # the clearance of the rest of the path: nearest structures first; once a
    # structure's bounding box lies farther than the best clearance found, it cannot
    # lower it
    free = path[~crossed]
    clearance = math.inf
    if len(free):
        ranked = sorted(
            (s for s in scene.obstacles if s.margin is not None),
            key=lambda s: s.box_distance_mm(free) - _margin(p, s),
        )
        for surface in ranked:
            margin = _margin(p, surface)
            if surface.box_distance_mm(free) - margin - r >= clearance:
                break
            distance = surface.distance_mm(free)
            if surface.closed and not surface.blocks:  # inside an imported structure
                inside = surface.along(path_start, c, t_path).inside[~crossed]
                distance = np.where(inside, 0.0, distance)
            clearance = min(clearance, float(distance.min()) - margin - r)
    values["path_clearance"] = clearance

    # the cortex entry: where the line enters the ilium surface nearest the given entry
    crossings, cells = scene.ilium.crossings(path_start, end)
    entering = scene.entering(cells, d)
    crossings = crossings[entering] if entering.any() else crossings
    if len(crossings):
        t_entry = float(crossings[np.argmin(np.abs(crossings - path_length))])
        hit = path_start + t_entry * d
        normal = scene.cortex_normal(hit)
        cos_inc = float(np.clip(-(normal @ d), -1.0, 1.0))
        incidence = math.degrees(math.acos(cos_inc)) if normal.any() else 90.0
    else:
        hit, incidence = np.full(3, np.nan), 90.0
    values["cortex_incidence"] = incidence

    # the core: inside the ilium, clear of its surface, in marrow
    core_length = float(np.linalg.norm(end - core_start))
    t_core = _stations(core_length)
    signed, profile = scene.ilium.signed_distance_mm(core_start, end, t_core)
    core_clearance = float((-signed).min()) - r
    if len(profile.crossings):
        core_clearance = min(core_clearance, -r)  # the axis itself leaves the bone
    values["core_cortex_clearance"] = core_clearance
    if scene.marrow is not None:
        marrow, _ = scene.marrow.signed_distance_mm(core_start, end, t_core)
        values["core_in_marrow"] = float(np.mean(marrow < 0.0))
        fraction_range = (float(np.mean(marrow < -tol)), float(np.mean(marrow < tol)))
    else:
        values["core_in_marrow"], fraction_range = 0.0, (0.0, 0.0)

    # the whole needle to the SI joint and the sacrum
    t_needle = _stations(float(np.linalg.norm(end - path_start)))
    si = math.inf
    for surface in scene.si:
        signed, profile = surface.signed_distance_mm(path_start, end, t_needle)
        si = min(si, 0.0 if len(profile.crossings) else float(np.maximum(signed, 0.0).min()))
    values["si_joint"] = si - r

    limits = _limits(p)
    passed = {name: _passes(name, values[name], limits[name]) for name in _RULES}
    if not skin_found:
        passed["needle_length"] = False
    if not scene.has_skin:
        passed["needle_length"] = True  # no skin: the depth is unknown, as in the planner
    return CandidateCheck(
        values=values,
        passed=passed,
        marrow_fraction_range=fraction_range,
        skin_entry_lps_mm=np.asarray(skin, np.float64),
        cortex_hit_lps_mm=np.asarray(hit, np.float64),
        blocking=tuple(blocking),
    )


def _limits(p: PlanningParameters) -> dict[str, float]:
    return {
        "needle_length": p.needle.usable_length_mm,
        "soft_tissue_path": 0.0,
        "path_clearance": 0.0,
        "cortex_incidence": p.max_incidence_deg,
        "craniocaudal_angle": p.max_craniocaudal_limit_deg,
        "core_length": p.min_core_length_mm,
        "core_cortex_clearance": p.margin("cortex"),
        "core_in_marrow": p.min_marrow_fraction,
        "sciatic_notch": p.margin("sciatic_notch"),
        "si_joint": p.margin("si_joint"),
    }


def _passes(name: str, value: float, limit: float) -> bool:
    if math.isnan(value):
        return False
    at_most = _RULES[name][1]
    return value <= limit + _EPS if at_most else value >= limit - _EPS


# ------------------------------------------------------------------------ cross-check


def _tolerance_of(name: str, tolerance_mm: float, grid_mm: float) -> float:
    """The allowance for a difference of the values of constraint ``name``: mm for the
    distances, deg for the angles (see the module notes)."""
    if name == "cortex_incidence":
        return INCIDENCE_TOLERANCE_DEG
    if name == "craniocaudal_angle":
        return CRANIOCAUDAL_TOLERANCE_DEG
    if name == "soft_tissue_path":  # a crossed length has two uncertain ends
        return 2.0 * tolerance_mm
    if name in ("si_joint", "path_clearance"):
        # the fitted SI joint surfaces are points the planner marks straight on its grid:
        # a point anywhere in a voxel makes the whole voxel (half a voxel around its
        # centre) the joint, so its distances come out up to half a voxel diagonal
        # plus half a voxel shorter than the distance to the points
        return tolerance_mm + (0.5 * math.sqrt(3.0) + 0.5) * grid_mm
    return tolerance_mm


def _within(
    name: str,
    planner_value: float | None,
    check: CandidateCheck,
    tolerance: float,
) -> bool:
    """Whether the two values lie within ``tolerance`` (that of this constraint)."""
    mine = check.values[name]
    if planner_value is None or not math.isfinite(planner_value) or not math.isfinite(mine):
        return False
    if name == "core_in_marrow":
        lo, hi = check.marrow_fraction_range
        return lo - _EPS <= planner_value <= hi + _EPS
    return abs(planner_value - mine) <= tolerance


def _sentence(
    name: str, planner: ConstraintResult, check: CandidateCheck, tolerance: float
) -> str:
    unit = _RULES[name][0]
    mine = check.values[name]

    def verdict(passed: bool) -> str:
        return "passes" if passed else "fails"

    theirs = "unmeasured" if planner.value is None else f"{planner.value:.2f} {unit}"
    extra = f" (crosses {', '.join(check.blocking)})" if check.blocking else ""
    if name != "soft_tissue_path":
        extra = ""
    if name == "core_in_marrow":
        lo, hi = check.marrow_fraction_range
        allowed = f"{lo:.2f} to {hi:.2f} within the boundary tolerance"
    else:
        allowed = f"tolerance {tolerance:.2f} {unit}"
    return (
        f"{name}: the planner measures {theirs} and {verdict(planner.passed)}, the mesh "
        f"check measures {mine:.2f} {unit}{extra} and {verdict(check.passed[name])} "
        f"({allowed})."
    )


def compare(
    check: CandidateCheck,
    constraints: tuple[ConstraintResult, ...],
    tolerance_mm: float,
    *,
    has_skin: bool = True,
    grid_mm: float = 0.0,
) -> tuple[str, ...]:
    """The hard constraints on which the mesh check and the planner disagree.

    Parameters
    ----------
    check : CandidateCheck
        From :func:`check_candidate`.
    constraints : tuple of ConstraintResult
        The planner's results for the same trajectory.
    tolerance_mm : float
        From :func:`cross_check_tolerance_mm`.
    has_skin : bool
        Without skin neither method measures the needle length; it is not compared.
    grid_mm : float
        The planning grid's voxel size: the planner marks the fitted SI joint surfaces
        on it directly, which widens the tolerance of the SI joint distances.

    Returns
    -------
    tuple of str
        One sentence per hard constraint with different verdicts and values farther
        apart than the tolerance (see the module notes); empty when they agree.
    """
    out = []
    for result in constraints:
        name = result.name
        if result.kind != "hard" or name not in _RULES:
            continue
        if name == "needle_length" and not has_skin:
            continue
        same = check.passed[name] == bool(result.passed)
        tolerance = _tolerance_of(name, tolerance_mm, grid_mm)
        if not same and not _within(name, result.value, check, tolerance):
            out.append(_sentence(name, result, check, tolerance))
    return tuple(out)


def cross_check(
    anatomy: Anatomy,
    side: Side | str,
    trajectory: Trajectory,
    parameters: PlanningParameters,
    constraints: tuple[ConstraintResult, ...],
) -> CrossCheck:
    """Recompute the hard constraints of a trajectory on surface meshes and compare.

    Parameters
    ----------
    anatomy : Anatomy
        The segmentation the plan was made on (its meshes are cached per side).
    side : Side or {"left", "right"}
    trajectory : Trajectory
        The plan's skin entry, cortex entry and core end are used as given.
    parameters : PlanningParameters
    constraints : tuple of ConstraintResult
        The planner's results; each hard one this module knows is compared (a hard
        constraint it does not know is left out of ``values`` and the verdict).

    Returns
    -------
    CrossCheck
        ``agrees`` when every compared hard constraint gets the same verdict or values
        within the tolerance (see the module notes).
    """
    scene = side_scene(anatomy, side)
    tol = cross_check_tolerance_mm(scene, parameters)
    check = check_candidate(
        scene,
        parameters,
        trajectory.cortex_entry_lps_mm,
        trajectory.core_end_lps_mm,
        skin_entry_lps_mm=trajectory.skin_entry_lps_mm,
        tolerance_mm=tol,
    )
    disagreements = compare(
        check, constraints, tol, has_skin=scene.has_skin, grid_mm=parameters.grid_mm
    )
    values = {
        result.name: check.values[result.name]
        for result in constraints
        if result.kind == "hard"
        and result.name in _RULES
        and math.isfinite(check.values[result.name])
        and (scene.has_skin or result.name != "needle_length")
    }
    hit = check.cortex_hit_lps_mm
    if np.all(np.isfinite(hit)):
        values["cortex_entry_offset_mm"] = float(
            np.linalg.norm(hit - trajectory.cortex_entry_lps_mm)
        )
    return CrossCheck(
        method=METHOD,
        agrees=not disagreements,
        tolerance_mm=tol,
        values=values,
        disagreements=tuple(disagreements),
    )
