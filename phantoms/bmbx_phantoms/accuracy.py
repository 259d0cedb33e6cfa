"""Segmentation accuracy on the cohort's phantoms, against their exact truth.

For every phantom and side: Dice of the hip bone (cortex and marrow), of its marrow and
of the sacrum; the errors of the PSIS, ASIS and greater sciatic notch apex; the voxels
the segmentation trades between the sacrum and the hip bone; and how much farther the
planner reads the SI joint from the iliac marrow than it is (the error the planner's SI
reserve must cover, :func:`si_distance_optimism`).

Run::

    python -m bmbx_phantoms.accuracy [--cases N] [--step S] [--workers W]
                                     [--voxel-mm PIXEL SLICE] [--out FILE.csv]
    python -m bmbx_phantoms.accuracy --summarize FILE.csv

and read the table on stdout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bmbx_phantoms.cohort import Case, overrides_of, phantom_of, voxel_text_of
from bmbx_phantoms.labels import TRUTH_LABELS, ilium_labels
from bmbx_phantoms.study import study_main
from bmbx_phantoms.truth import truth_anatomy

if TYPE_CHECKING:
    from bmbx_phantoms.phantom import Phantom
    from bmbx_plan.anatomy.segment import Anatomy

__all__ = [
    "LANDMARKS",
    "accuracy_rows",
    "dice",
    "measure_case",
    "si_distance_optimism",
    "summarize",
]

#: Landmarks whose error is measured (per side).
LANDMARKS = ("psis", "asis", "sciatic_notch_apex")
#: The SI distance is compared in the iliac marrow this close to the true joint.
SI_NEAR_MM = 12.0


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """Dice coefficient of two masks (1 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


def si_distance_optimism(anatomy: Anatomy, truth: Anatomy, side: str) -> NDArray[np.float32]:
    """The planner's distance to the SI joint (and sacrum) read on ``anatomy`` minus the
    one read on ``truth``, at the truth's iliac marrow within :data:`SI_NEAR_MM` of the
    joint (mm; positive where the segmentation sees the joint farther than it is).

    Both are the planning maps of :func:`bmbx_plan.planning.fields.side_fields` with the
    default parameters; the segmentation's is read trilinearly at the truth's voxels.
    """
    from bmbx_plan.planning import PlanningParameters
    from bmbx_plan.planning.fields import side_fields

    parameters = PlanningParameters()
    exact = side_fields(truth, side, parameters)
    seen = side_fields(anatomy, side, parameters)
    near = exact.marrow & (exact.si_distance_mm < SI_NEAR_MM)
    points = exact.grid.index_to_lps(np.argwhere(near))
    distance, on_grid = seen.interpolate(seen.si_distance_mm, points)
    return np.asarray(distance[on_grid] - exact.si_distance_mm[near][on_grid], np.float32)


def measure_case(
    case: Case, *, voxel_mm: tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """Segment one phantom and compare it with its truth (one row per side; ``seconds``
    is the time to build the phantom and segment it)."""
    from bmbx_plan import segment_pelvis

    start = time.perf_counter()
    phantom = phantom_of(case, voxel_mm)
    anatomy = segment_pelvis(phantom.ct)
    seconds = round(time.perf_counter() - start, 1)
    return [
        {**asdict(case), "voxel_mm": voxel_text_of(phantom), **row, "seconds": seconds}
        for row in accuracy_rows(phantom, anatomy)
    ]


def accuracy_rows(phantom: Phantom, anatomy: Anatomy) -> list[dict[str, Any]]:
    """The segmentation ``anatomy`` of ``phantom`` compared with its truth, one row per
    side (``side`` and the measures of :func:`measure_case`)."""
    truth = truth_anatomy(phantom)
    labels = np.asarray(phantom.labels.array)
    sacrum = labels == TRUTH_LABELS["sacrum"]
    found_sacrum = anatomy.mask("sacrum")
    rows = []
    for side in ("left", "right"):
        cortex, marrow = ilium_labels(side)
        hip = np.isin(labels, (cortex, marrow))
        found_hip = anatomy.ilium(side)
        optimism = si_distance_optimism(anatomy, truth, side)
        row: dict[str, Any] = {
            "side": side,
            "dice_hip": round(dice(found_hip, hip), 4),
            "dice_marrow": round(dice(anatomy.marrow(side), labels == marrow), 4),
            "dice_sacrum": round(dice(found_sacrum, sacrum), 4),
            "voxels_traded": int(
                np.count_nonzero(found_hip & sacrum) + np.count_nonzero(found_sacrum & hip)
            ),
            # nan when the truth has no marrow near its joint (nothing to compare)
            "si_optimism_p999_mm": round(_percentile(optimism, 99.9), 2),
            "si_optimism_max_mm": round(_percentile(optimism, 100.0), 2),
        }
        for name in LANDMARKS:
            found = anatomy.landmarks_lps_mm[f"{name}_{side}"]
            exact = np.asarray(phantom.truth["landmarks"][f"{name}_{side}"])
            row[f"{name}_error_mm"] = round(float(np.linalg.norm(found - exact)), 2)
        rows.append(row)
    return rows


def _percentile(values: NDArray[np.float32], q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Per preset and over all: Dice (min / mean), the largest landmark errors, and the
    SI distance optimism (largest 99.9th percentile of a side, largest value)."""
    groups = {"all": list(rows)}
    for preset in sorted({r["preset"] for r in rows}):
        groups[preset] = [r for r in rows if r["preset"] == preset]
    phantoms = {(r["seed"], r["preset"], r["position"]) for r in rows}
    voxels = sorted({r["voxel_mm"] for r in rows})
    lines = [
        f"phantoms: {len(phantoms)}, sides: {len(rows)}, CT voxels {' and '.join(voxels)} mm"
        + overrides_of(rows),
        "",
        "| preset | sides | hip Dice min / mean | marrow Dice min / mean "
        "| sacrum Dice min / mean | PSIS / ASIS / notch apex error max (mm) "
        "| SI optimism 99.9 % / max (mm) | voxels traded (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, group in groups.items():

        def values(key: str, group: list[dict[str, Any]] = group) -> NDArray[np.float64]:
            return np.array([float(r[key]) for r in group])

        dices = [values(key) for key in ("dice_hip", "dice_marrow", "dice_sacrum")]
        errors = " / ".join(f"{values(f'{n}_error_mm').max():.1f}" for n in LANDMARKS)
        lines.append(
            f"| {name} | {len(group)} | "
            + " | ".join(f"{d.min():.3f} / {d.mean():.3f}" for d in dices)
            + f" | {errors} | {np.nanmax(values('si_optimism_p999_mm')):.2f} / "
            f"{np.nanmax(values('si_optimism_max_mm')):.2f} | "
            f"{values('voxels_traded').mean():.0f} |"
        )
    return "\n".join(lines)


def _describe(rows: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{r['side']} hip {r['dice_hip']:.3f} sacrum {r['dice_sacrum']:.3f}" for r in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print progress on stderr and the table on stdout."""
    return study_main(
        argv,
        prog="python -m bmbx_phantoms.accuracy",
        description=__doc__.split("\n")[0],
        measure=measure_case,
        summarize=summarize,
        describe=_describe,
        default_step=5,
    )


if __name__ == "__main__":
    raise SystemExit(main())
