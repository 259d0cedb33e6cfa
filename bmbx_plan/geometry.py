"""Pure geometry on ``(N, 3)`` arrays in LPS millimetres.

Every function takes and returns plain numpy arrays; none knows about images or files.
Conventions (see ``ARCHITECTURE.md`` section 3b): physical points are DICOM patient
coordinates, LPS in mm (+x patient left, +y posterior, +z head); array indices are in
numpy order ``(k, j, i)`` (slice, row, column).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AXIS_LPS",
    "angle_between_deg",
    "apply_affine",
    "as_points",
    "axial_and_craniocaudal_angles_deg",
    "index_to_lps",
    "lps_to_index",
    "sample_segment",
    "unit",
]

FloatArray = NDArray[np.float64]

#: Unit vectors of the patient axes in LPS.
AXIS_LPS: dict[str, FloatArray] = {
    "left": np.array([1.0, 0.0, 0.0]),
    "posterior": np.array([0.0, 1.0, 0.0]),
    "superior": np.array([0.0, 0.0, 1.0]),
}


def as_points(points: ArrayLike) -> FloatArray:
    """Return ``points`` as a float ``(N, 3)`` array (a single point becomes ``(1, 3)``).

    Raises
    ------
    ValueError
        If the last axis does not have length 3 or values are not finite.
    """
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {np.shape(points)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("points must be finite (found NaN or inf)")
    return arr


def apply_affine(affine: ArrayLike, points: ArrayLike) -> FloatArray:
    """Apply a 4x4 homogeneous ``affine`` to ``(N, 3)`` ``points``.

    >>> apply_affine(np.diag([2.0, 3.0, 4.0, 1.0]), [1.0, 1.0, 1.0])
    array([[2., 3., 4.]])
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {aff.shape}")
    pts = as_points(points)
    return pts @ aff[:3, :3].T + aff[:3, 3]


def index_to_lps(affine_lps: ArrayLike, index_kji: ArrayLike) -> FloatArray:
    """Map ``(N, 3)`` array indices ``(k, j, i)`` (may be fractional) to LPS mm."""
    return apply_affine(affine_lps, index_kji)


def lps_to_index(affine_lps: ArrayLike, points_lps_mm: ArrayLike) -> FloatArray:
    """Map ``(N, 3)`` LPS points (mm) to fractional array indices ``(k, j, i)``."""
    return apply_affine(np.linalg.inv(np.asarray(affine_lps, dtype=np.float64)), points_lps_mm)


def unit(vectors: ArrayLike) -> FloatArray:
    """Normalise ``(N, 3)`` vectors (or one vector) to unit length.

    >>> unit([3.0, 0.0, 4.0])
    array([[0.6, 0. , 0.8]])
    """
    vec = as_points(vectors)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("cannot normalise a zero-length vector")
    return vec / norm


def angle_between_deg(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Angle in degrees between corresponding rows of ``a`` and ``b`` (broadcasts).

    >>> angle_between_deg([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    array([90.])
    """
    ua, ub = unit(a), unit(b)
    cos = np.clip(np.sum(ua * ub, axis=1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def axial_and_craniocaudal_angles_deg(
    directions_lps: ArrayLike, *, lateral_sign: float
) -> tuple[FloatArray, FloatArray]:
    """Split needle directions into the CT angles an IR reads off a plan.

    Parameters
    ----------
    directions_lps : (N, 3) array_like
        Needle directions (skin toward tip), any length.
    lateral_sign : float
        +1 when "lateral" is +x (left ilium), -1 when it is -x (right ilium).

    Returns
    -------
    axial_deg : (N,) ndarray
        Angle inside the axial plane from the antero-posterior axis, positive toward the
        lateral side. A needle pointing straight anterior (or posterior) gives 0.
    craniocaudal_deg : (N,) ndarray
        Elevation out of the axial plane, positive cranial.

    >>> ax, cc = axial_and_craniocaudal_angles_deg([[-1.0, -1.0, 0.0]], lateral_sign=-1)
    >>> float(ax[0]), float(cc[0])
    (45.0, 0.0)
    """
    d = unit(directions_lps)
    lateral = d[:, 0] * np.sign(lateral_sign)
    ap = np.abs(d[:, 1])
    axial = np.degrees(np.arctan2(lateral, ap))
    cranio = np.degrees(np.arcsin(np.clip(d[:, 2], -1.0, 1.0)))
    return axial, cranio


def sample_segment(start: ArrayLike, end: ArrayLike, *, step_mm: float) -> FloatArray:
    """Points from ``start`` to ``end`` (both included) at most ``step_mm`` apart.

    >>> sample_segment([0, 0, 0], [0, 0, 2], step_mm=1.0)[:, 2]
    array([0., 1., 2.])
    """
    if step_mm <= 0:
        raise ValueError(f"step_mm must be positive, got {step_mm}")
    a, b = as_points(start)[0], as_points(end)[0]
    length = float(np.linalg.norm(b - a))
    count = max(int(np.ceil(length / step_mm)), 1) + 1
    t = np.linspace(0.0, 1.0, count)[:, np.newaxis]
    return a + t * (b - a)
