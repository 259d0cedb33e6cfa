"""The command line shared by the studies that measure every few phantoms of the cohort
(:mod:`bmbx_phantoms.reserve`, :mod:`bmbx_phantoms.accuracy`)."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bmbx_phantoms.cohort import (
    Case,
    add_study_options,
    cohort_cases,
    in_parallel,
    study_overrides,
    study_voxel_mm,
)

__all__ = ["study_main"]

Rows = list[dict[str, Any]]


def _measure_or_skip(
    measure: Callable[..., Rows], case: Case, voxel_mm: tuple[float, float] | None
) -> Rows:
    try:
        return measure(case, voxel_mm=voxel_mm)
    except Exception as error:  # one phantom the generator cannot build ends no study
        print(f"seed {case.seed}: {type(error).__name__}: {error}", file=sys.stderr)
        return []


def study_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    measure: Callable[..., Rows],
    summarize: Callable[[Sequence[dict[str, Any]]], str],
    describe: Callable[[Rows], str],
    default_step: int,
) -> int:
    """Parse the study's options, measure every ``--step``-th cohort phantom with
    ``measure(case, voxel_mm=...)`` (rows of a CSV), print progress (``describe`` of a
    phantom's rows) on stderr and ``summarize`` of all rows on stdout.

    ``--summarize CSV`` prints the table of a stored study instead."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--cases", type=int, default=200, help="cohort phantoms to draw from")
    parser.add_argument(
        "--step", type=int, default=default_step, help="measure every STEP-th phantom"
    )
    parser.add_argument("--out", type=Path, help="CSV file of the rows measured")
    add_study_options(parser)
    args = parser.parse_args(argv)
    if args.summarize is not None:
        with args.summarize.open(newline="") as handle:
            print(summarize(list(csv.DictReader(handle))))
        return 0
    overrides = study_overrides(parser, args)
    cases = cohort_cases(args.cases, first_seed=args.first_seed, overrides=overrides)
    cases = cases[:: args.step]
    voxel_mm = study_voxel_mm(args)
    rows: Rows = []
    start = time.perf_counter()
    measured = in_parallel(
        partial(_measure_or_skip, measure, voxel_mm=voxel_mm), cases, args.workers
    )
    for n, (case, case_rows) in enumerate(zip(cases, measured, strict=True), start=1):
        rows.extend(case_rows)
        print(
            f"[{n}/{len(cases)} {time.perf_counter() - start:.0f} s] seed {case.seed} "
            f"{case.preset} {case.position}: {describe(case_rows)}",
            file=sys.stderr,
            flush=True,
        )
    if not rows:
        print("no phantom could be measured", file=sys.stderr)
        return 1
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        names = list(dict.fromkeys(key for row in rows for key in row))
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names, restval="")
            writer.writeheader()
            writer.writerows(rows)
    print(summarize(rows))
    return 0
