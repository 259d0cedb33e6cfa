"""Rebuild the pelvis shape model shipped in ``bmbx_plan/anatomy/data`` from the atlas.

Run from the repository root: ``python phantoms/build_shape_model.py [ATLAS_ROOT]``
(default ``../shared/data/atlas/pelvis_surfaces``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bmbx_phantoms.atlas import atlas_cases, load_pelvis
from bmbx_plan.anatomy.shape_model import build_shape_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    atlas = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else ROOT / ".." / "shared" / "data" / ("atlas/pelvis_surfaces")
    )
    cases = atlas_cases(atlas)
    shapes = [[m for _, m in load_pelvis(atlas / c).meshes()] for c in cases]
    model = build_shape_model(shapes, case_ids=cases, n_modes=12)
    out = ROOT / "bmbx_plan" / "anatomy" / "data" / "pelvis_shape_model.npz"
    model.save(out)
    print(f"{out}: {model.n_modes} modes from {len(cases)} cases")


if __name__ == "__main__":
    main()
