"""Real bone in a synthetic body.

A bone-only CT (HU inside the bones, 0 everywhere else, as in the PENGWIN data) has no
soft tissue, skin, air or table. :func:`in_synthetic_body` puts a body around the real
bone: muscle next to the bone, fat further out to the skin, air outside and a CT table
behind it, with CT noise. Segmentation and planning then meet real bone in the
surroundings of a patient's CT, and the skin-to-bone path can be planned and checked.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bmbx_phantoms.soft_tissue import body_outline
from bmbx_plan.volume import Volume

__all__ = ["in_synthetic_body"]

Mask = NDArray[np.bool_]

# Soft tissue within this distance of the bone is muscle (gluteal, paraspinal, iliacus),
# further out fat: an adult's pelvis in cross-section.
_MUSCLE_MM = 18.0
_MUSCLE_HU, _FAT_HU, _AIR_HU, _TABLE_HU = 50.0, -100.0, -1000.0, 250.0
# The body outline's margins around the bones (mm), as in an average-habitus phantom.
_LATERAL_MM, _ANTERIOR_MM = 35.0, 50.0
# The table: a slab this far behind the posterior skin and this thick (mm); the scan is
# supine, as trauma CTs are.
_TABLE_GAP_MM, _TABLE_MM = 8.0, 12.0


def in_synthetic_body(
    ct: Volume,
    bone: Mask,
    *,
    skin_to_psis_mm: float = 50.0,
    noise_hu: float = 12.0,
    seed: int = 0,
) -> Volume:
    """``ct`` with a body (muscle and fat to the skin), air and a table around its bone.

    Parameters
    ----------
    ct : Volume
        A bone-only CT: HU inside ``bone``, anything outside (it is replaced).
    bone : (K, J, I) bool ndarray
        The bone voxels (e.g. the union of expert bone masks).
    skin_to_psis_mm : float
        Depth of each posterior iliac spine (the most posterior bone on its side of the
        midline) below the posterior skin.
    noise_hu : float
        Standard deviation of the noise added to the soft tissue (the bone keeps its own).
    seed : int

    Returns
    -------
    Volume
        Integer HU on the grid of ``ct``.
    """
    bone = np.asarray(bone, bool)
    if bone.shape != ct.shape or not bone.any():
        raise ValueError("bone must be a non-empty mask on the CT's grid")
    x, y = ct.lps_coordinate(0), ct.lps_coordinate(1)  # broadcastable to the CT
    points = ct.index_to_lps(np.argwhere(bone)[::20])
    midline = float(np.median(points[:, 0]))
    upper = points[points[:, 2] >= np.percentile(points[:, 2], 50)]
    spines = []
    for sign in (1.0, -1.0):  # the most posterior bone of the upper pelvis, each side
        side = upper[(upper[:, 0] - midline) * sign > 20.0]
        if len(side):
            spines.append(side[np.argmax(side[:, 1])])
    outline = body_outline(
        points,
        spines,
        midline,
        skin_to_psis_mm=skin_to_psis_mm,
        lateral_mm=_LATERAL_MM,
        anterior_mm=_ANTERIOR_MM,
    )
    body = outline.contains(y, x)
    behind = y - outline.posterior_max_y
    table = (
        (behind >= _TABLE_GAP_MM)
        & (behind < _TABLE_GAP_MM + _TABLE_MM)
        & (np.abs(x - outline.centre_x_mm) <= outline.half_width_mm + 20.0)
    )

    near = ndimage.distance_transform_edt(~bone, sampling=ct.spacing_mm) < _MUSCLE_MM
    soft = np.where(near, np.float32(_MUSCLE_HU), np.float32(_FAT_HU))
    soft = ndimage.gaussian_filter(soft, 1.0)
    rng = np.random.default_rng(seed)
    soft += rng.normal(0.0, noise_hu, ct.shape).astype(np.float32)
    out = np.where(body, soft, np.float32(_AIR_HU))
    out = np.where(table, np.float32(_TABLE_HU), out)
    out[bone] = np.asarray(ct.array)[bone]
    return ct.with_array(np.clip(np.rint(out), -1024, 3071).astype(np.int16))
