"""Write a phantom to disk: DICOM series, truth labels, truth.json, meshes."""

from __future__ import annotations

import json
from pathlib import Path

from bmbx_phantoms.dicom_writer import scanner_orientation, write_ct_series
from bmbx_phantoms.phantom import Phantom
from bmbx_plan.io.export import write_label_map, write_volume
from bmbx_plan.io.outdir import staged_output
from bmbx_plan.mesh import write_mesh

__all__ = ["write_phantom"]


def write_phantom(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    dicom: bool = True,
    nifti: bool = False,
    compress: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``phantom`` under ``out_dir`` (all or nothing).

    Writes ``dicom/`` (one CT series in the phantom's patient position), ``ct.nii.gz``
    when ``nifti``, ``truth_labels.nii.gz`` + ``truth_labels.json`` on the same grid as
    the DICOM series as a reader loads it, ``truth.json`` and ``truth_meshes/`` (the
    posed bone surfaces as VTP, LPS mm).

    Returns
    -------
    dict
        What was written: keys ``dicom``, ``ct``, ``labels``, ``label_names``, ``truth``,
        ``meshes`` (only those written), final paths.
    """
    if not (dicom or nifti):
        raise ValueError("write_phantom needs dicom=True or nifti=True")
    target = Path(out_dir)
    stored = scanner_orientation(phantom.position)
    written: dict[str, str] = {}
    with staged_output(target, overwrite=overwrite) as stage:
        if dicom:
            write_ct_series(
                phantom.ct,
                stage / "dicom",
                patient_position=phantom.position,
                seed=phantom.truth["seed"],
                compress=compress,
                series_description=f"bmbx_phantoms {phantom.truth['preset']}",
                slice_thickness_mm=phantom.ct.info.slice_thickness_mm,
            )
            written["dicom"] = "dicom"
        if nifti:
            write_volume(phantom.ct.reoriented(stored), stage / "ct.nii.gz")
            written["ct"] = "ct.nii.gz"
        write_label_map(
            phantom.labels.reoriented(stored), phantom.label_names, stage / "truth_labels.nii.gz"
        )
        written["labels"] = "truth_labels.nii.gz"
        written["label_names"] = "truth_labels.json"
        (stage / "truth.json").write_text(json.dumps(phantom.truth, indent=2) + "\n")
        written["truth"] = "truth.json"
        (stage / "truth_meshes").mkdir()
        for name, mesh in phantom.shape.meshes():
            write_mesh(mesh, stage / "truth_meshes" / f"{name}.vtp")
        written["meshes"] = "truth_meshes"
    return {key: target / rel for key, rel in written.items()}
