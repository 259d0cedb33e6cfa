"""Write volumes and label maps (NIfTI, NRRD, MHA) with their LPS geometry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bmbx_plan.volume import Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "label_json_path",
    "volume_to_sitk",
    "write_label_map",
    "write_volume",
]

#: File name endings :func:`write_volume` accepts.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's voxels and geometry (SimpleITK is LPS too).

    SimpleITK orders axes ``(x, y, z) = (i, j, k)``, the reverse of numpy.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    spacing = volume.spacing_mm
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin([float(o) for o in volume.origin_lps_mm])
    image.SetDirection([float(d) for d in volume.direction[:, ::-1].ravel()])
    return image


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix: NIfTI, NRRD, MHA/MHD).

    NIfTI stores RAS; SimpleITK converts from LPS on write, so the file reads back with
    the same LPS geometry in any NIfTI-aware tool.
    """
    target = Path(path)
    if not target.name.endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{target}: unsupported image format; use one of {IMAGE_SUFFIXES}")
    sitk.WriteImage(volume_to_sitk(volume), str(target), useCompression=True)
    return target


def label_json_path(label_path: str | Path) -> Path:
    """``labels.nii.gz`` -> ``labels.json`` (the sidecar naming the label values)."""
    p = Path(label_path)
    stem = p.name
    for suffix in IMAGE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return p.with_name(stem + ".json")


def write_label_map(
    volume: Volume, names: Mapping[str, int], path: str | Path
) -> tuple[Path, Path]:
    """Write an exclusive label map and its ``name -> value`` JSON sidecar.

    Returns the image path and the JSON path.
    """
    values = set(np.unique(volume.array).tolist()) - {0}
    unknown = sorted(values - set(names.values()))
    if unknown:
        raise ValueError(f"label map holds values with no name: {unknown}")
    image = write_volume(volume.with_array(volume.array.astype(np.uint8)), path)
    sidecar = label_json_path(image)
    sidecar.write_text(json.dumps(dict(names), indent=2) + "\n")
    return image, sidecar
