"""The patient's body in a CT: the outline with the table, pads and blankets removed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.anatomy._grid import bounding_box, components, holes_per_slice
from bmbx_plan.distance import distance_mm
from bmbx_plan.volume import Volume

__all__ = ["BodyMask", "segment_body"]

Mask = NDArray[np.bool_]

# Tissue is anything denser than this; air, lung and table foam are below it.
_TISSUE_HU = -400.0
# Thin links between the body and the table (pads, blankets, straps) are cut by an
# opening of this radius; the body is then grown back to its real outline.
_OPENING_MM = 6.0
# Work on a coarser grid for the opening and the component search (speed); the final
# outline comes from the full-resolution tissue mask.
_WORK_SPACING_MM = 2.0
# A scan "has air around the patient" when at least this share of the outer faces of
# the volume is air; bone-only or padded images (outside = 0 HU) do not.
_AIR_FACE_FRACTION = 0.2


@dataclass(frozen=True, eq=False)
class BodyMask:
    """Result of :func:`segment_body`.

    Attributes
    ----------
    body : (K, J, I) bool ndarray
        The body with internal air (bowel gas, lungs) included; all True when the
        image has no air around the patient.
    table : (K, J, I) bool ndarray
        Dense things outside the body (table, pads, blankets, cables).
    has_air : bool
        Whether the image shows air around the patient; without it there is no skin.
    notes : tuple of str
    """

    body: Mask
    table: Mask
    has_air: bool
    notes: tuple[str, ...]


def _outer_faces(array: NDArray[Any]) -> NDArray[Any]:
    faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    return np.concatenate([f.ravel() for f in faces])


def segment_body(ct: Volume, *, tissue_threshold_hu: float = _TISSUE_HU) -> BodyMask:
    """Find the body and separate it from the table and other objects.

    The largest tissue component after an opening that cuts thin links (pads,
    blankets) is the body; it is grown back within the tissue mask, and holes inside
    each axial slice (gas, lungs) are filled. Everything dense outside is the table.

    Parameters
    ----------
    ct : Volume
        HU.
    tissue_threshold_hu : float
        Voxels above this are tissue (or table).
    """
    tissue = np.asarray(ct.array) > tissue_threshold_hu
    faces = _outer_faces(np.asarray(ct.array))
    has_air = bool(np.mean(faces < -500.0) >= _AIR_FACE_FRACTION)
    if not has_air:
        everything = np.ones(ct.shape, bool)
        return BodyMask(
            everything,
            np.zeros(ct.shape, bool),
            False,
            (
                "no air around the patient in this image (background is not air): the whole "
                "field of view is treated as body and no skin surface is available",
            ),
        )

    spacing = ct.spacing_mm
    step = np.maximum(np.round(_WORK_SPACING_MM / spacing), 1).astype(int)
    coarse = tissue[:: step[0], :: step[1], :: step[2]]
    coarse_spacing = spacing * step
    depth = distance_mm(coarse, coarse_spacing)
    core = depth > _OPENING_MM
    labels, count = components(core)
    if count == 0:
        raise ValueError(
            "no body found: nothing in the image is thicker than "
            f"{2 * _OPENING_MM:.0f} mm of tissue"
        )
    sizes = np.bincount(labels[core], minlength=count + 1)
    sizes[0] = 0
    biggest = labels == int(np.argmax(sizes))
    # Grow back by the opening radius (plus a voxel) inside the tissue: the outline.
    grow_mm = _OPENING_MM + float(coarse_spacing.max())
    box = bounding_box(biggest, int(np.ceil(grow_mm / coarse_spacing.min())) + 1)
    grown = np.zeros_like(biggest)
    grown[box] = distance_mm(~biggest[box], coarse_spacing) <= grow_mm
    full = np.repeat(np.repeat(np.repeat(grown, step[0], 0), step[1], 1), step[2], 2)
    full = full[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    if full.shape != ct.shape:  # coarse grid did not cover the last partial block
        padded = np.zeros(ct.shape, bool)
        padded[: full.shape[0], : full.shape[1], : full.shape[2]] = full
        full = padded
    body = tissue & full
    axial, _ = ct.axis_of(2)
    # Internal air (bowel gas, lungs) is body: holes of each axial slice are filled.
    # Only inside the body's box (with a margin of outside air) can there be holes.
    inner = bounding_box(body, 1)
    body[inner] |= holes_per_slice(body[inner], axial)
    table = tissue & ~body
    notes = []
    removed_ml = float(table.sum()) * ct.voxel_volume_mm3 / 1000.0
    if removed_ml > 1.0:
        notes.append(
            f"removed {removed_ml:.0f} mL of table, pads and other objects outside the body"
        )
    return BodyMask(body, table, True, tuple(notes))
