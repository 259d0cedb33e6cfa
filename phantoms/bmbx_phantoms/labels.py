"""Names and values of the phantom's exclusive truth label map."""

from __future__ import annotations

__all__ = ["SOFT_TISSUE_LABELS", "TRUTH_LABELS", "ilium_labels"]

#: name -> value of ``truth_labels.nii.gz``. ``body`` is soft tissue that has no label of
#: its own (mostly muscle); the body is the union of every label except ``table``.
TRUTH_LABELS: dict[str, int] = {
    "body": 1,
    "table": 2,
    "ilium_left_cortex": 3,
    "ilium_left_marrow": 4,
    "ilium_right_cortex": 5,
    "ilium_right_marrow": 6,
    "sacrum": 7,
    "si_joint_left": 8,
    "si_joint_right": 9,
    "lumbar_spine": 10,
    "bowel": 11,
    "iliac_vessels": 12,
    "skin": 13,
    "subcutaneous_fat": 14,
    "visceral_fat": 15,
    "bladder": 16,
    "bowel_gas": 17,
    "intervertebral_disc": 18,
    "spinal_canal": 19,
    "femur_left": 20,  # proximal femur, cortex and marrow
    "femur_right": 21,
}

#: Labels a needle may cross on its way from the skin to the bone.
SOFT_TISSUE_LABELS: tuple[str, ...] = ("skin", "subcutaneous_fat", "body")


def ilium_labels(side: str) -> tuple[int, int]:
    """Values of the (cortex, marrow) labels of the ``"left"`` or ``"right"`` ilium."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return TRUTH_LABELS[f"ilium_{side}_cortex"], TRUTH_LABELS[f"ilium_{side}_marrow"]
