"""How far the segmentation moves each hard constraint: the measurement behind the
planner's reserve (``bmbx_plan.planning.parameters.RESERVE_SHARES``).

For each phantom and side, the planner's search candidates are evaluated on the
segmented CT. The ones nearest each limit, among those that pass every hard constraint
and among those the search keeps with its reserve, and a random sample of the latter,
are drawn as a user would draw them (skin entry to core end) and checked twice: on the
segmentation and on the phantom's exact truth. The reserve is enough when no candidate
it keeps fails on the truth.

Run::

    python -m bmbx_phantoms.reserve [--cases N] [--step S] [--workers W]
                                    [--voxel-mm PIXEL SLICE] [--out FILE.csv]
    python -m bmbx_phantoms.reserve --summarize FILE.csv

and read the table on stdout (the second form prints a stored study's table again, with
the reserve shares of the code at hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bmbx_phantoms.cohort import Case, overrides_of, phantom_of, voxel_text_of
from bmbx_phantoms.study import study_main
from bmbx_phantoms.truth import truth_anatomy

if TYPE_CHECKING:
    from bmbx_phantoms.phantom import Phantom
    from bmbx_plan import Anatomy
    from bmbx_plan.planning import Planner

__all__ = ["judged_lines", "kept_with_reserve", "measure_case", "summarize"]

#: Candidates per side nearest each limit, and drawn at random among the passing ones.
NEAREST = 25
RANDOM = 60
#: Limits whose nearest candidates are drawn (the others are binary or rarely bind).
_PROBED = (
    "needle_length",
    "core_length",
    "core_cortex_clearance",
    "sciatic_notch",
    "si_joint",
    "cortex_incidence",
    "path_clearance",
)


def measure_case(case: Case, *, voxel_mm: tuple[float, float] | None = None) -> list[dict]:
    """The lines of :func:`judged_lines` on the segmented phantom of a cohort case."""
    from bmbx_plan import segment_pelvis

    phantom = phantom_of(case, voxel_mm)
    about = {**asdict(case), "voxel_mm": voxel_text_of(phantom)}
    return judged_lines(phantom, segment_pelvis(phantom.ct), about, seed=case.seed)


def judged_lines(
    phantom: Phantom, anatomy: Anatomy, about: dict[str, Any], *, seed: int
) -> list[dict]:
    """One row per drawn candidate (``about`` first): its needle, its line and, per hard
    constraint, the value on the segmentation ``anatomy`` and on the truth and whether
    each passes (no reserve).

    Candidates are drawn for the default needle and, among the trajectories it does not
    reach, for each longer needle the planner falls back to (deeper paths, which pass
    other structures)."""
    from bmbx_plan.planning import Planner, PlanningParameters

    seg = Planner(anatomy, PlanningParameters(reserve_mm=0.0))
    truth = Planner(truth_anatomy(phantom), PlanningParameters(reserve_mm=0.0))
    # the reserve the planner keeps on this CT (the shares are applied in the table)
    reserve = PlanningParameters().reserve_for(anatomy.labels.resolution_mm)
    rng = np.random.default_rng(seed)
    about = {**about, "reserve_mm": reserve}
    rows = []
    reach = 0.0  # what the needles drawn so far reach
    for needle in [seg.parameters.needle, *seg.longer_needles()]:
        on_seg, on_truth = seg.with_needle(needle), truth.with_needle(needle)
        for side in ("left", "right"):
            for skin, end in _drawn(on_seg, side, reserve, reach, rng):
                row = {**about, "side": side, "needle": needle.name}
                rows.append(row | _judged(on_seg, on_truth, side, skin, end))
        reach = needle.usable_length_mm
    return rows


def _drawn(
    planner: Planner, side: str, reserve: float, beyond_mm: float, rng: np.random.Generator
) -> list[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Skin entry and core end of the candidates drawn on ``side``: nearest each limit
    among those passing every hard constraint on the segmentation, and among those the
    search keeps with its reserve (the plans it may propose), plus a random sample of
    the latter; only candidates deeper than ``beyond_mm`` (skin to core end)."""
    from bmbx_plan.planning.constraints import CONSTRAINTS, hard_shortfalls, kept

    found = planner.candidates(side)
    if isinstance(found, str):
        return []
    p = planner.parameters
    deep = found.total_depth_mm(p) > beyond_mm
    passing = np.nonzero(kept(hard_shortfalls(found, p)).all(axis=1) & deep)[0]
    held = np.nonzero(kept(hard_shortfalls(found, p, reserve_mm=reserve)).all(axis=1) & deep)[0]
    if not len(passing):
        return []
    rules = {rule.name: rule for rule in CONSTRAINTS if rule.kind == "hard"}
    pool = held if len(held) else passing
    picked = set(rng.choice(pool, min(RANDOM, len(pool)), replace=False).tolist())
    for among in (passing, held):
        rows_of = found.take(among)
        for name in _PROBED:
            rule = rules[name]
            value, limit = rule.value(rows_of, p), rule.limit(p)
            slack = limit - value if rule.at_most else value - limit
            picked.update(among[np.argsort(slack)[:NEAREST]].tolist())
    chosen = found.take(np.array(sorted(picked)))
    ends = chosen.cortex_entry + (p.seat_depth_mm + chosen.core_length_mm)[:, None] * (
        chosen.direction
    )
    return list(zip(chosen.skin_entry(), ends, strict=True))


def _judged(
    seg: Planner, truth: Planner, side: str, skin: NDArray[np.float64], end: NDArray[np.float64]
) -> dict[str, Any]:
    """The line checked on the segmentation and on the truth: per hard constraint, the
    two values and whether the truth passes it."""
    from bmbx_plan.planning.constraints import HARD_NAMES

    on_seg = seg.check(side, skin, end)
    on_truth = {c.name: c for c in truth.check(side, skin, end).constraints}
    row: dict[str, Any] = {
        "skin_lps_mm": " ".join(f"{v:.2f}" for v in skin),
        "end_lps_mm": " ".join(f"{v:.2f}" for v in end),
        "passes_on_segmentation": on_seg.feasible,
    }
    for result in on_seg.constraints:
        if result.name not in HARD_NAMES:
            continue
        judged = on_truth.get(result.name)
        row[f"{result.name}:segmentation"] = result.value
        row[f"{result.name}:truth"] = None if judged is None else judged.value
        row[f"{result.name}:truth_passes"] = judged is not None and judged.passed
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Per hard constraint: how far the segmentation moved it, how many candidates that
    pass on the segmentation fail it on the truth, and how many of those the search's
    reserve lets through (a candidate is kept when it passes every hard constraint on the
    segmentation by its reserve; the reserve of each CT, see :func:`kept_with_reserve`)."""
    from bmbx_plan.planning.constraints import CONSTRAINTS
    from bmbx_plan.planning.parameters import RESERVE_SHARES

    if not rows:
        return "no candidates were drawn"
    reserves = sorted({float(r["reserve_mm"]) for r in rows})
    voxels = ", ".join(sorted({str(r["voxel_mm"]) for r in rows}))
    kept = _kept(rows)
    passing = sum(_flag(r["passes_on_segmentation"]) for r in rows)
    lines = [
        f"CT voxels {voxels} mm; the planner's reserve "
        + ", ".join(f"{v:.2f}" for v in reserves)
        + " mm"
        + overrides_of(rows),
        "",
        f"phantoms: {len({r['seed'] for r in rows})}, sides: "
        f"{len({(r['seed'], r['side']) for r in rows})}, candidates drawn: {len(rows)}, "
        f"passing every hard constraint on the segmentation: {passing}, "
        f"of those with the reserve: {int(kept.sum())}",
        "",
        "| constraint | unit | reserve share | moved by (99.9 %) | moved by (max) | "
        "fail on the truth | of those, kept with the reserve |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in CONSTRAINTS:
        if rule.kind != "hard":
            continue
        moved, failures, through = [], 0, 0
        for r, keep in zip(rows, kept, strict=True):
            seg, tru = _number(r, f"{rule.name}:segmentation"), _number(r, f"{rule.name}:truth")
            if seg is None or tru is None:
                continue
            moved.append(tru - seg if rule.at_most else seg - tru)
            if _flag(r["passes_on_segmentation"]) and _fails_on_truth(r, rule.name):
                failures += 1
                through += bool(keep)
        spread = np.array(moved) if moved else np.zeros(1)
        lines.append(
            f"| {rule.name} | {rule.unit} | {RESERVE_SHARES.get(rule.name, 0.0):g} | "
            f"{np.quantile(spread, 0.999):.2f} | {spread.max():.2f} | {failures} | {through} |"
        )
    return "\n".join(lines)


def kept_with_reserve(row: dict[str, Any]) -> bool:
    """Whether the search, which keeps every hard limit with its reserve, would keep this
    candidate (its values on the segmentation, the reserve of its CT)."""
    return bool(_kept([row])[0])


def _kept(rows: Sequence[dict[str, Any]]) -> NDArray[np.bool_]:
    """:func:`kept_with_reserve` of every row (a constraint that was not measured counts
    as kept)."""
    from bmbx_plan.planning.constraints import CONSTRAINTS, kept
    from bmbx_plan.planning.parameters import PlanningParameters

    keep = np.array([_flag(r["passes_on_segmentation"]) for r in rows], bool)
    default = PlanningParameters().needle.name
    # rows judged alike: the same reserve (of their CT) and the same needle's reach
    groups: dict[tuple[float, str], list[int]] = {}
    for n, r in enumerate(rows):
        groups.setdefault((float(r["reserve_mm"]), r.get("needle") or default), []).append(n)
    for (reserve, needle), members in groups.items():
        p = PlanningParameters().with_overrides(needle=needle)
        for rule in CONSTRAINTS:
            if rule.kind != "hard":
                continue
            at = np.array(members)
            value = np.array([_number(rows[n], f"{rule.name}:segmentation") for n in at], float)
            measured = ~np.isnan(value)
            keep[at[measured]] &= kept(rule.shortfall_of(value[measured], p, reserve))
    return keep


def _fails_on_truth(row: dict[str, Any], name: str) -> bool:
    """Whether the truth judged the constraint ``name`` and rejected the candidate."""
    judged = row.get(f"{name}:truth_passes")
    return judged not in (None, "") and not _flag(judged)


def _number(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return None if value is None or value == "" else float(value)


def _flag(value: Any) -> bool:
    return value is True or value == "True"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print progress on stderr and the table on stdout."""
    return study_main(
        argv,
        prog="python -m bmbx_phantoms.reserve",
        description=__doc__.split("\n")[0],
        measure=measure_case,
        summarize=summarize,
        describe=lambda rows: f"{len(rows)} candidates",
        default_step=2,
    )


if __name__ == "__main__":
    raise SystemExit(main())
