"""Triangle meshes: reading and writing them, and turning them into voxel masks.

A :class:`Mesh` is a plain pair of arrays in LPS millimetres. VTK is used only at the
file edge (:func:`read_mesh`, :func:`write_mesh`) and for exact point-to-surface
distances (:func:`distance_to_surface_mm`); :func:`voxelize` is vectorised numpy.

How :func:`voxelize` decides "inside"
-------------------------------------
The mesh is first mapped into the grid's continuous index space ``(k, j, i)``, so any
grid direction (permuted, flipped, even oblique) and any spacing is handled the same
way: voxel centres sit on integer coordinates. Along each of the three index axes a ray
is cast through every voxel-centre column; every triangle the ray pierces adds +1 or -1
(the side it faces), and a voxel is inside along that axis when the running sum (the
winding number) is non-zero. Ray/triangle hits exactly on an edge or a vertex are
decided by a fixed symbolic perturbation of the ray (a "top-left" rule), so a ray that
passes through a shared edge counts it exactly once.

Real meshes are not perfectly closed (the atlas hip bones have two tiny holes each, the
sacrum a larger opening and one dangling "fin" triangle). Two things keep that local:
boundary loops are closed with a fan around their centroid before casting rays, and a
ray whose hits do not sum to zero (it went through a remaining hole) abstains. The three
axes then vote among the rays that did not abstain; when no axis is usable the raw
three-axis majority is taken. Meshes whose triangles are not consistently oriented are
handled with the even-odd (parity) rule instead of the winding number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bmbx_plan import geometry
from bmbx_plan.io.errors import InputError
from bmbx_plan.volume import Volume

__all__ = [
    "MESH_SUFFIXES",
    "Mesh",
    "MeshTopology",
    "close_holes",
    "distance_to_surface_mm",
    "mesh_topology",
    "read_mesh",
    "voxelize",
    "write_mesh",
]

#: File suffixes :func:`read_mesh` and :func:`write_mesh` understand.
MESH_SUFFIXES = (".vtk", ".vtp", ".stl")

# Candidate (triangle, ray) pairs handled per numpy batch: bounds peak memory to a few
# hundred MB even for meshes with triangles much larger than a voxel.
_BATCH_PAIRS = 4_000_000


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle surface in LPS millimetres.

    Parameters
    ----------
    vertices_lps_mm : (N, 3) ndarray of float64
        Vertex positions, LPS mm. Stored read-only.
    faces : (M, 3) ndarray of int64
        Vertex indices of each triangle, ``0 <= index < N``. Stored read-only. The order
        of the three indices gives the triangle's side (outward normal by the right-hand
        rule on a consistently oriented closed mesh).

    Raises
    ------
    ValueError
        Wrong shapes, non-finite vertices or face indices out of range.

    Examples
    --------
    >>> tetra = Mesh(
    ...     [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
    ...     [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
    ... )
    >>> tetra.n_vertices, tetra.n_faces
    (4, 4)
    >>> round(tetra.volume_mm3(), 4)
    0.1667
    """

    vertices_lps_mm: NDArray[np.float64]
    faces: NDArray[np.int64]

    def __init__(self, vertices_lps_mm: ArrayLike, faces: ArrayLike) -> None:
        vertices = np.array(vertices_lps_mm, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"Mesh vertices must have shape (N, 3), got {vertices.shape}")
        if not np.all(np.isfinite(vertices)):
            raise ValueError("Mesh vertices must be finite (found NaN or inf)")
        face_array = np.asarray(faces)
        if face_array.size == 0:
            face_array = face_array.reshape(0, 3)
        if face_array.ndim != 2 or face_array.shape[1] != 3:
            raise ValueError(f"Mesh faces must have shape (M, 3), got {face_array.shape}")
        if not np.issubdtype(face_array.dtype, np.integer):
            raise ValueError(f"Mesh faces must be integers, got dtype {face_array.dtype}")
        face_array = face_array.astype(np.int64)
        if face_array.size and (face_array.min() < 0 or face_array.max() >= len(vertices)):
            raise ValueError(
                f"Mesh face indices must lie in [0, {len(vertices)}), got "
                f"[{face_array.min()}, {face_array.max()}]"
            )
        vertices.flags.writeable = False
        face_array.flags.writeable = False
        object.__setattr__(self, "vertices_lps_mm", vertices)
        object.__setattr__(self, "faces", face_array)

    @property
    def n_vertices(self) -> int:
        """Number of vertices ``N``."""
        return int(self.vertices_lps_mm.shape[0])

    @property
    def n_faces(self) -> int:
        """Number of triangles ``M``."""
        return int(self.faces.shape[0])

    def bounds_lps_mm(self) -> NDArray[np.float64]:
        """LPS bounding box of the vertices used by faces, ``[[min xyz], [max xyz]]``, mm."""
        used = self.vertices_lps_mm[np.unique(self.faces)]
        return np.stack([used.min(axis=0), used.max(axis=0)])

    def volume_mm3(self) -> float:
        """Signed enclosed volume in mm^3 (divergence theorem).

        Positive for a closed mesh with outward-facing triangles; only meaningful for a
        closed (or nearly closed) surface.
        """
        a, b, c = (self.vertices_lps_mm[self.faces[:, n]] for n in range(3))
        return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)

    def with_vertices(self, vertices_lps_mm: ArrayLike) -> Mesh:
        """Same faces, new vertex positions of the same shape ``(N, 3)``."""
        vertices = np.asarray(vertices_lps_mm, dtype=np.float64)
        if vertices.shape != self.vertices_lps_mm.shape:
            raise ValueError(
                f"with_vertices needs shape {self.vertices_lps_mm.shape}, got {vertices.shape}"
            )
        return Mesh(vertices, self.faces)

    def vertex_normals(self) -> NDArray[np.float64]:
        """Outward unit normals at the vertices (area-weighted mean of the face normals),
        shape ``(N, 3)``; triangles wound inward (negative volume) are accounted for."""
        tri = self.vertices_lps_mm[self.faces]
        face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals = np.zeros_like(self.vertices_lps_mm)
        for axis in range(3):
            normals[:, axis] = sum(
                np.bincount(
                    self.faces[:, c], weights=face_normals[:, axis], minlength=self.n_vertices
                )
                for c in range(3)
            )
        if self.volume_mm3() < 0:
            normals = -normals
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return np.asarray(normals / np.where(length > 0, length, 1.0))

    def transformed(self, matrix: ArrayLike) -> Mesh:
        """Apply a 4x4 affine (LPS mm -> LPS mm) to the vertices.

        A reflection (negative determinant) also reverses every triangle so outward
        normals stay outward.
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise ValueError(f"transform matrix must be a finite 4x4 array, got {m.shape}")
        vertices = geometry.apply_affine(m, self.vertices_lps_mm)
        faces = self.faces[:, ::-1] if np.linalg.det(m[:3, :3]) < 0 else self.faces
        return Mesh(vertices, faces)


@dataclass(frozen=True)
class MeshTopology:
    """How closed and well formed a triangle mesh is.

    Attributes
    ----------
    n_boundary_edges : int
        Edges used by exactly one triangle (hole rims).
    n_boundary_loops : int
        Connected groups of boundary edges (roughly: number of holes).
    n_nonmanifold_edges : int
        Edges shared by three or more triangles.
    consistently_oriented : bool
        Every edge shared by exactly two triangles is traversed in opposite directions.
    n_unused_vertices : int
        Vertices referenced by no triangle.
    euler_characteristic : int
        ``V - E + F`` over the used vertices (2 for a closed sphere-like surface, 0 for a
        closed torus-like one, minus one per hole).
    """

    n_boundary_edges: int
    n_boundary_loops: int
    n_nonmanifold_edges: int
    consistently_oriented: bool
    n_unused_vertices: int
    euler_characteristic: int

    @property
    def closed(self) -> bool:
        """True when no edge is a boundary edge and none is non-manifold."""
        return self.n_boundary_edges == 0 and self.n_nonmanifold_edges == 0


def mesh_topology(mesh: Mesh) -> MeshTopology:
    """Count holes, non-manifold edges and orientation problems of a mesh.

    Parameters
    ----------
    mesh : Mesh

    Returns
    -------
    MeshTopology

    Examples
    --------
    >>> open_tetra = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
    ...                   [[0, 2, 1], [0, 1, 3], [0, 3, 2]])
    >>> topo = mesh_topology(open_tetra)
    >>> topo.closed, topo.n_boundary_edges, topo.n_boundary_loops
    (False, 3, 1)
    """
    edges = _edge_table(mesh.faces)
    boundary = edges.half_edges[edges.use_count[edges.edge_of_half] == 1]
    used = np.unique(mesh.faces)
    return MeshTopology(
        n_boundary_edges=int(np.sum(edges.use_count == 1)),
        n_boundary_loops=len(_boundary_components(boundary)),
        n_nonmanifold_edges=int(np.sum(edges.use_count > 2)),
        consistently_oriented=_consistently_oriented(edges),
        n_unused_vertices=mesh.n_vertices - len(used),
        euler_characteristic=int(len(used) - len(edges.use_count) + mesh.n_faces),
    )


def close_holes(mesh: Mesh) -> Mesh:
    """Close every boundary loop with a triangle fan around the loop's centroid.

    Parameters
    ----------
    mesh : Mesh

    Returns
    -------
    Mesh
        The input vertices followed by one new vertex per closed loop (so the original
        vertex indices keep their meaning), the input faces followed by the fans,
        oriented like the neighbouring triangles. This is what :func:`voxelize` does
        before casting rays. Loops that do not close (the rim of a dangling non-manifold
        triangle) are left open.

    Examples
    --------
    >>> open_tetra = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
    ...                   [[0, 2, 1], [0, 1, 3], [0, 3, 2]])
    >>> closed = close_holes(open_tetra)
    >>> closed.n_vertices, closed.n_faces, mesh_topology(closed).closed
    (5, 6, True)
    """
    return _close_boundary_loops(mesh, _edge_table(mesh.faces))


# --------------------------------------------------------------------------- file I/O


def read_mesh(path: str | Path) -> Mesh:
    """Read a triangle mesh from a legacy ``.vtk``, ``.vtp`` or ``.stl`` file.

    Coordinates are taken as stored; the project's files are LPS mm (files from other
    tools in RAS must be converted by the caller, e.g. ``mesh.transformed(diag(-1,-1,1,1))``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Mesh
        Vertices as float64, triangles as int64. Points not used by any triangle are kept
        (their indices may carry correspondence between meshes).

    Raises
    ------
    InputError
        Missing or unreadable file, unknown suffix, no triangles, polygons that are not
        triangles, or non-finite points.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(file, f"unknown mesh format {suffix!r}; use one of {MESH_SUFFIXES}")
    if not file.is_file():
        raise InputError(file, "mesh file does not exist")
    polydata = _read_polydata(file, suffix)
    return _mesh_from_polydata(polydata, file)


def write_mesh(mesh: Mesh, path: str | Path, *, binary: bool = True) -> Path:
    """Write a mesh as ``.vtp`` (VTK XML), ``.stl`` or legacy ``.vtk``.

    Parameters
    ----------
    mesh : Mesh
    path : str or Path
        Output file; the suffix chooses the format. The folder must exist.
    binary : bool, optional, keyword-only
        Binary encoding (default) or ASCII. STL stores float32 coordinates either way and
        repeats vertices per triangle (they are merged again by :func:`read_mesh`).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputError
        Unknown suffix, missing folder, or the writer failed.
    """
    import vtk

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(file, f"unknown mesh format {suffix!r}; use one of {MESH_SUFFIXES}")
    if not file.parent.is_dir():
        raise InputError(file, f"folder {file.parent} does not exist")
    writer: Any
    if suffix == ".vtp":
        writer = vtk.vtkXMLPolyDataWriter()
        if binary:
            writer.SetDataModeToBinary()
        else:
            writer.SetDataModeToAscii()
    elif suffix == ".stl":
        writer = vtk.vtkSTLWriter()
        if binary:
            writer.SetFileTypeToBinary()
        else:
            writer.SetFileTypeToASCII()
    else:
        writer = vtk.vtkPolyDataWriter()
        writer.SetFileVersion(42)
        if binary:
            writer.SetFileTypeToBinary()
        else:
            writer.SetFileTypeToASCII()
    writer.SetFileName(str(file))
    writer.SetInputData(_polydata_from_mesh(mesh))
    errors = _collect_vtk_errors(writer)
    ok = writer.Write()
    if not ok or errors:
        detail = errors[0] if errors else "writer returned failure"
        raise InputError(file, f"could not write mesh ({detail.strip()})")
    return file


def _read_polydata(file: Path, suffix: str) -> Any:
    import vtk

    reader: Any
    if suffix == ".vtp":
        reader = vtk.vtkXMLPolyDataReader()
    elif suffix == ".stl":
        reader = vtk.vtkSTLReader()
        reader.MergingOn()
    else:
        reader = vtk.vtkPolyDataReader()
        # Legacy files may hold other dataset types; the reader would silently give
        # an empty polydata for them, so say what the file is instead.
        probe = vtk.vtkDataReader()
        probe.SetFileName(str(file))
        probe_errors = _collect_vtk_errors(probe)
        if not probe.IsFilePolyData():
            problem = "not a VTK polydata file (legacy header or dataset type)"
            if probe_errors:
                problem += f": {probe_errors[0].strip()}"
            raise InputError(file, problem)
    reader.SetFileName(str(file))
    errors = _collect_vtk_errors(reader)
    reader.Update()
    if errors:
        raise InputError(file, f"could not read mesh ({errors[0].strip()})")
    return reader.GetOutput()


def _mesh_from_polydata(polydata: Any, file: Path) -> Mesh:
    from vtk.util.numpy_support import vtk_to_numpy

    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise InputError(file, "mesh is empty (no points)")
    if polydata.GetNumberOfStrips() > 0:
        raise InputError(file, "mesh has triangle strips; only plain triangles are supported")
    polys = polydata.GetPolys()
    if polys is None or polys.GetNumberOfCells() == 0:
        raise InputError(file, "not a triangle mesh (no polygons)")
    offsets = vtk_to_numpy(polys.GetOffsetsArray())
    sizes = np.diff(offsets)
    if np.any(sizes != 3):
        bad = sorted(set(sizes[sizes != 3].tolist()))
        raise InputError(file, f"not a triangle mesh (polygons with {bad} vertices)")
    faces = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    vertices = vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    if not np.all(np.isfinite(vertices)):
        n_bad = int(np.sum(~np.all(np.isfinite(vertices), axis=1)))
        raise InputError(file, f"mesh has {n_bad} points with NaN or infinite coordinates")
    try:
        return Mesh(vertices, faces)
    except ValueError as err:
        raise InputError(file, str(err)) from err


def _polydata_from_mesh(mesh: Mesh) -> Any:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices_lps_mm), deep=True))
    offsets = np.arange(0, 3 * mesh.n_faces + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_to_vtkIdTypeArray(np.ascontiguousarray(mesh.faces.ravel()), deep=True),
    )
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(cells)
    return polydata


def _collect_vtk_errors(algorithm: Any) -> list[str]:
    """Route an algorithm's VTK error and warning messages into a list, not stderr."""
    from vtkmodules.util.misc import calldata_type
    from vtkmodules.util.vtkConstants import VTK_STRING

    messages: list[str] = []

    @calldata_type(VTK_STRING)
    def _on_message(_obj: Any, _event: str, message: Any = None) -> None:
        messages.append(str(message or "VTK error"))

    algorithm.AddObserver("ErrorEvent", _on_message)
    algorithm.AddObserver("WarningEvent", _on_message)
    return messages


# ------------------------------------------------------------------ surface distance


def distance_to_surface_mm(mesh: Mesh, points_lps_mm: ArrayLike) -> NDArray[np.float64]:
    """Exact unsigned distance from points to the nearest triangle of a mesh.

    Parameters
    ----------
    mesh : Mesh
    points_lps_mm : (P, 3) array_like
        Query points, LPS mm.

    Returns
    -------
    (P,) ndarray of float64
        Distance in mm to the closest point on any triangle.

    Examples
    --------
    >>> tri = Mesh([[0, 0, 0], [10, 0, 0], [0, 10, 0]], [[0, 1, 2]])
    >>> distance_to_surface_mm(tri, [[1, 1, 3], [-4, 0, 3]])
    array([3., 5.])
    """
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    points = geometry.as_points(points_lps_mm)
    if len(points) == 0:
        return np.zeros(0)
    if mesh.n_faces == 0:
        raise ValueError("distance_to_surface_mm needs a mesh with at least one triangle")
    implicit = vtk.vtkImplicitPolyDataDistance()
    implicit.SetInput(_polydata_from_mesh(mesh))
    out = vtk.vtkDoubleArray()
    implicit.FunctionValue(numpy_to_vtk(np.ascontiguousarray(points), deep=True), out)
    return np.abs(vtk_to_numpy(out).astype(np.float64))


# ---------------------------------------------------------------------- voxelisation


def voxelize(mesh: Mesh, grid: Volume, *, close_holes: bool = True) -> NDArray[np.bool_]:
    """Mark the voxels whose centres lie inside a closed triangle surface.

    Parameters
    ----------
    mesh : Mesh
        Closed (or nearly closed) surface, LPS mm.
    grid : Volume
        Only its geometry is used (shape, spacing, origin, direction; any orientation).
    close_holes : bool, optional, keyword-only
        Close boundary loops with a triangle fan around their centroid first (default).
        Rays that still pass through an opening abstain from the vote either way.

    Returns
    -------
    (K, J, I) ndarray of bool
        ``True`` where the voxel centre is inside the surface (non-zero winding number, or
        odd crossing count for inconsistently oriented meshes), in ``grid``'s array order.

    Examples
    --------
    >>> cube = Mesh(
    ...     [[x, y, z] for x in (0, 4) for y in (0, 4) for z in (0, 4)],
    ...     [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
    ...      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
    ... )
    >>> grid = Volume.from_components(np.zeros((6, 6, 6)), spacing_mm=(1, 1, 1),
    ...                               origin_lps_mm=(-0.5, -0.5, -0.5))
    >>> int(voxelize(cube, grid).sum())  # centres 0.5 .. 3.5 on each axis
    64
    """
    shape = grid.shape
    out = np.zeros(shape, dtype=bool)
    if mesh.n_faces == 0:
        return out
    edges = _edge_table(mesh.faces)
    oriented = _consistently_oriented(edges)
    if close_holes:
        mesh = _close_boundary_loops(mesh, edges)
    faces = mesh.faces
    vertices_index = geometry.lps_to_index(grid.affine_lps, mesh.vertices_lps_mm)

    # Only the index box the mesh spans (with a one-voxel margin) needs rays.
    used = vertices_index[np.unique(faces)]
    lo = np.maximum(np.floor(used.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(used.max(axis=0)).astype(int) + 1, np.asarray(shape) - 1)
    if np.any(hi < lo):
        return out
    sub_shape = tuple(int(n) for n in hi - lo + 1)
    local = vertices_index - lo

    votes = np.zeros(sub_shape, dtype=np.int8)
    valid = np.zeros(sub_shape, dtype=np.int8)
    raw = np.zeros(sub_shape, dtype=np.int8)
    for axis in range(3):
        inside, ray_ok = _cast_rays(local, faces, sub_shape, axis, winding=oriented)
        raw += inside
        ok = np.expand_dims(ray_ok, axis)
        votes += inside & ok
        valid += np.broadcast_to(ok, sub_shape)
    decided = (2 * votes != valid) & (valid > 0)
    mask = np.where(decided, 2 * votes > valid, raw >= 2)
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = mask
    return out


def _cast_rays(
    vertices: NDArray[np.float64],
    faces: NDArray[np.int64],
    shape: tuple[int, ...],
    axis: int,
    *,
    winding: bool,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Inside-ness of every voxel along rays parallel to index axis ``axis``.

    Returns the inside mask (``shape``) and, per ray (``shape`` without ``axis``),
    whether the ray's signed hits summed to zero (even count in parity mode).
    """
    u_axis, v_axis = [a for a in range(3) if a != axis]
    n_u, n_v, n_t = shape[u_axis], shape[v_axis], shape[axis]
    pu, pv, pt = vertices[:, u_axis], vertices[:, v_axis], vertices[:, axis]
    toggles = np.zeros((n_u, n_v, n_t + 1), dtype=np.int16)
    net = np.zeros(n_u * n_v, dtype=np.int64)
    for ray_u, ray_v, depth, sign in _ray_hits(pu, pv, pt, faces, n_u, n_v):
        weight = sign if winding else np.ones_like(sign)
        ray = ray_u * n_v + ray_v
        net += np.bincount(ray, weights=weight, minlength=n_u * n_v).astype(np.int64)
        slot = np.clip(np.floor(depth).astype(np.int64) + 1, 0, n_t)
        np.add.at(toggles, (ray_u, ray_v, slot), weight.astype(np.int16))
    count = np.cumsum(toggles[:, :, :n_t], axis=2, dtype=np.int16)
    inside = count != 0 if winding else (count & 1).astype(bool)
    ray_ok = (net == 0) if winding else (net % 2 == 0)
    # back from (u, v, t) to the grid's axis order
    order = np.argsort([u_axis, v_axis, axis])
    return inside.transpose(order), ray_ok.reshape(n_u, n_v)


def _ray_hits(
    pu: NDArray[np.float64],
    pv: NDArray[np.float64],
    pt: NDArray[np.float64],
    faces: NDArray[np.int64],
    n_u: int,
    n_v: int,
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]]:
    """Yield batches of (ray u, ray v, hit depth, facing sign) for rays at integer (u, v).

    The hit test is exact and watertight: each edge function is computed from the edge's
    lower vertex index, so the two triangles sharing an edge see bit-identical values of
    opposite sign, and a zero value (ray exactly on an edge or vertex) is resolved by a
    symbolic perturbation of the ray position by (+eps, +eps**2) in (u, v).
    """
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    area = (pu[b] - pu[a]) * (pv[c] - pv[a]) - (pv[b] - pv[a]) * (pu[c] - pu[a])
    keep = area != 0  # edge-on triangles: the perturbed ray never hits them
    faces = faces[keep]
    sign_all = np.sign(area[keep]).astype(np.int64)
    fu, fv = pu[faces], pv[faces]
    u0 = np.maximum(np.ceil(fu.min(axis=1)), 0).astype(np.int64)
    u1 = np.minimum(np.floor(fu.max(axis=1)), n_u - 1).astype(np.int64)
    v0 = np.maximum(np.ceil(fv.min(axis=1)), 0).astype(np.int64)
    v1 = np.minimum(np.floor(fv.max(axis=1)), n_v - 1).astype(np.int64)
    width_v = np.maximum(v1 - v0 + 1, 0)
    n_pairs = np.maximum(u1 - u0 + 1, 0) * width_v
    starts = np.concatenate([[0], np.cumsum(n_pairs)])
    first = 0
    while first < len(faces):
        # a batch of whole triangles holding about _BATCH_PAIRS candidate rays
        last = int(np.searchsorted(starts, starts[first] + _BATCH_PAIRS, side="right")) - 1
        last = min(max(last, first + 1), len(faces))
        tri = np.repeat(np.arange(first, last), n_pairs[first:last])
        if len(tri):
            offset = np.arange(len(tri)) - (starts[tri] - starts[first])
            ru = u0[tri] + offset // width_v[tri]
            rv = v0[tri] + offset % width_v[tri]
            hit = _hits(faces[tri], sign_all[tri], ru, rv, pu, pv, pt)
            yield ru[hit.index], rv[hit.index], hit.depth, sign_all[tri][hit.index]
        first = last


@dataclass(frozen=True)
class _Hits:
    index: NDArray[np.int64]
    depth: NDArray[np.float64]


def _hits(
    tri: NDArray[np.int64],
    sign: NDArray[np.int64],
    ru: NDArray[np.int64],
    rv: NDArray[np.int64],
    pu: NDArray[np.float64],
    pv: NDArray[np.float64],
    pt: NDArray[np.float64],
) -> _Hits:
    """Which (triangle, ray) candidates hit, and at what depth along the ray."""
    inside = np.ones(len(tri), dtype=bool)
    weights = []
    for n in range(3):
        # edge opposite vertex n, oriented p -> q in the triangle's winding order
        p, q = tri[:, (n + 1) % 3], tri[:, (n + 2) % 3]
        lo, hi = np.minimum(p, q), np.maximum(p, q)
        flip = np.where(p == lo, 1.0, -1.0)
        du, dv = pu[hi] - pu[lo], pv[hi] - pv[lo]
        edge = flip * (du * (rv - pv[lo]) - dv * (ru - pu[lo]))
        # Normalise to counter-clockwise so "inside" is positive for every triangle.
        edge *= sign
        eu, ev = flip * sign * du, flip * sign * dv
        # Perturbing the ray by (+eps, +eps^2) adds eps*(-ev) + eps^2*(eu) to the edge
        # function: on the edge, the ray is inside when ev < 0, or ev == 0 and eu > 0.
        tie_inside = (ev < 0) | ((ev == 0) & (eu > 0))
        inside &= (edge > 0) | ((edge == 0) & tie_inside)
        weights.append(edge)
    index = np.flatnonzero(inside)
    w = np.stack([wn[index] for wn in weights])
    t = pt[tri[index]].T
    depth = np.sum(w * t, axis=0) / np.sum(w, axis=0)
    return _Hits(index=index, depth=depth)


# ------------------------------------------------------------------- mesh topology


@dataclass(frozen=True)
class _Edges:
    half_edges: NDArray[np.int64]  # (3M, 2) directed edges in face order
    edge_of_half: NDArray[np.int64]  # (3M,) undirected edge id of each half edge
    use_count: NDArray[np.int64]  # (E,) triangles per undirected edge
    forward_count: NDArray[np.int64]  # (E,) uses going from lower to higher vertex index


def _edge_table(faces: NDArray[np.int64]) -> _Edges:
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(half, axis=1)
    _, edge_of_half, use_count = np.unique(
        undirected, axis=0, return_inverse=True, return_counts=True
    )
    edge_of_half = edge_of_half.reshape(-1)
    forward = np.bincount(
        edge_of_half, weights=(half[:, 0] < half[:, 1]), minlength=len(use_count)
    ).astype(np.int64)
    return _Edges(half, edge_of_half, use_count.astype(np.int64), forward)


def _consistently_oriented(edges: _Edges) -> bool:
    manifold = edges.use_count == 2
    return bool(np.all(edges.forward_count[manifold] == 1))


def _boundary_components(boundary: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Group boundary half edges ``(B, 2)`` into connected components (row indices)."""
    if len(boundary) == 0:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, local = np.unique(boundary, return_inverse=True)
    local = local.reshape(-1, 2)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    edge_label = label[local[:, 0]]
    return [np.flatnonzero(edge_label == lab) for lab in np.unique(edge_label)]


def _close_boundary_loops(mesh: Mesh, edges: _Edges) -> Mesh:
    """The mesh plus a centroid fan over every closed boundary loop.

    A loop is closable when it enters and leaves each of its vertices equally often
    (this also covers two holes touching at one vertex); a dangling edge (the rim of a
    single non-manifold "fin" triangle) is left alone, its rays abstain instead.
    """
    boundary = edges.half_edges[edges.use_count[edges.edge_of_half] == 1]
    new_faces: list[NDArray[np.int64]] = []
    centroids: list[NDArray[np.float64]] = []
    for rows in _boundary_components(boundary):
        loop = boundary[rows]
        ins = np.bincount(loop[:, 1], minlength=mesh.n_vertices)
        outs = np.bincount(loop[:, 0], minlength=mesh.n_vertices)
        if len(loop) < 3 or np.any(ins != outs):
            continue
        centre_id = mesh.n_vertices + len(centroids)
        centroids.append(mesh.vertices_lps_mm[np.unique(loop)].mean(axis=0))
        # the rim edge a->b is used by one triangle; the patch uses it as b->a
        new_faces.append(np.column_stack([loop[:, 1], loop[:, 0], np.full(len(loop), centre_id)]))
    if not new_faces:
        return mesh
    return Mesh(
        np.concatenate([mesh.vertices_lps_mm, np.asarray(centroids)]),
        np.concatenate([mesh.faces, *new_faces]),
    )


# ---------------------------------------------------------------------- surface extraction


def mesh_from_mask(mask: ArrayLike, grid: Volume) -> Mesh:
    """Triangle surface of a binary mask in LPS mm (marching cubes at the 0.5 level).

    Parameters
    ----------
    mask : (K, J, I) array_like of bool
        On ``grid``'s voxels.
    grid : Volume
        Geometry (any orientation).

    Returns
    -------
    Mesh
        Closed surface (the mask is padded by one voxel), triangles facing outward.
    """
    from skimage.measure import marching_cubes

    data = np.asarray(mask, dtype=bool)
    if data.shape != grid.shape:
        raise ValueError(f"mask shape {data.shape} differs from the grid {grid.shape}")
    if not data.any():
        raise ValueError("mask_to_mesh needs a non-empty mask")
    where = [np.nonzero(data.any(axis=tuple(a for a in range(3) if a != n)))[0] for n in range(3)]
    lo = np.array([int(w.min()) for w in where])
    hi = np.array([int(w.max()) for w in where])
    crop = np.pad(data[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1], 1)
    verts, faces, _, _ = marching_cubes(crop.astype(np.float32), level=0.5)
    index = verts + lo - 1
    points = grid.index_to_lps(index)
    # marching_cubes winds triangles for a right-handed index frame; a grid whose axes
    # form a left-handed frame in LPS mirrors them.
    if np.linalg.det(grid.direction) > 0:
        faces = faces[:, ::-1]
    return Mesh(points, faces.astype(np.int64))
