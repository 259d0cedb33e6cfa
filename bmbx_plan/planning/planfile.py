"""Write plans: ``plan.json`` (or ``check.json``), 3D Slicer line markups and a summary
page, all or nothing."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from bmbx_plan.io.outdir import staged_output
from bmbx_plan.planning.results import Plan, PlanSet

__all__ = ["markups_json", "write_plans"]

_SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)


def markups_json(plan: Plan) -> dict[str, Any]:
    """A 3D Slicer line markup from the skin entry to the core end, with the cortex entry
    and the core start as extra control points (LPS)."""
    if plan.trajectory is None:
        raise ValueError(f"the {plan.side.value} plan has no trajectory")
    t = plan.trajectory
    points = [
        ("skin_entry", t.skin_entry_lps_mm),
        ("core_end", t.core_end_lps_mm),
    ]
    return {
        "@schema": _SLICER_MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Line",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "controlPoints": [
                    {
                        "id": str(n + 1),
                        "label": f"{plan.side.value}_{name}",
                        "position": [round(float(v), 3) for v in point],
                        "positionStatus": "defined",
                    }
                    for n, (name, point) in enumerate(points)
                ],
                "measurements": [
                    {
                        "name": "length",
                        "enabled": True,
                        "value": round(plan.metrics.total_depth_mm, 2) if plan.metrics else 0.0,
                        "units": "mm",
                    }
                ],
            }
        ],
    }


def _summary_html(plans: PlanSet, title: str) -> str:
    rows = []
    for plan in plans.plans:
        rows.append(f"<h2>{plan.side.value.capitalize()} ilium: {plan.status}</h2>")
        rows.extend(f"<p>{html.escape(r)}</p>" for r in plan.reasons)
        rows.append(
            "<table><tr><th>constraint</th><th>kind</th><th>passed</th><th>value</th>"
            "<th>limit</th><th>unit</th></tr>"
        )
        for c in plan.constraints:
            value = "-" if c.value is None else f"{c.value:.2f}"
            limit = "-" if c.limit is None else f"{c.limit:.2f}"
            mark = "yes" if c.passed else "<b>NO</b>"
            rows.append(
                f"<tr><td title='{html.escape(c.message)}'>{c.name}</td><td>{c.kind}</td>"
                f"<td>{mark}</td><td>{value}</td><td>{limit}</td><td>{c.unit}</td></tr>"
            )
        rows.append("</table>")
    body = "\n".join(rows)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<p><i>Research and pre-planning software, not a medical device.</i></p>"
        f"{body}</body></html>\n"
    )


def write_plans(
    plans: PlanSet,
    out_dir: str | Path,
    *,
    json_name: str = "plan.json",
    report: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``json_name``, ``trajectory_<side>.mrk.json`` for each side with a
    trajectory and (with ``report``) ``report.html``; all or nothing.

    Returns
    -------
    dict of str to Path
        What was written, by kind.
    """
    target = Path(out_dir)
    written: dict[str, Path] = {}
    with staged_output(target, overwrite=overwrite) as stage:
        (stage / json_name).write_text(
            json.dumps(plans.to_json(), indent=2, allow_nan=False) + "\n"
        )
        written["plan"] = target / json_name
        for plan in plans.plans:
            if plan.trajectory is None:
                continue
            name = f"trajectory_{plan.side.value}.mrk.json"
            (stage / name).write_text(json.dumps(markups_json(plan), indent=2) + "\n")
            written[f"markups_{plan.side.value}"] = target / name
        if report:
            title = "bmbx-plan " + ("check" if json_name.startswith("check") else "plan")
            (stage / "report.html").write_text(_summary_html(plans, title))
            written["report"] = target / "report.html"
    return written
