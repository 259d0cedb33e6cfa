"""bmbx_phantoms: synthetic pelvic CT phantoms with exact ground truth.

Bones have real shape: a seed draws a pelvis from a statistical shape model of thirty
real pelves (or ``anatomy=`` gives a folder with ``left_hip.vtk``, ``right_hip.vtk`` and
``sacrum.vtk``); skin, fat, muscle, cortex and marrow, SI joints, L4-L5, bowel, vessels,
bladder and the CT table are built around it, and the result is written as a real DICOM
CT series in HFP, HFS, FFP or FFS with a truth label map and landmarks.

>>> from bmbx_phantoms import make_phantom
>>> phantom = make_phantom(seed=3, position="HFP", pixel_spacing_mm=4.0, slice_spacing_mm=5.0)
>>> phantom.ct.info.patient_position
'HFP'
"""

from bmbx_phantoms.labels import TRUTH_LABELS
from bmbx_phantoms.output import write_phantom
from bmbx_phantoms.parameters import PATIENT_POSITIONS, PRESETS, PhantomParameters
from bmbx_phantoms.phantom import LANDMARK_NAMES, Phantom, make_phantom

__all__ = [
    "LANDMARK_NAMES",
    "PATIENT_POSITIONS",
    "PRESETS",
    "TRUTH_LABELS",
    "Phantom",
    "PhantomParameters",
    "make_phantom",
    "write_phantom",
]
