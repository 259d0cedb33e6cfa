"""Anatomy of the pelvis for planning: segmentation, landmarks, keep-out zones, and
risk structures imported from other segmentations."""

from bmbx_plan.anatomy.export import write_anatomy
from bmbx_plan.anatomy.external import ExternalMasks, load_external_masks
from bmbx_plan.anatomy.segment import (
    LABEL_GROUPS,
    LABELS,
    Anatomy,
    NoPelvisError,
    label_mask,
    segment_pelvis,
)

__all__ = [
    "LABELS",
    "LABEL_GROUPS",
    "Anatomy",
    "ExternalMasks",
    "NoPelvisError",
    "label_mask",
    "load_external_masks",
    "segment_pelvis",
    "write_anatomy",
]
