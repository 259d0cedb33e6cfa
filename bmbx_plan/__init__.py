"""bmbx_plan: plan CT-guided bone marrow biopsies of the posterior iliac wing.

Research and pre-planning software, not a medical device.

All physical coordinates are DICOM patient coordinates, LPS in millimetres.
"""

from bmbx_plan.anatomy import Anatomy, NoPelvisError, segment_pelvis
from bmbx_plan.io import InputError, load_ct
from bmbx_plan.volume import ScanInfo, Volume

__all__ = [
    "Anatomy",
    "InputError",
    "NoPelvisError",
    "ScanInfo",
    "Volume",
    "__version__",
    "load_ct",
    "segment_pelvis",
]

__version__ = "0.1.0.dev0"
