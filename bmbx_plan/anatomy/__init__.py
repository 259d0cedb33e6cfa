"""Anatomy of the pelvis for planning: segmentation, landmarks, keep-out zones, and
risk structures imported from other segmentations."""

from bmbx_plan.anatomy.export import write_anatomy
from bmbx_plan.anatomy.external import ExternalMasks, load_external_masks
from bmbx_plan.anatomy.segment import (
    LABEL_GROUPS,
    LABELS,
    Anatomy,
    NoPelvisError,
    segment_pelvis,
)

__all__ = [
    "LABELS",
    "LABEL_GROUPS",
    "Anatomy",
    "ExternalMasks",
    "NoPelvisError",
    "load_external_masks",
    "segment_pelvis",
    "write_anatomy",
]
