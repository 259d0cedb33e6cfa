"""Phantom parameters and named presets (body habitus, bone density, pose, hard cases)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = ["PATIENT_POSITIONS", "PRESETS", "PhantomParameters", "resolve_parameters"]

PATIENT_POSITIONS = ("HFP", "HFS", "FFP", "FFS")


@dataclass(frozen=True)
class PhantomParameters:
    """Everything that decides a phantom; with the seed it decides it completely.

    Lengths are in mm, densities in HU, angles in degrees. A side-specific value is given
    as ``(left, right)``.
    """

    # Grid: in-plane voxel size (mm) and slice spacing (mm).
    pixel_spacing_mm: float = 2.0
    slice_spacing_mm: float = 2.5
    # Reconstructed slice thickness (mm): each slice averages the scene over this width
    # (a rectangular slice profile), as a thick-slice reconstruction does. 0: thin
    # slices, blurred only by the system resolution.
    slice_thickness_mm: float = 0.0
    # Body habitus: skin surface to the PSIS along the posterior direction.
    skin_to_psis_mm: float = 50.0
    # Share of the posterior soft tissue that is subcutaneous fat (rest: muscle).
    posterior_fat_fraction: float = 0.55
    lateral_soft_tissue_mm: float = 45.0
    anterior_soft_tissue_mm: float = 70.0
    skin_thickness_mm: float = 2.0
    # Bone density.
    cortex_thickness_mm: float = 1.5
    cortex_hu: float = 950.0
    marrow_hu: float = 180.0
    # Smooth spatial variation of marrow density (standard deviation) and fine texture.
    marrow_variation_hu: float = 60.0
    marrow_texture_hu: float = 25.0
    # Pose of the pelvis (applied to the bones before building the body around them).
    yaw_deg: float = 0.0  # rotation about the cranio-caudal axis
    roll_deg: float = 0.0  # pelvic obliquity, about the antero-posterior axis
    pitch_deg: float = 0.0  # pelvic tilt, about the left-right axis
    # Asymmetry: scale of the (left, right) hip bone about its own centre.
    hip_scale: tuple[float, float] = (1.0, 1.0)
    # Thickness of the posterior iliac wing relative to the real shape, (left, right).
    wing_thickness_scale: tuple[float, float] = (1.0, 1.0)
    # Sacroiliac joint cleft width (mm) and its HU.
    si_joint_width_mm: float = 2.0
    si_joint_hu: float = 40.0
    # Soft tissue densities.
    fat_hu: float = -100.0
    muscle_hu: float = 50.0
    skin_hu: float = 30.0
    blood_hu: float = 45.0  # non-contrast; set near 200 for an arterial phase
    bladder_hu: float = 8.0  # near 1000 in an excretory phase
    bowel_hu: float = 35.0  # the bowel's fluid; 300-1000 with positive oral contrast
    bladder_volume_ml: float = 200.0
    bowel_loops: int = 7
    # CT noise (standard deviation in soft tissue) and blur of the system (FWHM, mm).
    noise_hu: float = 12.0
    resolution_fwhm_mm: float = 1.0
    # Shape: mix of the shape model's modes (in standard deviations) is drawn from the
    # seed; this caps how far from the mean shape a seed may go.
    shape_mode_limit_sd: float = 2.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of its range."""
        positive = (
            "pixel_spacing_mm",
            "slice_spacing_mm",
            "skin_to_psis_mm",
            "lateral_soft_tissue_mm",
            "anterior_soft_tissue_mm",
            "skin_thickness_mm",
            "cortex_thickness_mm",
            "si_joint_width_mm",
            "resolution_fwhm_mm",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"phantom parameter {name} must be positive")
        if not 0.0 <= self.posterior_fat_fraction <= 1.0:
            raise ValueError("phantom parameter posterior_fat_fraction must be in [0, 1]")
        if self.slice_thickness_mm < 0:
            raise ValueError("phantom parameter slice_thickness_mm must not be negative")
        if self.noise_hu < 0 or self.bowel_loops < 0 or self.bladder_volume_ml < 0:
            raise ValueError("noise_hu, bowel_loops and bladder_volume_ml must not be negative")
        for name in ("hip_scale", "wing_thickness_scale"):
            value = getattr(self, name)
            if len(value) != 2 or not all(0.1 <= v <= 2.0 for v in value):
                raise ValueError(f"phantom parameter {name} must be two factors in [0.1, 2]")
        if self.skin_to_psis_mm < self.skin_thickness_mm + 5.0:
            raise ValueError("skin_to_psis_mm leaves no room for fat and muscle")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: Named presets: each is a set of overrides of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "average": {},
    "thin": {
        "skin_to_psis_mm": 22.0,
        "posterior_fat_fraction": 0.3,
        "lateral_soft_tissue_mm": 20.0,
        "anterior_soft_tissue_mm": 35.0,
    },
    "obese": {
        "skin_to_psis_mm": 115.0,
        "posterior_fat_fraction": 0.8,
        "lateral_soft_tissue_mm": 110.0,
        "anterior_soft_tissue_mm": 150.0,
        "noise_hu": 22.0,
    },
    "osteoporotic": {
        "cortex_thickness_mm": 1.0,
        "cortex_hu": 650.0,
        "marrow_hu": 20.0,
        "marrow_variation_hu": 45.0,
    },
    "fatty_marrow": {"marrow_hu": 60.0, "marrow_variation_hu": 70.0},
    "sclerotic": {"cortex_thickness_mm": 2.0, "cortex_hu": 1200.0, "marrow_hu": 350.0},
    "rotated": {"yaw_deg": 8.0, "roll_deg": 5.0, "pitch_deg": -6.0},
    "asymmetric": {"hip_scale": (1.0, 0.93), "roll_deg": 3.0},
    "narrow_corridor": {"wing_thickness_scale": (0.7, 0.7)},
    # The left posterior wing is thinned until a core cannot keep its clearance to both
    # tables: a one-sided "too thin to sample" case.
    "thin_wing_left": {"wing_thickness_scale": (0.25, 1.0)},
    # No safe trajectory on the right: the posterior wing is too thin to sample there and
    # the SI joint is narrow; the left side stays plannable.
    "no_safe_right": {"wing_thickness_scale": (1.0, 0.2), "si_joint_width_mm": 1.0},
}


def parse_overrides(text: str) -> dict[str, Any]:
    """Parameter overrides written as ``NAME=VALUE`` pairs separated by spaces, a pair's
    values separated by commas: ``"blood_hu=300 hip_scale=1,0.93"``.

    Raises ``ValueError`` naming an unknown parameter or a value that is not a number.
    """
    known = {f.name for f in fields(PhantomParameters)}
    defaults = PhantomParameters()
    out: dict[str, Any] = {}
    for pair in text.split():
        name, sep, value = pair.partition("=")
        if not sep or name not in known:
            raise ValueError(
                f"{pair!r} names no phantom parameter (NAME=VALUE, NAME one of "
                f"{', '.join(sorted(known))})"
            )
        default = getattr(defaults, name)
        try:
            if isinstance(default, tuple):
                out[name] = tuple(float(v) for v in value.split(","))
            elif isinstance(default, int):
                out[name] = int(value)
            else:
                out[name] = float(value)
        except ValueError:
            raise ValueError(f"phantom parameter {name}: {value!r} is not a number") from None
    return out


def resolve_parameters(
    preset: str = "average", *, seed: int = 0, jitter: bool = True, **overrides: Any
) -> PhantomParameters:
    """Parameters for ``preset``, with small seed-dependent variation, then ``overrides``.

    Parameters
    ----------
    preset : str
        A name in :data:`PRESETS`.
    seed : int
        Varies habitus and density a little around the preset (deterministic).
    jitter : bool
        Set False to get the preset exactly.
    **overrides
        Any :class:`PhantomParameters` field.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}; choose from {sorted(PRESETS)}")
    known = {f.name for f in fields(PhantomParameters)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown phantom parameter(s): {', '.join(unknown)}")
    params = replace(PhantomParameters(), **PRESETS[preset])
    if jitter:
        rng = np.random.default_rng([seed, 7])
        scale = float(rng.uniform(0.85, 1.15))
        params = replace(
            params,
            skin_to_psis_mm=round(params.skin_to_psis_mm * scale, 1),
            lateral_soft_tissue_mm=round(params.lateral_soft_tissue_mm * scale, 1),
            anterior_soft_tissue_mm=round(params.anterior_soft_tissue_mm * scale, 1),
            marrow_hu=round(params.marrow_hu + float(rng.normal(0.0, 20.0)), 1),
            cortex_hu=round(params.cortex_hu + float(rng.normal(0.0, 40.0)), 1),
        )
    params = replace(params, **overrides)
    params.validate()
    return params
