"""Write an :class:`~bmbx_plan.anatomy.segment.Anatomy`: labels, landmarks, meshes."""

from __future__ import annotations

import json
from pathlib import Path

from bmbx_plan.anatomy.segment import LABELS, Anatomy
from bmbx_plan.io.export import write_label_map, write_volume
from bmbx_plan.io.outdir import staged_output
from bmbx_plan.mesh import mesh_from_mask, write_mesh

__all__ = ["MESH_BONES", "write_anatomy"]

#: Bones written as surface meshes.
MESH_BONES = ("ilium_left", "ilium_right", "sacrum")


def write_anatomy(
    anatomy: Anatomy, out_dir: str | Path, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write ``labels.nii.gz`` + ``labels.json``, ``cortex.nii.gz``, ``anatomy.json``
    (landmarks in LPS mm, midline, notes) and ``meshes/<bone>.vtp|.stl`` (LPS mm), all
    or nothing."""
    target = Path(out_dir)
    written = {
        "labels": "labels.nii.gz",
        "label_names": "labels.json",
        "cortex": "cortex.nii.gz",
        "anatomy": "anatomy.json",
        "meshes": "meshes",
    }
    with staged_output(target, overwrite=overwrite) as stage:
        write_label_map(anatomy.labels, LABELS, stage / "labels.nii.gz")
        write_volume(
            anatomy.labels.with_array(anatomy.cortex.astype("uint8")), stage / "cortex.nii.gz"
        )
        summary = {
            "coordinate_system": "LPS",
            "landmarks_lps_mm": {
                k: [round(float(v), 2) for v in p] for k, p in anatomy.landmarks_lps_mm.items()
            },
            "midline_x_mm": round(anatomy.midline_x_mm, 2),
            "has_skin": anatomy.has_skin,
            "shape_fit_rms_mm": round(anatomy.shape_fit.rms_mm, 2),
            "notes": list(anatomy.notes),
        }
        (stage / "anatomy.json").write_text(json.dumps(summary, indent=2) + "\n")
        (stage / "meshes").mkdir()
        for bone in MESH_BONES:
            mesh = mesh_from_mask(anatomy.mask(bone), anatomy.labels)
            write_mesh(mesh, stage / "meshes" / f"{bone}.vtp")
            write_mesh(mesh, stage / "meshes" / f"{bone}.stl")
    return {key: target / rel for key, rel in written.items()}
