"""Segmentation and planning on real pelves the shape model has not seen.

The cohort's phantoms draw their bones from the shape model that the segmentation fits,
so the fit can match them exactly; a patient's pelvis is never in the model. Here every
phantom is one real pelvis of the JHU atlas (``../shared/data/atlas/pelvis_surfaces``,
in its own coordinates), segmented with a shape model built from the *other* atlas
pelves (leave one out), then measured like :mod:`bmbx_phantoms.accuracy` and planned
and judged on its truth like :mod:`bmbx_phantoms.cohort`. With ``--seen`` the same
phantoms are segmented with the packaged model, which holds every atlas pelvis: the
difference between the two runs is what an unseen shape costs. With ``--reserve`` the
reserve study's lines (:mod:`bmbx_phantoms.reserve`) are drawn on each segmentation and
judged on its truth instead: how far an unseen shape moves each hard constraint.

Presets and patient positions cycle over the atlas pelves as in the cohort.

Run::

    python -m bmbx_phantoms.heldout --workers 2 --out heldout.csv [--seen] [--reserve]
    python -m bmbx_phantoms.heldout --summarize heldout.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bmbx_phantoms import accuracy, cohort, reserve
from bmbx_phantoms.atlas import atlas_cases, load_pelvis
from bmbx_phantoms.parameters import PATIENT_POSITIONS, PRESETS
from bmbx_phantoms.phantom import make_phantom

if TYPE_CHECKING:
    from bmbx_phantoms.phantom import Phantom
    from bmbx_plan import Anatomy

__all__ = ["AtlasCase", "atlas_study_cases", "measure_atlas_case", "summarize"]

#: The atlas in the data folder beside the project's checkout.
DEFAULT_ATLAS = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "atlas" / "pelvis_surfaces"
)
#: Phantom seeds (habitus jitter, tissue, noise) are this plus the case's place in the atlas.
FIRST_SEED = 7000
#: A landmark error above this (mm) is counted (the accuracy goal).
LANDMARK_GOAL_MM = 5.0
#: Shape modes of the leave-one-out models, as in the packaged model.
N_MODES = 12


@dataclass(frozen=True)
class AtlasCase:
    """One atlas pelvis as a phantom; ``seen``: segmented with the packaged model (which
    holds it) instead of one built without it."""

    atlas: str
    name: str
    seed: int
    preset: str
    position: str
    seen: bool = False


def atlas_study_cases(
    atlas: str | Path, *, names: Sequence[str] | None = None, seen: bool = False
) -> list[AtlasCase]:
    """Every pelvis of ``atlas`` (or those in ``names``), presets and positions cycling
    as in :func:`bmbx_phantoms.cohort.cohort_cases`."""
    every = atlas_cases(atlas)
    unknown = sorted(set(names or ()) - set(every))
    if unknown:
        raise ValueError(f"{atlas}: no atlas case {', '.join(unknown)}")
    presets = sorted(PRESETS)
    out = []
    for n, name in enumerate(every):
        if names and name not in names:
            continue
        position = PATIENT_POSITIONS[(n // len(presets)) % len(PATIENT_POSITIONS)]
        out.append(
            AtlasCase(str(atlas), name, FIRST_SEED + n, presets[n % len(presets)], position, seen)
        )
    return out


@lru_cache(maxsize=2)
def _model_without(atlas: str, name: str) -> Any:
    """The shape model of every pelvis of ``atlas`` but ``name``."""
    from bmbx_plan.anatomy.shape_model import build_shape_model

    others = [c for c in atlas_cases(atlas) if c != name]
    shapes = [[mesh for _, mesh in load_pelvis(Path(atlas) / c).meshes()] for c in others]
    return build_shape_model(shapes, case_ids=others, n_modes=N_MODES)


def _segmented(case: AtlasCase) -> tuple[Phantom, Anatomy, dict[str, Any]]:
    """The case's phantom, its segmentation (with the model that leaves it out, or the
    packaged one) and the columns that describe it."""
    from bmbx_plan import segment_pelvis

    phantom = make_phantom(
        seed=case.seed,
        position=case.position,
        preset=case.preset,
        anatomy=Path(case.atlas) / case.name,
    )
    model = None if case.seen else _model_without(case.atlas, case.name)
    anatomy = segment_pelvis(phantom.ct, shape_model=model)
    common = {
        "atlas_case": case.name,
        "model": "packaged (holds the case)" if case.seen else "leave-one-out",
        "seed": case.seed,
        "preset": case.preset,
        "position": case.position,
        "overrides": "",
        "voxel_mm": cohort.voxel_text_of(phantom),
    }
    return phantom, anatomy, common


def measure_atlas_case(case: AtlasCase, *, plan: bool = True) -> list[dict[str, Any]]:
    """Segment the case's phantom, compare with the truth and, with ``plan``, plan and
    judge each side."""
    start = time.perf_counter()
    phantom, anatomy, common = _segmented(case)
    rows = [{**common, **row} for row in accuracy.accuracy_rows(phantom, anatomy)]
    if plan:
        for row, planned in zip(rows, cohort.plan_rows(phantom, anatomy), strict=True):
            row.update(planned)
    for row in rows:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def reserve_lines(case: AtlasCase) -> list[dict[str, Any]]:
    """The reserve study's lines (:func:`bmbx_phantoms.reserve.judged_lines`) drawn on
    the case's segmentation and judged on its truth: how far an unseen shape moves each
    hard constraint."""
    phantom, anatomy, common = _segmented(case)
    return reserve.judged_lines(phantom, anatomy, common, seed=case.seed)


def _measure_or_report(case: AtlasCase, *, plan: bool, lines: bool) -> list[dict[str, Any]]:
    try:
        return reserve_lines(case) if lines else measure_atlas_case(case, plan=plan)
    except Exception as error:  # reported in the table, not hidden
        return [
            {
                "atlas_case": case.name,
                "seed": case.seed,
                "preset": case.preset,
                "position": case.position,
                "side": "",
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
            }
        ]


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Landmark errors (median, 90th percentile, largest, sides over the goal), the
    accuracy table of :mod:`bmbx_phantoms.accuracy` and, when the sides were planned,
    the safety table of :mod:`bmbx_phantoms.cohort`; for the reserve study's lines
    (``--reserve``), its table (:func:`bmbx_phantoms.reserve.summarize`)."""
    failed = [r for r in rows if r.get("status") == "error"]
    done = [r for r in rows if r.get("status") != "error"]
    if done and "passes_on_segmentation" in done[0]:
        return reserve.summarize(done)
    if not done:
        return "no phantom could be measured"
    models = sorted({str(r["model"]) for r in done})
    lines = [
        f"real atlas pelves: {len({r['atlas_case'] for r in done})}, shape model: "
        f"{' and '.join(models)}"
        + (f"; cases that could not be run: {len(failed)}" if failed else ""),
        *(f"- atlas case {r['atlas_case']}: {r['error']}" for r in failed),
        "",
        "| landmark | sides | error median / 90 % / max (mm) "
        f"| sides over {LANDMARK_GOAL_MM:g} mm |",
        "|---|---|---|---|",
    ]
    for name in accuracy.LANDMARKS:
        errors = np.array([float(r[f"{name}_error_mm"]) for r in done])
        median, p90, largest = np.percentile(errors, [50, 90, 100])
        lines.append(
            f"| {name} | {len(errors)} | {median:.1f} / {p90:.1f} / {largest:.1f} | "
            f"{int(np.count_nonzero(errors > LANDMARK_GOAL_MM))} |"
        )
    lines += ["", accuracy.summarize(done)]
    if all("status" in r for r in done):
        lines += ["", cohort.summarize(done)]
    return "\n".join(lines)


def _read(path: Path) -> list[dict[str, Any]]:
    flags = {"truth_admits", "truth_admits_with_reserve", "cross_check_agrees"}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in flags & row.keys():
            row[key] = {"True": True, "False": False}.get(row[key], row[key])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; print progress on stderr and the tables on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m bmbx_phantoms.heldout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--atlas", type=Path, default=DEFAULT_ATLAS, help="atlas folder")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="these atlas cases only")
    parser.add_argument(
        "--seen", action="store_true", help="segment with the packaged model (holds every case)"
    )
    parser.add_argument("--no-plan", action="store_true", help="measure the segmentation only")
    parser.add_argument(
        "--reserve",
        action="store_true",
        help="draw and judge the reserve study's lines instead (python -m bmbx_phantoms.reserve)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--out", type=Path, help="CSV file with one row per side")
    parser.add_argument("--summarize", type=Path, metavar="CSV", help="print a stored study")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        print(summarize(_read(args.summarize)))
        return 0
    if not args.atlas.is_dir():
        parser.error(f"--atlas {args.atlas}: no such folder")
    try:
        cases = atlas_study_cases(args.atlas, names=args.only, seen=args.seen)
    except ValueError as error:
        parser.error(str(error))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    run = partial(_measure_or_report, plan=not args.no_plan, lines=args.reserve)
    for n, (case, case_rows) in enumerate(
        zip(cases, cohort.in_parallel(run, cases, args.workers), strict=True), start=1
    ):
        rows.extend(case_rows)
        text = (
            f"{len(case_rows)} lines"
            if args.reserve
            else ", ".join(
                f"{r['side']} {r.get('status', '')} hip {r.get('dice_hip', '-')} "
                f"PSIS {r.get('psis_error_mm', '-')} mm"
                for r in case_rows
            )
        )
        print(
            f"[{n}/{len(cases)} {time.perf_counter() - start:.0f} s] atlas {case.name} "
            f"{case.preset} {case.position}: {text}",
            file=sys.stderr,
            flush=True,
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        names = list(dict.fromkeys(key for row in rows for key in row))
        partial_file = args.out.with_name(args.out.name + ".partial")
        with partial_file.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names, restval="")
            writer.writeheader()
            writer.writerows(rows)
        partial_file.replace(args.out)
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
