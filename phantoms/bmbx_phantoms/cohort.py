"""Planner safety study on a phantom cohort.

For every phantom (seeds x presets x patient positions) and side:

1. the CT is segmented and planned as a user would;
2. the proposed plan is checked against the phantom's exact truth
   (:func:`bmbx_phantoms.truth.truth_anatomy`): a hard-constraint failure there is a
   safety violation;
3. the truth itself is planned with no reserve, to know whether a safe plan exists;
4. designed no-safe-path sides (``thin_wing_left`` left, ``no_safe_right`` right) must
   come back infeasible with the core clearance binding.

Run::

    python -m bmbx_phantoms.cohort --cases 200 --workers 2 --out cohort.csv
    python -m bmbx_phantoms.cohort --summarize cohort.csv

It prints a summary table (the second form prints a stored study's table again);
``--cases 12`` gives a quick look (the test suite runs a small subset). The phantoms have
2 x 2 x 2.5 mm voxels unless ``--voxel-mm PIXEL SLICE`` asks for others
(``--voxel-mm 1 1.25`` for a clinical planning CT; slower).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bmbx_phantoms.parameters import (
    PATIENT_POSITIONS,
    PRESETS,
    PhantomParameters,
    parse_overrides,
    resolve_parameters,
)
from bmbx_phantoms.phantom import Phantom, make_phantom
from bmbx_phantoms.truth import truth_anatomy

if TYPE_CHECKING:
    from bmbx_plan.anatomy import Anatomy

__all__ = [
    "DESIGNED_INFEASIBLE",
    "Case",
    "cohort_cases",
    "plan_rows",
    "run_case",
    "summarize",
]

#: Sides built to admit no safe core, and the constraint that must bind there.
DESIGNED_INFEASIBLE: dict[tuple[str, str], str] = {
    ("thin_wing_left", "left"): "core_cortex_clearance",
    ("no_safe_right", "right"): "core_cortex_clearance",
}


#: Any study's case type (the cohort's :class:`Case` or another study's).
CaseT = TypeVar("CaseT")


@dataclass(frozen=True)
class Case:
    """One phantom of the cohort; ``overrides`` sets phantom parameters over its preset's
    (``NAME=VALUE`` pairs, see :func:`~bmbx_phantoms.parameters.parse_overrides`)."""

    seed: int
    preset: str
    position: str
    overrides: str = ""


def cohort_cases(count: int, *, first_seed: int = 1000, overrides: str = "") -> list[Case]:
    """``count`` cases cycling through every preset and, preset round by preset round,
    every patient position, each with its own seed (and the same ``overrides``)."""
    presets = sorted(PRESETS)
    return [
        Case(
            seed=first_seed + n,
            preset=presets[n % len(presets)],
            position=PATIENT_POSITIONS[(n // len(presets)) % len(PATIENT_POSITIONS)],
            overrides=overrides,
        )
        for n in range(count)
    ]


def overrides_text(pairs: Sequence[str]) -> str:
    """The ``--phantom NAME=VALUE`` options of a study as a case's ``overrides``, checked
    (``ValueError`` for an unknown name or a value out of range)."""
    text = " ".join(sorted(pairs))
    resolve_parameters(jitter=False, **parse_overrides(text))
    return text


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """The options every cohort study takes: the first seed, workers, the phantoms' voxel
    size and parameters, and ``--summarize`` of a stored study."""
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--voxel-mm",
        type=float,
        nargs=2,
        metavar=("PIXEL", "SLICE"),
        help="CT pixel and slice spacing (default: the phantom's, 2.0 and 2.5 mm)",
    )
    parser.add_argument(
        "--phantom",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a phantom parameter over every preset, e.g. blood_hu=300 for an "
        "arterial phase (repeatable)",
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="CSV",
        help="print the table of a stored study (its --out file) with the code at hand",
    )


def study_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The cases' ``overrides`` from ``--phantom`` (a usage error when one is wrong)."""
    try:
        return overrides_text(args.phantom)
    except ValueError as error:
        parser.error(f"--phantom: {error}")


def study_voxel_mm(args: argparse.Namespace) -> tuple[float, float] | None:
    """The CT's (pixel, slice) spacing from ``--voxel-mm`` (None: the phantom's own)."""
    return None if args.voxel_mm is None else (args.voxel_mm[0], args.voxel_mm[1])


def overrides_of(rows: Sequence[dict[str, Any]]) -> str:
    """The phantom parameters a study's rows set over the presets, for its table's
    header ("" when none)."""
    texts = sorted({str(r.get("overrides") or "") for r in rows} - {""})
    return f"; phantom parameters {' and '.join(texts)}" if texts else ""


def run_case(
    case: Case, *, cross_check: bool = True, voxel_mm: tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """Plan one phantom from its CT and judge the plans on its truth (one row per side).

    ``voxel_mm`` is the CT's (pixel spacing, slice spacing); by default the phantom's."""
    from bmbx_plan import segment_pelvis

    start = time.perf_counter()
    phantom = phantom_of(case, voxel_mm)
    anatomy = segment_pelvis(phantom.ct)
    rows = []
    for row in plan_rows(phantom, anatomy, cross_check=cross_check):
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append({**asdict(case), "voxel_mm": voxel_text_of(phantom), **row})
    return rows


def plan_rows(
    phantom: Phantom, anatomy: Anatomy, *, cross_check: bool = True
) -> Iterator[dict[str, Any]]:
    """Plan each side of ``phantom`` on its segmentation ``anatomy`` and judge the plan
    on the truth: the study's columns from ``side`` on, one row per side as it is done."""
    from bmbx_plan.planning import Planner, PlanningParameters

    truth = truth_anatomy(phantom)
    planner = Planner(anatomy)
    exact = Planner(truth, PlanningParameters(reserve_mm=0.0))
    # the truth planned with the reserve the planner keeps on the CT: a plan that exists
    # only within that reserve of a limit cannot be found safely from a segmentation
    robust = Planner(truth, PlanningParameters(reserve_mm=planner.reserve_mm))
    for side in ("left", "right"):
        plan = planner.plan(side, cross_check=cross_check)
        admits = exact.plan(side, cross_check=False)
        row: dict[str, Any] = {
            "side": side,
            "status": plan.status,
            "needle": plan.needle or "",
            "truth_admits": admits.feasible,
            "truth_admits_with_reserve": admits.feasible
            and robust.plan(side, cross_check=False).feasible,
            "truth_binding": " ".join(c.name for c in admits.failed),
            "binding": " ".join(c.name for c in plan.failed) if not plan.feasible else "",
            "violations": "",
            "cross_check_agrees": "",
            "core_clearance_mm": "",
            "truth_core_clearance_mm": "",
            "core_length_mm": "",
            "candidates": plan.candidates_evaluated,
        }
        if plan.trajectory is not None and plan.metrics is not None:
            judge = exact
            if plan.needle and plan.needle != exact.parameters.needle.name:
                judge = exact.with_needle(plan.needle)
            judged = judge.check(
                side, plan.trajectory.skin_entry_lps_mm, plan.trajectory.core_end_lps_mm
            )
            row["violations"] = " ".join(
                f"{c.name}={c.value:.2f}" if c.value is not None else c.name for c in judged.failed
            )
            row["core_clearance_mm"] = round(plan.metrics.core_min_cortex_clearance_mm, 2)
            if judged.metrics is not None:
                row["truth_core_clearance_mm"] = round(
                    judged.metrics.core_min_cortex_clearance_mm, 2
                )
            row["core_length_mm"] = round(plan.metrics.core_length_mm, 1)
            if plan.cross_check is not None:
                row["cross_check_agrees"] = plan.cross_check.agrees
        yield row


#: Columns of the study's CSV, one row per side (or one per case that failed to run).
FIELDS = [
    "seed",
    "preset",
    "position",
    "overrides",
    "voxel_mm",
    "side",
    "status",
    "needle",
    "truth_admits",
    "truth_admits_with_reserve",
    "truth_binding",
    "binding",
    "violations",
    "cross_check_agrees",
    "core_clearance_mm",
    "truth_core_clearance_mm",
    "core_length_mm",
    "candidates",
    "seconds",
    "error",
]


def _rewrite_with_fields(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Give a study's CSV (its ``rows`` as read) the columns of :data:`FIELDS` (a study
    written before a column was added), replacing it whole only once the new file is
    complete."""
    if rows and list(rows[0]) == FIELDS:
        return
    partial_file = path.with_name(path.name + ".partial")
    with partial_file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial_file.replace(path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier run's CSV, with its flags as booleans again."""
    flags = {"truth_admits", "truth_admits_with_reserve", "cross_check_agrees"}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in flags & row.keys():
            row[key] = {"True": True, "False": False}.get(row[key], row[key])
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """The study's table: safety, yield and the designed infeasible sides."""
    failed = [r for r in rows if r["status"] == "error"]
    rows = [r for r in rows if r["status"] != "error"]
    designed = [r for r in rows if (r["preset"], r["side"]) in DESIGNED_INFEASIBLE]
    regular = [r for r in rows if (r["preset"], r["side"]) not in DESIGNED_INFEASIBLE]
    proposed = [r for r in rows if r["status"] == "feasible"]
    violations = [r for r in proposed if r["violations"]]
    admits = [r for r in regular if r["truth_admits"]]
    found = [r for r in admits if r["status"] == "feasible"]
    robust = [r for r in admits if r["truth_admits_with_reserve"]]
    found_robust = [r for r in robust if r["status"] == "feasible"]
    designed_ok = [
        r
        for r in designed
        if r["status"] == "infeasible"
        and DESIGNED_INFEASIBLE[(r["preset"], r["side"])] in r["binding"].split()
    ]
    disagree = [r for r in proposed if r["cross_check_agrees"] is False]
    cases = {(r["seed"], r["preset"], r["position"]) for r in rows}
    voxels = sorted({r["voxel_mm"] for r in rows if r.get("voxel_mm")})
    lines = [
        f"phantoms: {len(cases)}, sides planned: {len(rows)}"
        + (f", CT voxels {' and '.join(voxels)} mm" if voxels else "")
        + overrides_of(rows)
        + (f"; phantoms that could not be built or run: {len(failed)}" if failed else ""),
        *(f"- seed {r['seed']} {r['preset']} {r['position']}: {r['error']}" for r in failed),
        "",
        "| measure | count | share |",
        "|---|---|---|",
        f"| plans proposed | {len(proposed)} | {_share(len(proposed), len(rows))} |",
        f"| proposed plans violating a hard constraint on the truth | {len(violations)} | "
        f"{_share(len(violations), len(proposed))} |",
        f"| proposed plans whose cross-check disagrees | {len(disagree)} | "
        f"{_share(len(disagree), len(proposed))} |",
        f"| regular sides whose truth admits a plan | {len(admits)} | "
        f"{_share(len(admits), len(regular))} |",
        f"| of those, feasible plan found | {len(found)} | {_share(len(found), len(admits))} |",
        f"| regular sides whose truth admits a plan with the planner's reserve | "
        f"{len(robust)} | {_share(len(robust), len(regular))} |",
        f"| of those, feasible plan found | {len(found_robust)} | "
        f"{_share(len(found_robust), len(robust))} |",
        f"| designed no-safe-path sides infeasible with the right binding constraint | "
        f"{len(designed_ok)} of {len(designed)} | {_share(len(designed_ok), len(designed))} |",
        "",
        "| preset | sides | proposed | truth admits | found | admits with reserve | found "
        "| violations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset in sorted({r["preset"] for r in rows}):
        group = [r for r in rows if r["preset"] == preset]
        adm = [r for r in group if r["truth_admits"]]
        rob = [r for r in adm if r["truth_admits_with_reserve"]]
        lines.append(
            f"| {preset} | {len(group)} | {sum(r['status'] == 'feasible' for r in group)} | "
            f"{len(adm)} | {sum(r['status'] == 'feasible' for r in adm)} | "
            f"{len(rob)} | {sum(r['status'] == 'feasible' for r in rob)} | "
            f"{sum(bool(r['violations']) for r in group if r['status'] == 'feasible')} |"
        )
    lines.extend(_missed(admits))
    return "\n".join(lines)


def _missed(admits: Sequence[dict[str, Any]]) -> list[str]:
    """Sides the truth admits but the planner finds infeasible, by the constraints that
    bind on the segmentation, and whether the truth admits them with the reserve."""
    missed = [r for r in admits if r["status"] != "feasible"]
    if not missed:
        return []
    counts = Counter(
        (r["binding"] or "(none)", bool(r["truth_admits_with_reserve"])) for r in missed
    )
    keys = sorted({key for key, _ in counts}, key=lambda k: -(counts[k, False] + counts[k, True]))
    return [
        "",
        "| missed: binding on the segmentation | truth admits only within the reserve "
        "| truth admits with the reserve |",
        "|---|---|---|",
        *(f"| {key} | {counts[key, False]} | {counts[key, True]} |" for key in keys),
    ]


def phantom_of(case: Case, voxel_mm: tuple[float, float] | None = None) -> Phantom:
    """The case's phantom; ``voxel_mm`` is its CT's (pixel spacing, slice spacing), by
    default the phantom's."""
    grid: dict[str, Any] = {}
    if voxel_mm is not None:
        grid = {"pixel_spacing_mm": voxel_mm[0], "slice_spacing_mm": voxel_mm[1]}
    return make_phantom(
        seed=case.seed,
        position=case.position,
        preset=case.preset,
        **{**parse_overrides(case.overrides), **grid},
    )


def _voxel_text(pixel_mm: float, slice_mm: float) -> str:
    """A CT's voxel size as "pixel x slice" (mm)."""
    return f"{pixel_mm:g} x {slice_mm:g}"


def voxel_text_of(phantom: Phantom) -> str:
    """The phantom CT's voxel size as "pixel x slice" (mm), as the studies' CSVs hold it."""
    grid = phantom.truth["parameters"]
    return _voxel_text(grid["pixel_spacing_mm"], grid["slice_spacing_mm"])


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "-"


def _run_or_report(
    case: Case, *, cross_check: bool, voxel_mm: tuple[float, float] | None
) -> list[dict[str, Any]]:
    """:func:`run_case`, or one row saying why the case could not be run (a phantom the
    generator cannot build must not end a long study)."""
    try:
        return run_case(case, cross_check=cross_check, voxel_mm=voxel_mm)
    except Exception as error:  # reported in the table, not hidden
        return [
            {
                **asdict(case),
                "side": "",
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
            }
        ]


def in_parallel(
    run: Callable[[CaseT], list[dict[str, Any]]], cases: Iterable[CaseT], workers: int
) -> Iterator[list[dict[str, Any]]]:
    """``run`` of each case in order, in ``workers`` processes (``run`` must pickle)."""
    if workers <= 1:
        yield from map(run, cases)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(run, cases)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; print progress on stderr and the table on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m bmbx_phantoms.cohort", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cases", type=int, default=200, help="number of phantoms")
    parser.add_argument("--out", type=Path, help="CSV file with one row per side")
    parser.add_argument(
        "--no-cross-check", action="store_true", help="skip the independent cross-check"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out and run only the cases missing there",
    )
    add_study_options(parser)
    args = parser.parse_args(argv)
    if args.summarize is not None:
        print(summarize(_read_rows(args.summarize)))
        return 0
    overrides = study_overrides(parser, args)
    cases = cohort_cases(args.cases, first_seed=args.first_seed, overrides=overrides)
    rows: list[dict[str, Any]] = []
    resuming = args.resume and args.out is not None and args.out.exists()
    voxel_mm = study_voxel_mm(args)
    if resuming:
        rows = _read_rows(args.out)
        default = PhantomParameters()
        wanted = _voxel_text(*(voxel_mm or (default.pixel_spacing_mm, default.slice_spacing_mm)))
        kept = {r["voxel_mm"] for r in rows if r.get("voxel_mm")}
        if kept - {wanted}:
            parser.error(
                f"{args.out} holds phantoms of {', '.join(sorted(kept))} mm voxels, not "
                f"{wanted}: resume with the same --voxel-mm"
            )
        if {r.get("overrides") or "" for r in rows} - {overrides}:
            parser.error(f"{args.out} holds phantoms of other --phantom parameters")
        _rewrite_with_fields(args.out, rows)
        done = {int(r["seed"]) for r in rows}
        cases = [c for c in cases if c.seed not in done]
    with ExitStack() as stack:
        sink = None
        if args.out is not None:  # every case is appended as soon as it is done
            args.out.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(args.out.open("a" if resuming else "w", newline=""))
            sink = csv.DictWriter(handle, fieldnames=FIELDS, restval="")
            if not resuming:
                sink.writeheader()
        start = time.perf_counter()
        for n, case_rows in enumerate(
            in_parallel(
                partial(_run_or_report, cross_check=not args.no_cross_check, voxel_mm=voxel_mm),
                cases,
                args.workers,
            ),
            start=1,
        ):
            rows.extend(case_rows)
            if sink is not None:
                sink.writerows(case_rows)
                handle.flush()
            status = ", ".join(
                f"{r['side']} {r['status']}{' VIOLATION' if r.get('violations') else ''}"
                f"{' ' + r['error'] if r.get('error') else ''}"
                for r in case_rows
            )
            print(
                f"[{n}/{len(cases)} {time.perf_counter() - start:.0f} s] "
                f"seed {case_rows[0]['seed']} {case_rows[0]['preset']} "
                f"{case_rows[0]['position']}: {status}",
                file=sys.stderr,
                flush=True,
            )
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
