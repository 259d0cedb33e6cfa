"""Time the trajectory search on a phantom CT of at least 512x512x300 against the
per-candidate VTK baseline, and the checker of one trajectory; report peak memory.

Run::

    python benchmarks/bench_plan.py [--workdir DIR] [--baseline-candidates N] [--seed S]
                                    [--fill-cavities]

What is measured, in one fresh subprocess (the CT and its segmentation are built once
and cached in ``--workdir``: the CT as in ``bench_segment.py``, the :class:`Anatomy` as
a pickle, so that repeated runs skip the segmentation):

(a) the full search ``Planner(anatomy).plan(side, cross_check=False)`` of each side:
    seconds (distance maps included), candidates evaluated, candidates per second;
(b) the vectorised evaluation alone (``planning.evaluate.evaluate`` plus the hard
    verdicts) on the planner's candidate set (cortex entries from
    ``planning.candidates.entry_points`` x ``direction_grid``, kept when the incidence
    allows, as ``Planner.plan`` does) against the baseline that existing open planners
    use: a Python loop over candidates, each judged by line/surface intersections and
    point/surface distances on prebuilt VTK locators
    (``planning.crosscheck.check_candidate``, skin entry found on the body mesh). The
    baseline runs on a random subset (``--baseline-candidates`` per side, same core
    lengths as the vectorised evaluation); the table gives the time per candidate of
    both, the speed-up (goal: at least 50x) and how often the two agree on the hard
    verdict (all hard constraints pass or not), with the disagreements explained;
(c) ``Planner.check`` of one trajectory (the plan's, or its near-miss) after a
    warm-up: median of 50 runs (goal: under 30 ms).

It also reports the peak resident memory of that subprocess (``ru_maxrss``,
interpreter, imports and the unpickled anatomy included), once after (a) and (c),
which run first, and once more at the end, with the baseline's meshes and locators.

With ``--fill-cavities`` the baseline meshes the hip bones without the soft-tissue
pockets a segmentation may leave inside them (the planner's maps keep them), which shows
how much those pockets change the verdicts.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_segment import build

BATCH = 16_384  # candidates per vectorised batch, as the planner uses
CHECK_RUNS = 50


def anatomy_path(ct_path: Path) -> Path:
    return ct_path.with_name(ct_path.name.split(".")[0] + "_anatomy.pkl")


def prepare(workdir: Path) -> Path:
    """Build the CT and segment it, unless the workdir holds both (the Anatomy is pickled
    next to the CT); the CT's path."""
    ct_path = build(workdir)
    cached = anatomy_path(ct_path)
    if cached.exists():
        try:
            _load_anatomy(ct_path)
        except Exception:  # an Anatomy pickled by an older bmbx_plan
            cached.unlink()
    if not cached.exists():
        from bmbx_plan import load_ct, segment_pelvis

        print("segmenting the CT once (cached in the workdir) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        anatomy = segment_pelvis(load_ct(ct_path))
        with cached.open("wb") as f:
            pickle.dump(anatomy, f, protocol=pickle.HIGHEST_PROTOCOL)
        print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return ct_path


def _load_anatomy(ct_path: Path) -> Any:
    with anatomy_path(ct_path).open("rb") as f:
        return pickle.load(f)


def _candidates(planner: Any, side: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cortex entries and directions of every candidate the planner evaluates."""
    from bmbx_plan.planning.candidates import direction_grid, entry_points

    fields = planner.fields(side)
    p = planner.parameters
    points, normals = entry_points(fields, p)
    directions = direction_grid(fields, p)
    cos = -(normals @ directions.T)
    ei, di = np.nonzero(cos >= np.cos(np.radians(p.max_incidence_deg)))
    return points[ei], directions[di]


def _vectorised(planner: Any, side: Any, entries: np.ndarray, directions: np.ndarray) -> Any:
    from bmbx_plan.planning.constraints import hard_passes
    from bmbx_plan.planning.evaluate import Evaluation, evaluate

    fields = planner.fields(side)
    p = planner.parameters
    reserve = {"reserve_mm": planner.reserve_mm} if hasattr(planner, "reserve_mm") else {}
    parts = [
        evaluate(fields, p, entries[s : s + BATCH], directions[s : s + BATCH], **reserve)
        for s in range(0, len(entries), BATCH)
    ]
    found = Evaluation.concatenate(parts)
    hard_passes(found, p, has_skin=fields.has_skin)
    return found


def _search(planner: Any, side: Any) -> dict[str, Any]:
    """(a) the full search, distance maps included, and (c) the checker."""
    out: dict[str, Any] = {}
    start = time.perf_counter()
    plan = planner.plan(side, cross_check=False)
    out["plan_s"] = time.perf_counter() - start
    out["plan_candidates"] = int(plan.candidates_evaluated)
    out["plan_status"] = plan.status
    trajectory = plan.trajectory or (plan.near_miss.trajectory if plan.near_miss else None)
    if trajectory is not None:
        skin, end = trajectory.skin_entry_lps_mm, trajectory.core_end_lps_mm
        planner.check(side, skin, end)  # warm-up
        times = []
        for _ in range(CHECK_RUNS):
            start = time.perf_counter()
            planner.check(side, skin, end)
            times.append(time.perf_counter() - start)
        out["check_ms"] = 1e3 * statistics.median(times)
    return out


def _compare(
    planner: Any, anatomy: Any, side: Any, n_baseline: int, seed: int, fill: bool
) -> dict[str, Any]:
    """(b) the vectorised evaluation against the per-candidate VTK baseline."""
    from bmbx_plan.planning.constraints import HARD_NAMES, constraint_results, hard_passes
    from bmbx_plan.planning.crosscheck import (
        check_candidate,
        compare,
        cross_check_tolerance_mm,
        side_scene,
    )

    out: dict[str, Any] = {}
    entries, directions = _candidates(planner, side)
    start = time.perf_counter()
    found = _vectorised(planner, side, entries, directions)
    out["vector_s"] = time.perf_counter() - start
    out["vector_n"] = len(entries)

    # the baseline's meshes and locators (shared by both sides where they can be)
    start = time.perf_counter()
    scene = side_scene(anatomy, side, fill_cavities=fill)
    out["scene_s"] = time.perf_counter() - start
    p = planner.parameters
    tol = cross_check_tolerance_mm(scene, p)
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(len(entries), min(n_baseline, len(entries)), replace=False))
    rows = found.take(subset)
    core_ends = rows.cortex_entry + (p.seat_depth_mm + rows.core_length_mm)[:, None] * (
        rows.direction
    )
    start = time.perf_counter()
    checks = [
        check_candidate(scene, p, rows.cortex_entry[n], core_ends[n], tolerance_mm=tol)
        for n in range(len(subset))
    ]
    out["baseline_s"] = time.perf_counter() - start
    out["baseline_n"] = len(subset)

    # verdicts: the planner's at the limits (as a check judges), the baseline's
    has_skin = planner.fields(side).has_skin
    theirs = np.asarray(hard_passes(rows, p, has_skin=has_skin), bool)
    mine = np.array([[c.passed[name] for name in HARD_NAMES] for c in checks])
    overall_theirs = np.asarray(theirs.all(axis=1), bool)
    overall_mine = np.asarray(mine.all(axis=1), bool)
    differ = np.nonzero(overall_theirs != overall_mine)[0]
    explained: Counter[str] = Counter()
    per_constraint: Counter[str] = Counter()
    for n in range(len(subset)):
        if not np.any(theirs[n] != mine[n]):
            continue
        constraints = constraint_results(rows.take(np.array([n])), p, has_skin=has_skin)
        beyond = compare(checks[n], constraints, tol, has_skin=has_skin, grid_mm=p.grid_mm)
        names = [HARD_NAMES[j] for j in np.nonzero(theirs[n] != mine[n])[0]]
        for name in names:
            far = any(sentence.startswith(f"{name}:") for sentence in beyond)
            same = "same" if overall_theirs[n] == overall_mine[n] else "different"
            key = f"{name} ({'beyond' if far else 'within'} tolerance, {same} overall verdict)"
            per_constraint[key] += 1
        if overall_theirs[n] != overall_mine[n]:
            kind = "beyond tolerance" if beyond else "within tolerance"
            explained[f"{'+'.join(names)} ({kind})"] += 1
            out.setdefault("beyond", []).extend(beyond)
    out.update(
        tolerance_mm=tol,
        feasible_planner=int(overall_theirs.sum()),
        feasible_baseline=int(overall_mine.sum()),
        agree=int(len(subset) - len(differ)),
        explained=dict(explained),
        per_constraint=dict(per_constraint),
    )

    return out


def run(ct_path: Path, n_baseline: int, seed: int, fill: bool) -> dict[str, Any]:
    """Every measurement, in this process."""
    from bmbx_plan.planning import Planner, Side

    anatomy = _load_anatomy(ct_path)
    planner = Planner(anatomy)
    sides = {s.value: _search(planner, s) for s in Side}
    planner_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for s in Side:
        sides[s.value].update(_compare(planner, anatomy, s, n_baseline, seed, fill))
    return {
        "shape": list(anatomy.labels.shape),
        "spacing_mm": [float(v) for v in anatomy.labels.spacing_mm],
        "sides": sides,
        "planner_rss_mib": planner_rss,
        "fill_cavities": fill,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _report(result: dict[str, Any]) -> None:
    shape, spacing = tuple(result["shape"]), result["spacing_mm"]
    print(f"planning on a {shape} (k, j, i) CT, spacing {spacing} mm")
    if result["fill_cavities"]:
        print("baseline meshes: hip bones with their internal cavities filled")
    sides = result["sides"]
    names = list(sides)
    row = "{:<44}" + " {:>14}" * len(names)
    print(row.format("", *names))
    print(row.format("(a) Planner.plan: seconds", *(f"{s['plan_s']:.2f}" for s in sides.values())))
    print(row.format("    status", *(s["plan_status"] for s in sides.values())))
    print(
        row.format(
            "    candidates evaluated", *(f"{s['plan_candidates']:,}" for s in sides.values())
        )
    )
    print(
        row.format(
            "    candidates / s",
            *(f"{s['plan_candidates'] / s['plan_s']:,.0f}" for s in sides.values()),
        )
    )
    print(
        row.format(
            "(b) candidates (planner's set)", *(f"{s['vector_n']:,}" for s in sides.values())
        )
    )
    print(row.format("    vectorised: seconds", *(f"{s['vector_s']:.2f}" for s in sides.values())))
    vec_us = [1e6 * s["vector_s"] / s["vector_n"] for s in sides.values()]
    base_us = [1e6 * s["baseline_s"] / s["baseline_n"] for s in sides.values()]
    print(row.format("    vectorised: us / candidate", *(f"{v:.1f}" for v in vec_us)))
    print(
        row.format(
            "    VTK baseline: meshes + locators, s",
            *(f"{s['scene_s']:.2f}" for s in sides.values()),
        )
    )
    print(
        row.format(
            "    VTK baseline: candidates timed", *(f"{s['baseline_n']:,}" for s in sides.values())
        )
    )
    print(row.format("    VTK baseline: us / candidate", *(f"{v:,.0f}" for v in base_us)))
    print(
        row.format(
            "    speed-up (goal >= 50x)",
            *(f"{b / v:,.0f}x" for b, v in zip(base_us, vec_us, strict=True)),
        )
    )
    print(
        row.format(
            "    extrapolated baseline, whole set, s",
            *(
                f"{1e-6 * b * s['vector_n']:,.0f}"
                for b, s in zip(base_us, sides.values(), strict=True)
            ),
        )
    )
    print(
        row.format(
            "    feasible (planner / baseline)",
            *(f"{s['feasible_planner']} / {s['feasible_baseline']}" for s in sides.values()),
        )
    )
    print(
        row.format(
            "    hard verdict agreement",
            *(f"{s['agree'] / s['baseline_n']:.1%}" for s in sides.values()),
        )
    )
    print(
        row.format(
            "    disagreements", *(f"{s['baseline_n'] - s['agree']}" for s in sides.values())
        )
    )
    print(row.format("    tolerance, mm", *(f"{s['tolerance_mm']:.2f}" for s in sides.values())))
    check = [f"{s['check_ms']:.1f}" if "check_ms" in s else "-" for s in sides.values()]
    print(row.format("(c) Planner.check, median ms (goal < 30)", *check))
    print(f"{'peak RSS MiB, after (a) and (c)':<44} {result['planner_rss_mib']:>14.0f}")
    print(f"{'peak RSS MiB, with the VTK baseline':<44} {result['peak_rss_mib']:>14.0f}")
    for name, s in sides.items():
        if s["explained"]:
            print(f"{name}: overall verdict disagreements by constraint:")
            for what, count in sorted(s["explained"].items(), key=lambda kv: -kv[1]):
                print(f"    {count:4d}  {what}")
        if s["per_constraint"]:
            print(f"{name}: per-constraint verdict differences, all timed candidates:")
            for what, count in sorted(s["per_constraint"].items()):
                print(f"    {count:4d}  {what}")
        for sentence in s.get("beyond", [])[:10]:
            print(f"    beyond tolerance: {sentence}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--baseline-candidates", type=int, default=1000, help="per side (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="of the baseline subset")
    parser.add_argument(
        "--fill-cavities",
        action="store_true",
        help="mesh the hip bones without internal cavities (clearance to the outer boundary)",
    )
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(prepare(args.workdir))
        return
    if args.run:
        print(json.dumps(run(args.run, args.baseline_candidates, args.seed, args.fill_cavities)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # built and segmented in a child: ru_maxrss survives fork+exec, so the parent
        # must stay small (a CT built here put its own 4.4 GB into the planner's peak)
        prepare_command = [sys.executable, __file__, "--prepare", "--workdir", str(workdir)]
        prepared = subprocess.run(prepare_command, stdout=subprocess.PIPE, text=True, check=True)
        ct_path = Path(prepared.stdout.strip())
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--run",
                str(ct_path),
                "--baseline-candidates",
                str(args.baseline_candidates),
                "--seed",
                str(args.seed),
                *(["--fill-cavities"] if args.fill_cavities else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        _report(json.loads(out.stdout))


if __name__ == "__main__":
    main()
