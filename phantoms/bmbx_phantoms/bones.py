"""Voxelised bones of the phantom: hip bones with cortex and marrow, sacrum, SI joint
clefts, the L4-L5 lumbar segment and the proximal femurs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_phantoms.atlas import PelvisShape
from bmbx_phantoms.femur import ProximalFemur, femur_masks
from bmbx_phantoms.grid import SceneGrid, bbox_slices
from bmbx_plan.anatomy._grid import ball, enclosed
from bmbx_plan.mesh import Mesh, voxelize

__all__ = ["BoneMasks", "build_bones", "cortical_shell", "lumbar_spine"]

Mask = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class BoneMasks:
    """Exclusive boolean masks of the bony scene, all on one :class:`SceneGrid`."""

    hip_cortex: tuple[Mask, Mask]  # (left, right)
    hip_marrow: tuple[Mask, Mask]
    sacrum: Mask
    sacrum_cortex: Mask
    si_joint: tuple[Mask, Mask]
    spine_bone: Mask
    spine_cortex: Mask
    disc: Mask
    canal: Mask
    femur: tuple[Mask, Mask]  # (left, right), cortex included
    femur_cortex: tuple[Mask, Mask]

    @property
    def any_bone(self) -> Mask:
        """Every bone voxel (hips, sacrum, vertebrae, femurs)."""
        return (
            self.hip_cortex[0]
            | self.hip_marrow[0]
            | self.hip_cortex[1]
            | self.hip_marrow[1]
            | self.sacrum
            | self.spine_bone
            | self.femur[0]
            | self.femur[1]
        )


def cortical_shell(
    mask: Mask,
    spacing_mm: NDArray[np.float64],
    thickness_mm: float,
    *,
    open_at_grid_edge: bool = False,
) -> Mask:
    """Voxels of ``mask`` within ``thickness_mm`` of its outside (the cortical shell).

    Every voxel with a face neighbour outside the mask belongs to the shell whatever the
    thickness, so the shell is closed even when slices are thicker than the cortex.
    With ``open_at_grid_edge`` a bone cut by the grid's edge (the femoral shaft) shows
    marrow on the cut, as a real scan would, instead of a cortical lid.
    """
    box = bbox_slices(mask, 2)
    sub = mask[box]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing_mm)
    # The distance transform already treats the array's edge as inside; the erosion
    # needs to be told.
    edge_value = 1 if open_at_grid_edge else 0
    boundary = sub & ~ndimage.binary_erosion(sub, border_value=edge_value)
    shell = np.zeros_like(mask)
    shell[box] = sub & ((depth <= thickness_mm) | boundary)
    return shell


#: Creases of a bone surface narrower than this (mm) are closed (see :func:`_solid`).
_SLIT_MM = 3.0


def _solid(mask: Mask, spacing_mm: NDArray[np.float64]) -> Mask:
    """``mask`` with its enclosed cavities filled and its slits narrower than
    :data:`_SLIT_MM` closed.

    A bone is solid and its surface smooth at the millimetre scale; a thin, folded part
    of a mesh (a thinned wing) can leave pockets and creases of a voxel or two that no
    real bone has. Openings wider than a slit (foramina, canals, the acetabulum) stay."""
    structure = ball(_SLIT_MM / 2.0, spacing_mm)
    box = bbox_slices(mask, max(structure.shape) // 2 + 1)
    sub = mask[box]
    closed = sub | ndimage.binary_closing(sub, structure=structure)
    out = mask.copy()
    out[box] = closed | enclosed(closed)
    return out


def _signed_distance(mask: Mask, spacing_mm: NDArray[np.float64]) -> NDArray[np.float64]:
    """Signed distance in mm (negative inside), voxel-centre accuracy."""
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_mm)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_mm)
    return np.asarray(outside - inside, dtype=np.float64)


def _si_joint(
    sacrum: Mask, hip: Mask, spacing_mm: NDArray[np.float64], width_mm: float
) -> tuple[Mask, Mask, Mask]:
    """Carve the SI joint cleft between ``sacrum`` and ``hip``.

    The cleft is every voxel near both bones that is either outside both or within
    ``width_mm`` of the surface halfway between them, so a cleft exists even where the
    meshes touch or overlap. Returns (joint, sacrum without the cleft, hip without it).
    """
    reach_mm = width_mm / 2.0 + 2.0 * float(spacing_mm.max())
    joint = np.zeros_like(sacrum)
    # The joint is by definition next to the sacrum: work in the sacrum's padded box.
    box = bbox_slices(sacrum, int(np.ceil(reach_mm / spacing_mm.min())) + 2)
    if not hip[box].any():
        return joint, sacrum, hip
    d_sac = _signed_distance(sacrum[box], spacing_mm)
    d_hip = _signed_distance(hip[box], spacing_mm)
    close = (d_sac < reach_mm) & (d_hip < reach_mm)
    outside_both = (d_sac > 0) & (d_hip > 0)
    cleft = close & (outside_both | (np.abs(d_sac - d_hip) <= width_mm))
    joint[box] = cleft
    sac_new, hip_new = sacrum.copy(), hip.copy()
    sac_new[box] &= ~cleft
    hip_new[box] &= ~cleft
    # Where the meshes overlap beyond the cleft, give the voxel to the bone it is deeper in.
    both = sac_new[box] & hip_new[box]
    sac_new[box] &= ~(both & (d_hip < d_sac))
    hip_new[box] &= ~(both & (d_hip >= d_sac))
    return joint, sac_new, hip_new


def lumbar_spine(grid: SceneGrid, s1_top_lps_mm: NDArray[np.float64]) -> tuple[Mask, Mask, Mask]:
    """L5 and L4 (bodies, arches, spinous and transverse processes), discs and canal.

    A simple analytic segment stacked on the S1 endplate centre ``s1_top_lps_mm``.
    Returns (bone, disc, canal) masks.
    """
    cx, cy, z_top = (float(v) for v in s1_top_lps_mm)
    disc_mm, body_mm = 10.0, 27.0
    box = grid.box_slices(
        np.array([cx - 60.0, cy - 40.0, z_top]), np.array([cx + 60.0, cy + 90.0, z_top + 160.0])
    )
    z, y, x = grid.coordinates(box)
    dx = x - cx
    shape = tuple(s.stop - s.start for s in box)
    bone = np.zeros(shape, bool)
    disc = np.zeros(shape, bool)
    canal = np.zeros(shape, bool)
    body_ellipse = (dx / 24.0) ** 2 + ((y - cy) / 17.0) ** 2 <= 1.0
    canal_y = cy + 17.0 + 9.0
    canal_ellipse = (dx / 11.0) ** 2 + ((y - canal_y) / 8.0) ** 2 <= 1.0
    arch = ((dx / 19.0) ** 2 + ((y - canal_y) / 14.0) ** 2 <= 1.0) & ~canal_ellipse
    arch = arch & (y >= cy + 12.0)
    spinous = (np.abs(dx) <= 3.5) & (y >= canal_y + 10.0) & (y <= canal_y + 42.0)
    transverse = (np.abs(dx) >= 12.0) & (np.abs(dx) <= 38.0)
    transverse = transverse & (y >= canal_y - 6.0) & (y <= canal_y + 4.0)
    z0 = z_top
    for _ in range(3):  # discs and bodies of L5, L4 and the start of L3
        in_disc = (z > z0) & (z <= z0 + disc_mm)
        disc |= in_disc & body_ellipse
        b0, b1 = z0 + disc_mm, z0 + disc_mm + body_mm
        in_body = (z > b0) & (z <= b1)
        bone |= in_body & body_ellipse
        bone |= in_body & arch
        bone |= (z > b0 + 4.0) & (z <= b1 - 4.0) & spinous
        bone |= (z > b0 + 8.0) & (z <= b1 - 8.0) & transverse
        z0 = b1
    canal |= (z > z_top - 30.0) & canal_ellipse
    canal &= ~bone
    full = [np.zeros(grid.shape, bool) for _ in range(3)]
    for dst, src in zip(full, (bone, disc, canal), strict=True):
        dst[box] = src
    return full[0], full[1], full[2]


def s1_top(sacrum: Mesh) -> NDArray[np.float64]:
    """Centre of the S1 endplate: the mean of the sacrum's highest vertices."""
    verts = sacrum.vertices_lps_mm
    top = verts[verts[:, 2] >= verts[:, 2].max() - 10.0]
    return np.array([top[:, 0].mean(), top[:, 1].mean(), verts[:, 2].max() - 3.0])


def build_bones(
    shape: PelvisShape,
    grid: SceneGrid,
    *,
    femurs: tuple[ProximalFemur, ProximalFemur],
    cortex_thickness_mm: float,
    si_joint_width_mm: float,
    hip_joint_gap_mm: float = 2.0,
) -> BoneMasks:
    """Voxelise the pelvis and the femurs and split them into the exclusive bony masks.

    Parameters
    ----------
    shape : PelvisShape
        Posed bone meshes, LPS mm.
    grid : SceneGrid
    femurs : (ProximalFemur, ProximalFemur), keyword-only
        Left and right femur (see :func:`bmbx_phantoms.femur.proximal_femur`).
    cortex_thickness_mm, si_joint_width_mm : float, keyword-only
        Cortical shell thickness of every bone and SI joint cleft width, mm.
    hip_joint_gap_mm : float, keyword-only
        Smallest cleft between femoral head and acetabulum, mm: the pelvis wins where
        the femur would come closer.
    """
    template = grid.volume()
    spacing = grid.spacing_kji_mm
    sacrum = _solid(voxelize(shape.sacrum, template), spacing)
    hips = [
        _solid(voxelize(mesh, template), spacing) for mesh in (shape.left_hip, shape.right_hip)
    ]
    joints = []
    for n in range(2):
        joint, sacrum, hips[n] = _si_joint(sacrum, hips[n], spacing, si_joint_width_mm)
        joints.append(joint)
    # A voxel claimed by both clefts (a sacrum sliver) stays with the left joint.
    joints[1] &= ~joints[0]
    hips[0] &= ~hips[1]
    spine, disc, canal = lumbar_spine(grid, s1_top(shape.sacrum))
    pelvis = sacrum | hips[0] | hips[1] | joints[0] | joints[1]
    spine &= ~pelvis
    disc &= ~(pelvis | spine)
    canal &= ~(hips[0] | hips[1] | spine | disc)
    sacrum &= ~canal
    taken = pelvis | spine | disc | canal
    femur, femur_cortex = [], []
    for n, femur_shape in enumerate(femurs):
        bone, shell = femur_masks(
            grid,
            femur_shape,
            hip=hips[n],
            others=taken,
            cortex_thickness_mm=cortex_thickness_mm,
            gap_mm=hip_joint_gap_mm,
        )
        taken = taken | bone
        femur.append(bone)
        femur_cortex.append(shell)
    cortex = [cortical_shell(h, spacing, cortex_thickness_mm) for h in hips]
    marrow = [h & ~c for h, c in zip(hips, cortex, strict=True)]
    return BoneMasks(
        hip_cortex=(cortex[0], cortex[1]),
        hip_marrow=(marrow[0], marrow[1]),
        sacrum=sacrum,
        sacrum_cortex=cortical_shell(sacrum, spacing, cortex_thickness_mm),
        si_joint=(joints[0], joints[1]),
        spine_bone=spine,
        spine_cortex=cortical_shell(spine, spacing, cortex_thickness_mm),
        disc=disc,
        canal=canal,
        femur=(femur[0], femur[1]),
        femur_cortex=(femur_cortex[0], femur_cortex[1]),
    )
