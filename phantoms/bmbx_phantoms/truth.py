"""A phantom's exact truth in the form the planner reads (an :class:`~bmbx_plan.Anatomy`).

Planning or checking on the truth anatomy judges a trajectory against what the phantom
really is, not against a segmentation of it: the cohort study uses it to verify that no
proposed plan violates a hard constraint, and to know which phantoms admit a safe plan.
"""

from __future__ import annotations

import numpy as np

from bmbx_phantoms.labels import TRUTH_LABELS
from bmbx_phantoms.phantom import Phantom
from bmbx_plan.anatomy import LABELS, Anatomy
from bmbx_plan.anatomy._grid import ball_around
from bmbx_plan.anatomy.external import ExternalMasks
from bmbx_plan.anatomy.landmarks import ShapeFit

__all__ = ["truth_anatomy"]

# As in segmentation: the sciatic notch keep-out is the soft tissue within 10 mm of the
# notch apex (superior gluteal vessels, sciatic nerve).
_NOTCH_KEEPOUT_MM = 10.0

# truth label -> planner label (anything not listed is soft tissue a needle may cross)
_TO_PLANNER = {
    "table": "table",
    "ilium_left_cortex": "ilium_left",
    "ilium_left_marrow": "ilium_left",
    "ilium_right_cortex": "ilium_right",
    "ilium_right_marrow": "ilium_right",
    "sacrum": "sacrum",
    "si_joint_left": "si_joint_left",
    "si_joint_right": "si_joint_right",
    "lumbar_spine": "lumbar_spine",
    "intervertebral_disc": "lumbar_spine",
    "spinal_canal": "lumbar_spine",
    "femur_left": "femur_left",
    "femur_right": "femur_right",
    "bowel_gas": "bowel_gas",
}
# truth label -> structure name of the imported risk masks
_RISKS = {
    "bowel": "colon",
    "bowel_gas": "colon",
    "iliac_vessels": "iliac_artery_left",
    "bladder": "urinary_bladder",
}


def truth_anatomy(phantom: Phantom) -> Anatomy:
    """The phantom's truth as an :class:`~bmbx_plan.Anatomy` on its CT grid.

    Bowel, iliac vessels and bladder come as imported risk masks (as a TotalSegmentator
    output would bring them); the landmarks are the phantom's exact ones; the "shape fit"
    is the phantom's own bone meshes.
    """
    ct = phantom.ct
    truth = np.asarray(phantom.labels.array)
    labels = np.zeros(ct.shape, np.uint8)
    body = (truth != 0) & (truth != TRUTH_LABELS["table"])
    labels[body] = LABELS["body"]
    for name, target in _TO_PLANNER.items():
        labels[truth == TRUTH_LABELS[name]] = LABELS[target]
    bone = np.isin(
        labels,
        [
            LABELS[n]
            for n in (
                "ilium_left",
                "ilium_right",
                "sacrum",
                "lumbar_spine",
                "femur_left",
                "femur_right",
            )
        ],
    )
    landmarks = {
        name: phantom.landmark(name)
        for name in (
            f"{kind}_{side}"
            for kind in ("psis", "asis", "sciatic_notch_apex")
            for side in ("left", "right")
        )
    }
    free = body & ~bone & (labels == LABELS["body"])
    for side in ("left", "right"):
        apex = landmarks[f"sciatic_notch_apex_{side}"]
        index = np.rint(ct.lps_to_index([apex])[0]).astype(np.int64)
        box, keepout = ball_around(index, _NOTCH_KEEPOUT_MM, ct)
        region = labels[box]
        region[keepout & free[box]] = LABELS[f"sciatic_notch_{side}"]
    cortex = np.isin(
        truth, [TRUTH_LABELS["ilium_left_cortex"], TRUTH_LABELS["ilium_right_cortex"]]
    )
    risks: dict[str, np.ndarray] = {}
    for name, structure in _RISKS.items():
        mask = truth == TRUTH_LABELS[name]
        risks[structure] = risks.get(structure, np.zeros(ct.shape, bool)) | mask
    external = ExternalMasks(
        risks, shape=ct.shape, affine_lps=ct.affine_lps, source="phantom truth"
    )
    sacrum = labels == LABELS["sacrum"]
    midline = float(ct.index_to_lps(np.argwhere(sacrum))[:, 0].mean())
    shape = phantom.shape
    fit = ShapeFit(
        meshes=(shape.left_hip, shape.right_hip, shape.sacrum),
        transform=np.eye(4),
        bone_transforms=np.stack([np.eye(4)] * 3),
        coefficients_sd=np.zeros(0),
        rms_mm=0.0,
        p95_mm=0.0,
        explained_fraction=1.0,
        covered_fraction=np.ones(3),
        partial=False,
        iterations=0,
        grid=ct,
        notes=("the phantom's own meshes",),
    )
    return Anatomy(
        labels=ct.with_array(labels),
        cortex=cortex,
        landmarks_lps_mm=landmarks,
        midline_x_mm=midline,
        has_skin=True,
        shape_fit=fit,
        external=external,
        notes=("phantom truth",),
    )
