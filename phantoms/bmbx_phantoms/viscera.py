"""Contents of the pelvis: visceral fat, bowel loops with gas, bladder, iliac vessels.

Placed from the bony anatomy so they follow the pelvis shape and pose. Gas rises to
the non-dependent side of each loop: posterior when prone, anterior when supine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_phantoms.grid import SceneGrid, bbox_slices
from bmbx_phantoms.soft_tissue import stamp_tube

__all__ = ["Viscera", "build_viscera"]

Mask = NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Viscera:
    """Exclusive masks of the pelvic contents."""

    cavity: Mask  # visceral fat: the cavity minus everything below
    bowel: Mask  # wall and fluid content
    bowel_gas: Mask
    bladder: Mask
    vessels: Mask
    bowel_content: Mask  # the fluid in the bowel's lumen (a subset of ``bowel``)


def _cavity(
    grid: SceneGrid,
    fascia: Mask,
    bone: Mask,
    spine_front_y: NDArray[np.float64],
    midline_x_mm: float,
    half_width_mm: float,
    z_floor_mm: float,
) -> Mask:
    """Region of the abdominal and pelvic cavity, lined by a muscle layer.

    Inside the muscle fascia (less a 12 mm abdominal wall), anterior to the spine and
    sacrum, at least 8 mm from bone (psoas, iliacus, obturator lining), within the bony
    pelvis width and above the pelvic floor.
    """
    z = grid.z_mm[:, None, None]
    y = grid.y_mm[None, :, None]
    x = grid.x_mm[None, None, :]
    spacing = grid.spacing_kji_mm
    wall = ndimage.distance_transform_edt(fascia, sampling=spacing[1:]) > 12.0
    cavity = np.broadcast_to(wall, grid.shape) & (y < spine_front_y[:, None, None] - 3.0)
    cavity = cavity & (np.abs(x - midline_x_mm) < half_width_mm) & (z > z_floor_mm)
    # Distances to bone only matter near it: compute them in the bones' padded box.
    box = bbox_slices(bone, int(np.ceil(10.0 / spacing.min())))
    far_from_bone = np.ones(grid.shape, bool)
    far_from_bone[box] = ndimage.distance_transform_edt(~bone[box], sampling=spacing) > 8.0
    return cavity & far_from_bone


def _random_points_in(
    mask: Mask, grid: SceneGrid, rng: np.random.Generator, n: int
) -> NDArray[np.float64]:
    """``n`` random voxel centres (LPS mm) drawn from ``mask``."""
    idx = np.argwhere(mask)
    pick = idx[rng.integers(0, len(idx), size=n)]
    return np.stack([grid.x_mm[pick[:, 2]], grid.y_mm[pick[:, 1]], grid.z_mm[pick[:, 0]]], axis=1)


def build_viscera(
    grid: SceneGrid,
    *,
    fascia: Mask,
    bone: Mask,
    spine_front_y: NDArray[np.float64],
    midline_x_mm: float,
    pelvis_half_width_mm: float,
    pubis_lps_mm: NDArray[np.float64],
    bifurcation_lps_mm: NDArray[np.float64],
    si_joint_centres: tuple[NDArray[np.float64], NDArray[np.float64]],
    asis: tuple[NDArray[np.float64], NDArray[np.float64]],
    notch_apex: tuple[NDArray[np.float64], NDArray[np.float64]],
    bladder_volume_ml: float,
    bowel_loops: int,
    prone: bool,
    rng: np.random.Generator,
) -> Viscera:
    """Build the pelvic contents from landmarks; ``rng`` draws the bowel loops."""
    cavity = _cavity(
        grid,
        fascia,
        bone,
        spine_front_y,
        midline_x_mm,
        0.8 * pelvis_half_width_mm,
        float(pubis_lps_mm[2]) - 25.0,
    )
    z = grid.z_mm[:, None, None]
    y = grid.y_mm[None, :, None]
    x = grid.x_mm[None, None, :]

    # Bladder: an ellipsoid behind and above the pubic symphysis.
    r = (3.0 * bladder_volume_ml * 1000.0 / (4.0 * np.pi * 1.3 * 0.9)) ** (1.0 / 3.0)
    centre = pubis_lps_mm + np.array([0.0, r + 10.0, 0.5 * r])
    bladder = ((x - centre[0]) / (1.3 * r)) ** 2 + ((y - centre[1]) / r) ** 2 + (
        (z - centre[2]) / (0.9 * r)
    ) ** 2 <= 1.0
    bladder &= cavity

    # Bowel loops: smooth random tubes above the bladder, with a rectum along the sacrum.
    bowel_space = cavity & ~ndimage.binary_dilation(bladder, iterations=2)
    bowel = np.zeros(grid.shape, bool)
    lumen = np.zeros(grid.shape, bool)
    gas = np.zeros(grid.shape, bool)
    up = 1.0 if prone else -1.0  # +y (posterior) is up when prone
    upper = bowel_space & (z > centre[2] + 0.5 * r)
    for _ in range(bowel_loops):
        if not upper.any():
            break
        pts = _random_points_in(upper, grid, rng, 4)
        order = np.argsort(pts[:, 0] + rng.normal(0, 20, 4))
        outer = float(rng.uniform(11.0, 17.0))
        loop = np.zeros(grid.shape, bool)
        inner = np.zeros(grid.shape, bool)
        stamp_tube(loop, grid, pts[order], outer)
        stamp_tube(inner, grid, pts[order], outer - 3.0)
        level = float(np.mean(pts[:, 1])) + up * 0.3 * outer
        bowel |= loop
        lumen |= inner
        gas |= inner & ((y - level) * up > 0)
    bowel &= bowel_space
    gas &= bowel

    # Iliac vessels: common iliac from the aortic bifurcation to the front of each SI
    # joint, external iliac along the pelvic brim toward the groin, internal iliac down to
    # the greater sciatic notch and the superior gluteal artery out through it.
    vessels = np.zeros(grid.shape, bool)
    for side in range(2):
        lateral = 1.0 if side == 0 else -1.0
        si = si_joint_centres[side]
        division = si + np.array([-lateral * 8.0, -22.0, 8.0])
        groin = np.array(
            [
                0.7 * asis[side][0] + 0.3 * midline_x_mm,
                asis[side][1] + 15.0,
                asis[side][2] - 45.0,
            ]
        )
        notch = notch_apex[side]
        inside_notch = notch + np.array([-lateral * 18.0, -12.0, 4.0])
        through = notch + np.array([0.0, 4.0, -8.0])
        outside = notch + np.array([lateral * 12.0, 30.0, -6.0])
        stamp_tube(vessels, grid, np.array([bifurcation_lps_mm, division]), 5.5)
        stamp_tube(vessels, grid, np.array([division, 0.5 * (division + groin), groin]), 4.5)
        stamp_tube(vessels, grid, np.array([division, inside_notch]), 3.5)
        stamp_tube(vessels, grid, np.array([inside_notch, through, outside]), 2.5)
        # The vein runs beside the artery, posterior and medial.
        offset = np.array([-lateral * 6.0, 8.0, 0.0])
        stamp_tube(vessels, grid, np.array([bifurcation_lps_mm + offset, division + offset]), 6.5)
        stamp_tube(vessels, grid, np.array([division + offset, groin + offset]), 5.5)
    vessels &= ~bone & fascia
    bladder &= ~vessels
    bowel &= ~(vessels | bladder)
    gas &= bowel
    cavity = cavity & ~(bowel | bladder | vessels)
    return Viscera(
        cavity=cavity,
        bowel=bowel & ~gas,
        bowel_gas=gas,
        bladder=bladder,
        vessels=vessels,
        bowel_content=bowel & lumen & ~gas,
    )
