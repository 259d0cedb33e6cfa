"""Soft tissue around the bones: body outline with skin, fat and muscle layers, the
pelvic cavity with bowel, bladder and iliac vessels, and the CT table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.interpolate import CubicSpline

from bmbx_phantoms.grid import SceneGrid

__all__ = [
    "BodyOutline",
    "body_outline",
    "stamp_tube",
    "table_mask",
]

Mask = NDArray[np.bool_]
_SUPERELLIPSE_POWER = 2.6  # flatter than an ellipse, like an adult pelvic cross-section


@dataclass(frozen=True)
class BodyOutline:
    """Axial cross-section of the body (the same on every slice).

    The outline is a superellipse centred at ``(centre_x_mm, centre_y_mm)`` with
    half-width ``half_width_mm``, extending ``posterior_mm`` behind and ``anterior_mm``
    in front of the centre.
    """

    centre_x_mm: float
    centre_y_mm: float
    half_width_mm: float
    posterior_mm: float
    anterior_mm: float

    def contains(self, y: NDArray[np.float64], x: NDArray[np.float64]) -> Mask:
        """Whether the points ``(y, x)`` (broadcastable, mm) lie inside the outline."""
        u = np.abs(x - self.centre_x_mm) / self.half_width_mm
        dy = y - self.centre_y_mm
        v = np.where(dy >= 0, dy / self.posterior_mm, -dy / self.anterior_mm)
        return np.asarray(u**_SUPERELLIPSE_POWER + np.abs(v) ** _SUPERELLIPSE_POWER <= 1.0)

    def posterior_y(self, x: float) -> float:
        """Y (mm) of the posterior skin surface at left-right position ``x``."""
        u = min(abs(x - self.centre_x_mm) / self.half_width_mm, 1.0)
        p = _SUPERELLIPSE_POWER
        return self.centre_y_mm + self.posterior_mm * (1.0 - u**p) ** (1.0 / p)

    @property
    def anterior_y(self) -> float:
        """Y (mm) of the most anterior skin point."""
        return self.centre_y_mm - self.anterior_mm

    @property
    def posterior_max_y(self) -> float:
        """Y (mm) of the most posterior skin point."""
        return self.centre_y_mm + self.posterior_mm


def body_outline(
    bone_points_lps_mm: NDArray[np.float64],
    psis_lps_mm: Sequence[NDArray[np.float64]],
    midline_x_mm: float,
    *,
    skin_to_psis_mm: float,
    lateral_mm: float,
    anterior_mm: float,
) -> BodyOutline:
    """Fit the outline around the bones so that each PSIS is at least ``skin_to_psis_mm``
    below the posterior skin (measured straight posterior)."""
    pts = np.asarray(bone_points_lps_mm)
    half_width = float(np.max(np.abs(pts[:, 0] - midline_x_mm))) + lateral_mm
    centre_y = float(np.median(pts[:, 1]))
    anterior = centre_y - float(pts[:, 1].min()) + anterior_mm
    posterior = 10.0
    p = _SUPERELLIPSE_POWER
    for psis in psis_lps_mm:
        u = min(abs(float(psis[0]) - midline_x_mm) / half_width, 0.95)
        need = (float(psis[1]) + skin_to_psis_mm - centre_y) / (1.0 - u**p) ** (1.0 / p)
        posterior = max(posterior, need)
    # Keep the posterior bones (spinous processes, sacral crest) inside the body too.
    posterior = max(posterior, float(pts[:, 1].max()) - centre_y + 15.0)
    return BodyOutline(midline_x_mm, centre_y, half_width, posterior, anterior)


def depth_below_skin(grid: SceneGrid, outline: BodyOutline) -> NDArray[np.float64]:
    """Distance (mm) from each in-plane position to the skin, 0 outside; shape (J, I)."""
    y = grid.y_mm[:, None]
    x = grid.x_mm[None, :]
    inside = outline.contains(y, x)
    spacing = grid.spacing_kji_mm[1:]
    return np.asarray(ndimage.distance_transform_edt(inside, sampling=spacing))


def stamp_tube(
    target: Mask,
    grid: SceneGrid,
    points_lps_mm: NDArray[np.float64],
    radius_mm: float | NDArray[np.float64],
    *,
    step_mm: float = 1.0,
) -> None:
    """Set voxels within ``radius_mm`` of a smooth curve through ``points_lps_mm``.

    The curve is a cubic spline through the control points, sampled every ``step_mm``;
    a sphere is stamped at every sample. ``radius_mm`` may give one radius per control
    point (interpolated along the curve).
    """
    pts = np.asarray(points_lps_mm, dtype=np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(t[-1] / step_mm) + 1, 2)
    ts = np.linspace(0.0, t[-1], n)
    curve = (
        CubicSpline(t, pts, bc_type="natural")(ts)
        if len(pts) > 2
        else (pts[0] + (pts[1] - pts[0]) * (ts / t[-1])[:, None])
    )
    radii = np.interp(ts, t, np.broadcast_to(np.asarray(radius_mm, float), (len(pts),)))
    for centre, r in zip(curve, radii, strict=True):
        box = grid.box_slices(centre - r, centre + r)
        if any(s.stop <= s.start for s in box):
            continue
        z, y, x = grid.coordinates(box)
        d2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
        target[box] |= d2 <= r * r


def table_mask(
    grid: SceneGrid, outline: BodyOutline, *, prone: bool, thickness_mm: float = 45.0
) -> tuple[Mask, Mask, Mask]:
    """The CT table and its pad under the patient: anterior when prone, posterior when
    supine: a flat carbon-fibre shell around a foam core, with a foam pad on top.

    Returns
    -------
    shell, core, pad : (K, J, I) bool ndarrays
    """
    y = grid.y_mm[:, None]
    x = grid.x_mm[None, :] - outline.centre_x_mm
    pad_mm, shell_mm = 8.0, 3.0
    # Depth (mm) below the flat table top, measured away from the patient.
    top = outline.anterior_y - 1.0 if prone else outline.posterior_max_y + 1.0
    depth = (top - y) if prone else (y - top)
    pad = (depth >= 0) & (depth < pad_mm) & (np.abs(x) <= 230.0)
    table = (depth >= pad_mm) & (depth < pad_mm + thickness_mm) & (np.abs(x) <= 240.0)
    core = table & (depth >= pad_mm + shell_mm) & (depth < pad_mm + thickness_mm - shell_mm)
    core &= np.abs(x) <= 240.0 - shell_mm
    return tuple(  # type: ignore[return-value]
        np.broadcast_to(m, grid.shape).copy() for m in (table & ~core, core, pad)
    )
