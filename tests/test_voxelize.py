"""Mesh I/O and voxelisation against analytic shapes and a slow obvious reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_plan.io.errors import InputError
from bmbx_plan.mesh import (
    Mesh,
    distance_to_surface_mm,
    mesh_topology,
    read_mesh,
    voxelize,
    write_mesh,
)
from bmbx_plan.volume import Volume

# A grid whose array axes are permuted and flipped relative to LPS:
# k -> -z (feet first), j -> +x, i -> -y; anisotropic spacing, non-zero origin.
_ODD_DIRECTION = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def _sphere(radius_mm: float, centre: tuple[float, float, float], *, resolution: int) -> Mesh:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    source = vtk.vtkSphereSource()
    source.SetRadius(radius_mm)
    source.SetCenter(*centre)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    out = source.GetOutput()
    faces = vtk_to_numpy(out.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return Mesh(vtk_to_numpy(out.GetPoints().GetData()), faces)


def _ellipsoid(radii_mm: tuple[float, float, float], centre: NDArray[np.float64]) -> Mesh:
    unit = _sphere(1.0, (0.0, 0.0, 0.0), resolution=48)
    return unit.with_vertices(unit.vertices_lps_mm * np.asarray(radii_mm) + centre)


def _torus(major_mm: float, minor_mm: float, centre: NDArray[np.float64], n: int = 24) -> Mesh:
    u, v = np.meshgrid(np.arange(n) * 2 * np.pi / n, np.arange(n) * 2 * np.pi / n, indexing="ij")
    ring = major_mm + minor_mm * np.cos(v)
    points = np.stack([ring * np.cos(u), ring * np.sin(u), minor_mm * np.sin(v)], axis=-1)
    idx = np.arange(n * n).reshape(n, n)
    a, b = idx, np.roll(idx, -1, axis=0)
    c, d = np.roll(b, -1, axis=1), np.roll(a, -1, axis=1)
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    mesh = Mesh(points.reshape(-1, 3) + centre, faces)
    return mesh if mesh.volume_mm3() > 0 else Mesh(mesh.vertices_lps_mm, faces[:, ::-1])


def _grid(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: NDArray[np.float64] | None = None,
) -> Volume:
    return Volume.from_components(
        np.zeros(shape, dtype=np.uint8),
        spacing_mm=spacing,
        origin_lps_mm=origin,
        direction=direction,
    )


def _centred_grid(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre_lps_mm: tuple[float, float, float],
    direction: NDArray[np.float64] | None = None,
) -> Volume:
    """A grid whose middle (plus an irrational 0.137 voxel, to avoid ties) is the centre."""
    probe = _grid(shape, spacing, (0.0, 0.0, 0.0), direction)
    middle = probe.index_to_lps([(np.asarray(shape) - 1) / 2 + 0.137])[0]
    return _grid(shape, spacing, tuple(np.asarray(centre_lps_mm) - middle), direction)


def _boundary_voxels(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
    """Inside voxels with an outside face neighbour, and outside ones with an inside one."""
    cross = ndimage.generate_binary_structure(3, 1)
    inner = mask & ~ndimage.binary_erosion(mask, cross, border_value=0)
    outer = ndimage.binary_dilation(mask, cross) & ~mask
    return np.argwhere(inner | outer)


def _convex_inside(mesh: Mesh, points: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Exact inside test for a convex outward-oriented mesh: behind every face plane."""
    v = mesh.vertices_lps_mm
    a, b, c = (v[mesh.faces[:, n]] for n in range(3))
    normals = np.cross(b - a, c - a)
    offsets = np.einsum("ij,ij->i", normals, a)
    inside = np.ones(len(points), dtype=bool)
    for start in range(0, len(points), 4096):
        block = points[start : start + 4096]
        inside[start : start + 4096] = np.all(block @ normals.T < offsets, axis=1)
    return inside


def _slow_parity(mesh: Mesh, points: NDArray[np.float64]) -> NDArray[np.bool_]:
    """One Moller-Trumbore ray per point in a fixed oblique direction; odd hits = inside."""
    direction = np.array([0.5773, 0.5774, 0.5775])
    v = mesh.vertices_lps_mm
    a, b, c = (v[mesh.faces[:, n]] for n in range(3))
    e1, e2 = b - a, c - a
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    usable = np.abs(det) > 1e-12
    out = np.zeros(len(points), dtype=bool)
    for n, point in enumerate(points):  # one point at a time, all triangles at once
        s = point - a
        bu = np.einsum("ij,ij->i", s, p) / np.where(usable, det, 1.0)
        q = np.cross(s, e1)
        bv = (q @ direction) / np.where(usable, det, 1.0)
        t = np.einsum("ij,ij->i", e2, q) / np.where(usable, det, 1.0)
        hits = usable & (bu >= 0) & (bv >= 0) & (bu + bv <= 1) & (t > 0)
        out[n] = np.count_nonzero(hits) % 2 == 1
    return out


def _all_centres(grid: Volume) -> NDArray[np.float64]:
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij"), -1)
    return grid.index_to_lps(index.reshape(-1, 3))


# ------------------------------------------------------------------ voxelisation


@pytest.mark.parametrize("direction", [None, _ODD_DIRECTION], ids=["lps", "flipped"])
def test_ellipsoid_matches_exact_convex_inside_test(direction: NDArray[np.float64] | None) -> None:
    centre = np.array([3.3, -7.1, 12.7])
    mesh = _ellipsoid((14.0, 9.0, 11.0), centre)
    shape = (26, 42, 36)  # covers the ellipsoid in both orientations
    grid = _grid(shape, (1.5, 0.8, 0.9), (0.0, 0.0, 0.0), direction)
    # put the grid's centre on the ellipsoid, offset by an irrational fraction of a voxel
    middle = grid.index_to_lps([(np.asarray(grid.shape) - 1) / 2 + 0.137])[0]
    grid = _grid(shape, (1.5, 0.8, 0.9), tuple(centre - middle), direction)
    mask = voxelize(mesh, grid)
    truth = _convex_inside(mesh, _all_centres(grid)).reshape(grid.shape)
    # exact: the voxeliser decides inside-ness of each centre like the half-space test
    assert np.array_equal(mask, truth)
    touches_border = mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any()
    assert not touches_border
    # and the mask is the ellipsoid: volume within 2 % (mesh facets lose ~1 %, voxel
    # counting errors cancel to well under 1 % at 15000 voxels)
    analytic = 4 / 3 * np.pi * 14.0 * 9.0 * 11.0
    assert mask.sum() * grid.voxel_volume_mm3 == pytest.approx(analytic, rel=0.02)


def test_flipped_grid_gives_the_same_voxels_as_lps_grid() -> None:
    mesh = _torus(11.0, 4.5, np.array([1.0, 2.0, -3.0]))
    lps = _grid((20, 30, 40), (1.2, 0.9, 0.7), (-13.3, -15.9, -12.1))
    # the same voxel centres, stored with axes (k, j, i) -> (-z, +x, -y)
    corner = lps.index_to_lps([[19, 29, 0]])[0]  # max z, max y, min x
    odd = _grid((20, 40, 30), (1.2, 0.7, 0.9), tuple(corner), _ODD_DIRECTION)
    m_lps = voxelize(mesh, lps)
    m_odd = voxelize(mesh, odd)
    # odd[k, j, i] is at z = -k, x = +j, y = -i relative to corner
    as_lps = m_odd[::-1].transpose(0, 2, 1)[:, ::-1, :]
    assert np.array_equal(as_lps, m_lps)
    assert m_lps.sum() > 1000


def test_torus_matches_slow_ray_parity_reference() -> None:
    mesh = _torus(6.0, 2.5, np.array([0.3, -0.2, 0.1]), n=16)
    # k -> -z, j -> +x, i -> -y: 13.5 mm of z, 14.3 mm of x and y for a 17 x 17 x 5 torus
    grid = _centred_grid((9, 11, 13), (1.5, 1.3, 1.1), (0.3, -0.2, 0.1), _ODD_DIRECTION)
    fast = voxelize(mesh, grid)
    slow = _slow_parity(mesh, _all_centres(grid)).reshape(grid.shape)
    assert np.array_equal(fast, slow)
    assert 50 < fast.sum() < fast.size - 50


def test_boundary_lies_within_one_voxel_of_mesh_on_anisotropic_flipped_grid() -> None:
    mesh = _sphere(17.0, (5.0, -4.0, 30.0), resolution=40)
    grid = _centred_grid((30, 50, 48), (1.5, 0.8, 0.9), (5.0, -4.0, 30.0), _ODD_DIRECTION)
    mask = voxelize(mesh, grid)
    boundary = _boundary_voxels(mask)
    distance = distance_to_surface_mm(mesh, grid.index_to_lps(boundary))
    # a centre next to one of the other side is at most one spacing from the surface
    assert distance.max() <= grid.spacing_mm.max()
    assert len(boundary) > 1000


def test_small_holes_do_not_leak() -> None:
    closed = _sphere(12.0, (0.0, 0.0, 0.0), resolution=30)
    rng = np.random.default_rng(7)
    drop = rng.choice(closed.n_faces, size=6, replace=False)
    holey = Mesh(closed.vertices_lps_mm, np.delete(closed.faces, drop, axis=0))
    assert mesh_topology(holey).n_boundary_loops >= 1
    grid = _grid((22, 34, 30), (1.3, 0.8, 0.9), (-14.0, -13.5, -13.2))
    reference = voxelize(closed, grid)
    for close_holes in (True, False):
        mask = voxelize(holey, grid, close_holes=close_holes)
        # holes are patched (or their rays abstain), so at most a few rim voxels differ
        assert np.sum(mask != reference) <= 5


def test_mesh_outside_grid_gives_empty_mask() -> None:
    mesh = _sphere(5.0, (100.0, 0.0, 0.0), resolution=12)
    grid = _grid((5, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert not voxelize(mesh, grid).any()


def test_inconsistently_oriented_mesh_uses_parity() -> None:
    sphere = _sphere(8.0, (0.0, 0.0, 0.0), resolution=20)
    faces = np.array(sphere.faces)
    faces[::3] = faces[::3, ::-1]
    messy = Mesh(sphere.vertices_lps_mm, faces)
    assert not mesh_topology(messy).consistently_oriented
    grid = _grid((18, 19, 20), (1.0, 1.0, 1.0), (-9.0, -9.2, -9.4))
    assert np.array_equal(voxelize(messy, grid), voxelize(sphere, grid))


# ------------------------------------------------------------------ mesh & topology


def test_mesh_validates_its_arrays() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        Mesh(np.zeros((4, 2)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="finite"):
        Mesh(np.array([[0, 0, 0], [1, 0, np.nan], [0, 1, 0]]), [[0, 1, 2]])
    with pytest.raises(ValueError, match="face indices"):
        Mesh(np.zeros((3, 3)), [[0, 1, 3]])
    mesh = Mesh(np.zeros((3, 3)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="read-only"):
        mesh.vertices_lps_mm[0, 0] = 1.0


def test_mirroring_transform_keeps_triangles_outward() -> None:
    sphere = _sphere(5.0, (1.0, 2.0, 3.0), resolution=16)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored = sphere.transformed(mirror)
    assert mirrored.volume_mm3() == pytest.approx(sphere.volume_mm3())
    assert mirrored.vertices_lps_mm[:, 0].mean() == pytest.approx(-1.0)


def test_topology_of_closed_sphere_and_torus() -> None:
    sphere = mesh_topology(_sphere(5.0, (0.0, 0.0, 0.0), resolution=16))
    torus = mesh_topology(_torus(6.0, 2.0, np.zeros(3)))
    assert sphere.closed
    assert sphere.consistently_oriented
    assert sphere.euler_characteristic == 2
    assert torus.closed
    assert torus.euler_characteristic == 0


# ---------------------------------------------------------------------------- I/O


@pytest.mark.parametrize(("suffix", "tolerance"), [(".vtp", 0.0), (".vtk", 0.0), (".stl", 1e-5)])
def test_write_read_round_trip(tmp_path: Path, suffix: str, tolerance: float) -> None:
    mesh = _torus(60.0, 20.0, np.array([100.0, -200.0, -300.0]))
    path = write_mesh(mesh, tmp_path / f"torus{suffix}")
    back = read_mesh(path)
    assert back.n_faces == mesh.n_faces
    if suffix == ".stl":
        # STL stores float32 triangles; vertices are merged again on reading (maybe
        # renumbered), so compare geometry, not indices
        tri = np.sort(back.vertices_lps_mm[back.faces].reshape(-1, 3), axis=0)
        ref = np.sort(mesh.vertices_lps_mm[mesh.faces].reshape(-1, 3), axis=0)
        np.testing.assert_allclose(tri, ref, rtol=tolerance)
        assert back.n_vertices == mesh.n_vertices
    else:
        np.testing.assert_array_equal(back.faces, mesh.faces)
        np.testing.assert_allclose(back.vertices_lps_mm, mesh.vertices_lps_mm, rtol=tolerance)


def test_ascii_legacy_round_trip(tmp_path: Path) -> None:
    mesh = _sphere(3.0, (0.5, 0.25, 0.125), resolution=8)
    back = read_mesh(write_mesh(mesh, tmp_path / "s.vtk", binary=False))
    np.testing.assert_allclose(back.vertices_lps_mm, mesh.vertices_lps_mm, atol=1e-5)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.vtk: mesh file does not exist"):
        read_mesh(tmp_path / "nothere.vtk")


def test_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "mesh.obj").write_text("v 0 0 0\n")
    with pytest.raises(InputError, match=r"unknown mesh format '\.obj'"):
        read_mesh(tmp_path / "mesh.obj")
    with pytest.raises(InputError, match="unknown mesh format"):
        write_mesh(_sphere(1.0, (0, 0, 0), resolution=8), tmp_path / "mesh.ply")


def test_write_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_mesh(_sphere(1.0, (0, 0, 0), resolution=8), tmp_path / "no" / "m.vtp")


_LEGACY_HEADER = "# vtk DataFile Version 4.0\nvtk output\nASCII\nDATASET POLYDATA\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("POINTS 3 float\n0 0 0 1 0 0 0 1 0\nLINES 1 3\n2 0 1\n", "not a triangle mesh"),
        ("POINTS 4 float\n0 0 0 1 0 0 1 1 0 0 1 0\nPOLYGONS 1 5\n4 0 1 2 3\n", r"\[4\] vertices"),
        ("POINTS 3 float\n0 0 0 1 0 nan 0 1 0\nPOLYGONS 1 4\n3 0 1 2\n", "NaN"),
        ("POINTS 0 float\n", "empty"),
    ],
    ids=["lines", "quads", "nan", "empty"],
)
def test_bad_legacy_files(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.vtk"
    path.write_text(_LEGACY_HEADER + body)
    with pytest.raises(InputError, match=message) as info:
        read_mesh(path)
    assert info.value.path == path


def test_garbage_file(tmp_path: Path) -> None:
    for name in ("junk.vtk", "junk.vtp", "junk.stl"):
        path = tmp_path / name
        path.write_bytes(b"this is not a mesh\n")
        with pytest.raises(InputError, match=name):
            read_mesh(path)


def test_unstructured_grid_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "grid.vtk"
    path.write_text(
        "# vtk DataFile Version 4.0\nx\nASCII\nDATASET UNSTRUCTURED_GRID\n"
        "POINTS 3 float\n0 0 0 1 0 0 0 1 0\nCELLS 1 4\n3 0 1 2\nCELL_TYPES 1\n5\n"
    )
    with pytest.raises(InputError, match="not a VTK polydata"):
        read_mesh(path)
