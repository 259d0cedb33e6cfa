"""A statistical shape model of the pelvis built from an atlas of real pelves.

The atlas meshes (JHU I-STAR pelvis atlas, CC BY 4.0) have their vertices in
correspondence, so thirty real pelves (left hip, right hip, sacrum) span a linear shape
space. The package ships its mean and principal modes (``data/pelvis_shape_model.npz``):
phantoms draw real bone shapes from it, and anatomy fitting uses it as a prior. Every
shape is a combination of real shapes: mean plus a bounded mix of the modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.mesh import Mesh

__all__ = ["BONES", "ShapeModel", "build_shape_model", "default_shape_model"]

#: Bone order of every mesh triplet: left hip, right hip, sacrum.
BONES = ("left_hip", "right_hip", "sacrum")

_DATA_FILE = "pelvis_shape_model.npz"


@dataclass(frozen=True, eq=False)
class ShapeModel:
    """Mean shape and principal modes of the pelvis.

    Attributes
    ----------
    mean_lps_mm : (3, N, 3) ndarray
        Mean vertices of left hip, right hip and sacrum, centred on the pelvis centroid.
    modes_mm : (M, 3, N, 3) ndarray
        Principal modes scaled to one standard deviation each (mm).
    faces : tuple of three (F, 3) ndarrays
        Triangles of each bone (shared by all shapes).
    case_ids : tuple of str
        The atlas cases the model was built from.
    """

    mean_lps_mm: NDArray[np.float64]
    modes_mm: NDArray[np.float64]
    faces: tuple[NDArray[np.int64], ...]
    case_ids: tuple[str, ...]

    @property
    def n_modes(self) -> int:
        """Number of modes kept."""
        return int(self.modes_mm.shape[0])

    def shape(self, coefficients_sd: NDArray[np.float64] | None = None) -> tuple[Mesh, ...]:
        """The meshes (left hip, right hip, sacrum) of ``mean + sum(c_m * mode_m)``, centred
        on the origin.

        Parameters
        ----------
        coefficients_sd : (M,) ndarray, optional
            Mode weights in standard deviations; missing trailing modes count as 0.
        """
        verts = self.mean_lps_mm.copy()
        if coefficients_sd is not None:
            coeffs = np.zeros(self.n_modes)
            given = np.asarray(coefficients_sd, dtype=np.float64)[: self.n_modes]
            coeffs[: given.size] = given
            verts += np.tensordot(coeffs, self.modes_mm, axes=1)
        return tuple(Mesh(verts[b], self.faces[b]) for b in range(len(BONES)))

    def sample(self, rng: np.random.Generator, *, limit_sd: float = 2.0) -> tuple[Mesh, ...]:
        """Draw a shape: independent normal mode weights, clipped to ``+-limit_sd``."""
        coeffs = np.clip(rng.standard_normal(self.n_modes), -limit_sd, limit_sd)
        return self.shape(coeffs)

    def save(self, path: str | Path) -> None:
        """Write the model as a compressed ``.npz`` (modes as float16: 0.01 mm steps)."""
        arrays: dict[str, Any] = {
            "mean_lps_mm": self.mean_lps_mm.astype(np.float32),
            "modes_mm": self.modes_mm.astype(np.float16),
            "case_ids": np.array(self.case_ids),
        }
        for name, faces in zip(BONES, self.faces, strict=True):
            arrays[f"faces_{name}"] = faces.astype(np.int32)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ShapeModel:
        """Read a model written by :meth:`save`."""
        with np.load(path) as data:
            return cls(
                mean_lps_mm=data["mean_lps_mm"].astype(np.float64),
                modes_mm=data["modes_mm"].astype(np.float64),
                faces=tuple(data[f"faces_{name}"].astype(np.int64) for name in BONES),
                case_ids=tuple(str(c) for c in data["case_ids"]),
            )


def build_shape_model(
    cases: Sequence[Sequence[Mesh]], *, case_ids: Sequence[str], n_modes: int = 12
) -> ShapeModel:
    """Principal component model of mesh triplets (left hip, right hip, sacrum).

    Each case is translated so its vertex centroid (all three bones) is at the origin;
    orientation and size are kept, since they are real variation between patients.
    Every case must have the same vertex count and triangles per bone (correspondence).
    """
    if len(cases) < 2:
        raise ValueError("a shape model needs at least two cases")
    faces = tuple(mesh.faces for mesh in cases[0])
    for case_id, case in zip(case_ids, cases, strict=True):
        if len(case) != len(BONES) or any(
            not np.array_equal(mesh.faces, f) for mesh, f in zip(case, faces, strict=True)
        ):
            raise ValueError(f"case {case_id}: meshes are not in correspondence with the first")
    stacks = []
    for case in cases:
        verts = np.stack([mesh.vertices_lps_mm for mesh in case])
        stacks.append(verts - verts.reshape(-1, 3).mean(axis=0))
    data = np.stack(stacks)  # (C, 3, N, 3)
    mean = data.mean(axis=0)
    centred = (data - mean).reshape(len(cases), -1)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    keep = min(n_modes, len(cases) - 1)
    sd = sing[:keep] / np.sqrt(len(cases) - 1)
    modes = (vt[:keep] * sd[:, np.newaxis]).reshape(keep, *mean.shape)
    return ShapeModel(mean, modes, faces, tuple(case_ids))


def default_shape_model() -> ShapeModel:
    """The model shipped with the package (built from the 30-case pelvis atlas by
    ``phantoms/build_shape_model.py``)."""
    ref = resources.files("bmbx_plan.anatomy") / "data" / _DATA_FILE
    with resources.as_file(ref) as path:
        return ShapeModel.load(path)
