"""Anatomy of the pelvis for planning: segmentation, landmarks, keep-out zones."""
