"""The ``bmbx-plan`` command line (also ``python -m bmbx_plan``).

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 1 an
unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bmbx_plan import __version__
from bmbx_plan.io import InputError, load_ct
from bmbx_plan.io.outdir import OutputExistsError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NO_SAFE_TRAJECTORY = 0, 1, 2, 3


class _Reporter:
    """Progress on stderr (a rich spinner on a terminal, plain lines otherwise)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet

    @contextmanager
    def task(self, title: str) -> Iterator[Callable[[str], None]]:
        """Context for one long step; yields a callback taking the current sub-step."""
        if self.quiet:
            yield lambda _msg: None
            return
        start = time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console

            console = Console(stderr=True)
            with console.status(title) as status:
                yield lambda msg: status.update(f"{title}: {msg}")
        else:
            print(f"{title} ...", file=sys.stderr)
            yield lambda msg: print(f"  {msg}", file=sys.stderr)
        print(f"{title}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)


def _cmd_phantom(args: argparse.Namespace, out: _Reporter) -> int:
    from bmbx_phantoms import PRESETS, make_phantom, write_phantom
    from bmbx_phantoms.parameters import resolve_parameters

    if args.list_presets:
        for name, values in PRESETS.items():
            print(f"{name:18s} {json.dumps(values) if values else '(defaults)'}")
        return EXIT_OK
    if args.out is None:
        raise _UsageError("phantom: --out DIR is required")
    if args.anatomy is not None and not Path(args.anatomy).is_dir():
        raise InputError(
            args.anatomy,
            "--anatomy must be a folder with left_hip.vtk, right_hip.vtk and sacrum.vtk",
        )
    overrides: dict[str, Any] = {}
    if args.pixel_spacing_mm is not None:
        overrides["pixel_spacing_mm"] = args.pixel_spacing_mm
    if args.slice_spacing_mm is not None:
        overrides["slice_spacing_mm"] = args.slice_spacing_mm
    if args.slice_thickness_mm is not None:
        overrides["slice_thickness_mm"] = args.slice_thickness_mm
    try:  # check the preset and parameters before any work
        resolve_parameters(args.preset, seed=args.seed, **overrides)
    except ValueError as exc:
        raise _UsageError(f"phantom: {exc}") from None
    with out.task(f"Building phantom (seed {args.seed}, {args.position}, {args.preset})") as step:
        phantom = make_phantom(
            seed=args.seed,
            position=args.position,
            preset=args.preset,
            anatomy=args.anatomy,
            progress=step,
            **overrides,
        )
        step("writing")
        written = write_phantom(
            phantom,
            args.out,
            dicom=not args.no_dicom,
            nifti=args.nifti,
            compress=args.compress,
            overwrite=args.overwrite,
        )
    ct = phantom.ct
    spacing = " x ".join(f"{s:.2f}" for s in ct.spacing_mm[::-1])
    print(
        f"phantom seed {args.seed} preset {args.preset} position {args.position}: "
        f"{ct.shape[2]}x{ct.shape[1]}x{ct.shape[0]} voxels, {spacing} mm"
    )
    for side in ("left", "right"):
        print(f"  skin to PSIS ({side}): {phantom.truth['skin_to_psis_mm'][side]:.1f} mm")
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return EXIT_OK


def _cmd_segment(args: argparse.Namespace, out: _Reporter) -> int:
    from bmbx_plan.anatomy import segment_pelvis, write_anatomy

    with out.task(f"Loading {args.input}"):
        ct = load_ct(args.input, series_uid=args.series)
    with out.task("Segmenting the pelvis") as step:
        anatomy = segment_pelvis(ct, masks=args.masks, progress=step)
        step("writing")
        written = write_anatomy(anatomy, args.out, overwrite=args.overwrite)
    for name in ("ilium_left", "ilium_right", "sacrum"):
        volume_ml = float(anatomy.mask(name).sum()) * ct.voxel_volume_mm3 / 1000.0
        print(f"  {name:12s} {volume_ml:7.0f} mL")
    for name in ("psis_left", "psis_right"):
        point = ", ".join(f"{v:.1f}" for v in anatomy.landmarks_lps_mm[name])
        print(f"  {name:12s} ({point}) LPS mm")
    for note in anatomy.notes:
        print(f"  note: {note}")
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace, out: _Reporter) -> int:
    with out.task(f"Loading {args.input}"):
        ct = load_ct(args.input, series_uid=args.series)
    info = ct.info
    bounds = ct.bounds_lps_mm()
    report = {
        "source": info.source,
        "series_instance_uid": info.series_instance_uid,
        "modality": info.modality,
        "patient_position": info.patient_position,
        "manufacturer": info.manufacturer,
        "size_voxels": list(ct.shape[::-1]),
        "spacing_mm": [round(float(s), 4) for s in ct.spacing_mm[::-1]],
        "slice_thickness_mm": info.slice_thickness_mm,
        "z_range_mm": [round(float(bounds[0, 2]), 1), round(float(bounds[1, 2]), 1)],
        "notes": list(info.notes),
    }
    print(json.dumps(report, indent=2))
    return EXIT_OK


def _point(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise _UsageError(f"{option} must be three numbers X,Y,Z (LPS mm), got {text!r}")
    return values


def _planning_parameters(args: argparse.Namespace) -> Any:
    from bmbx_plan.planning import Needle, PlanningParameters
    from bmbx_plan.planning.parameters import needle_named

    try:
        needle = needle_named(args.needle)
        if args.needle_length_mm is not None:
            needle = Needle(
                f"{needle.name} ({args.needle_length_mm:g} mm usable)",
                needle.outer_diameter_mm,
                args.needle_length_mm,
            )
        margins = {}
        if args.margin_mm is not None:
            margins = {name: args.margin_mm for name in ("vessels", "bowel", "bladder")}
        return PlanningParameters(
            needle=needle,
            core_length_mm=args.core_length_mm,
            min_core_length_mm=args.min_core_length_mm,
            in_plane_only=args.in_plane,
        ).with_overrides(margins_mm=margins)
    except ValueError as exc:
        raise _UsageError(f"{args.command}: {exc}") from None


def _segmented(args: argparse.Namespace, out: _Reporter) -> Any:
    from bmbx_plan.anatomy import segment_pelvis

    with out.task(f"Loading {args.input}"):
        ct = load_ct(args.input, series_uid=args.series)
    with out.task("Segmenting the pelvis") as step:
        return segment_pelvis(ct, masks=args.masks, progress=step)


def _print_plan(plan: Any) -> None:
    print(f"{plan.side.value}: {plan.status}")
    for reason in plan.reasons:
        print(f"  {reason}")
    if plan.trajectory is not None:
        for key, value in plan.trajectory.to_json().items():
            print(f"  {key:20s} {', '.join(f'{v:.1f}' for v in value)}")


def _cmd_plan(args: argparse.Namespace, out: _Reporter) -> int:
    from bmbx_plan.planning import plan_trajectory
    from bmbx_plan.planning.planfile import write_plans

    parameters = _planning_parameters(args)
    anatomy = _segmented(args, out)
    with out.task("Planning") as step:
        result = plan_trajectory(
            anatomy,
            side=args.side,
            parameters=parameters,
            cross_check=not args.no_cross_check,
            progress=step,
        )
        step("writing")
        written = write_plans(result, args.out, overwrite=args.overwrite)
    for plan in result.plans:
        _print_plan(plan)
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return EXIT_OK if result.feasible else EXIT_NO_SAFE_TRAJECTORY


def _cmd_check(args: argparse.Namespace, out: _Reporter) -> int:
    from bmbx_plan.planning import Planner, PlanSet
    from bmbx_plan.planning.planfile import write_plans

    entry = _point(args.entry, "--entry")
    target = _point(args.target, "--target")
    if entry == target:
        raise _UsageError("check: --entry and --target are the same point")
    parameters = _planning_parameters(args)
    anatomy = _segmented(args, out)
    with out.task("Checking"):
        plan = Planner(anatomy, parameters).check(args.side, entry, target, cross_check=True)
        result = PlanSet.of((plan,), parameters, anatomy)
        written = write_plans(result, args.out, json_name="check.json", overwrite=args.overwrite)
    _print_plan(plan)
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return EXIT_OK if plan.feasible else EXIT_NO_SAFE_TRAJECTORY


def _cmd_demo(args: argparse.Namespace, out: _Reporter) -> int:
    from bmbx_phantoms import make_phantom, write_phantom
    from bmbx_plan.anatomy import segment_pelvis
    from bmbx_plan.planning import plan_trajectory
    from bmbx_plan.planning.planfile import write_plans

    target = Path(args.out)
    with out.task("Building the demo phantom (seed 0, prone HFP)") as step:
        phantom = make_phantom(seed=0, position="HFP", progress=step)
        write_phantom(phantom, target / "phantom", overwrite=args.overwrite)
    with out.task("Loading its DICOM series"):
        ct = load_ct(target / "phantom" / "dicom")
    with out.task("Segmenting and planning both sides") as step:
        anatomy = segment_pelvis(ct, progress=step)
        result = plan_trajectory(anatomy, side="both", progress=step)
        written = write_plans(result, target / "plan", overwrite=args.overwrite)
    for plan in result.plans:
        _print_plan(plan)
    for key, path in written.items():
        print(f"  {key:12s} {path}")
    return EXIT_OK


class _UsageError(Exception):
    """Wrong command-line usage (exit 2 like argparse)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmbx-plan",
        description="Plan CT-guided bone marrow biopsies of the posterior iliac wing "
        "(research and pre-planning software, not a medical device).",
    )
    parser.add_argument("--version", action="version", version=f"bmbx-plan {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    # The same two options after the command name (``bmbx-plan phantom --quiet``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ph = sub.add_parser(
        "phantom", parents=[common], help="write a synthetic pelvic CT phantom with ground truth"
    )
    ph.add_argument("--out", type=Path, help="output folder (must be empty or new)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--position", default="HFP", choices=["HFP", "HFS", "FFP", "FFS"])
    ph.add_argument("--preset", default="average", help="body/bone preset (--list-presets)")
    ph.add_argument(
        "--anatomy", type=Path, help="folder with left_hip.vtk, right_hip.vtk, sacrum.vtk (LPS mm)"
    )
    ph.add_argument("--pixel-spacing-mm", type=float, help="in-plane voxel size (default 2.0)")
    ph.add_argument("--slice-spacing-mm", type=float, help="slice spacing (default 2.5)")
    ph.add_argument(
        "--slice-thickness-mm",
        type=float,
        help="each slice averages the scene over this thickness (default 0: thin slices)",
    )
    ph.add_argument("--nifti", action="store_true", help="also write ct.nii.gz")
    ph.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    ph.add_argument("--compress", choices=["rle", "jpeg2000"], help="lossless DICOM compression")
    ph.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    ph.add_argument("--list-presets", action="store_true", help="list presets and exit")
    ph.set_defaults(run=_cmd_phantom)

    seg = sub.add_parser(
        "segment", parents=[common], help="segment the pelvis: labels, landmarks, meshes"
    )
    seg.add_argument("input", type=Path, help="DICOM folder or file, NIfTI, NRRD or MHA")
    seg.add_argument("--out", type=Path, required=True, help="output folder (empty or new)")
    seg.add_argument("--series", help="SeriesInstanceUID to load from a folder with several")
    seg.add_argument(
        "--masks", type=Path, help="TotalSegmentator output (folder or multilabel file) to import"
    )
    seg.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    seg.set_defaults(run=_cmd_segment)

    info = sub.add_parser(
        "info", parents=[common], help="load a CT and print its geometry and series choice"
    )
    info.add_argument("input", type=Path, help="DICOM folder or file, NIfTI, NRRD or MHA")
    info.add_argument("--series", help="SeriesInstanceUID to load from a folder with several")
    info.set_defaults(run=_cmd_info)

    def planning_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("input", type=Path, help="DICOM folder or file, NIfTI, NRRD or MHA")
        command.add_argument("--out", type=Path, required=True, help="output folder")
        command.add_argument("--series", help="SeriesInstanceUID to load from a folder")
        command.add_argument("--needle", default="11G-100", help="11G-100, 11G-150 or 8G-100")
        command.add_argument("--needle-length-mm", type=float, help="usable needle length")
        command.add_argument("--core-length-mm", type=float, default=25.0)
        command.add_argument("--min-core-length-mm", type=float, default=20.0)
        command.add_argument(
            "--margin-mm", type=float, help="clearance to vessels, bowel and bladder (5)"
        )
        command.add_argument("--in-plane", action="store_true", help="axial-plane paths only")
        command.add_argument("--masks", type=Path, help="TotalSegmentator output to import")
        command.add_argument("--overwrite", action="store_true", help="replace files in --out")

    pl = sub.add_parser("plan", parents=[common], help="propose the safest biopsy trajectory")
    planning_options(pl)
    pl.add_argument("--side", default="both", choices=["left", "right", "both"])
    pl.add_argument("--no-cross-check", action="store_true", help="skip the independent check")
    pl.set_defaults(run=_cmd_plan)

    ck = sub.add_parser("check", parents=[common], help="check a given trajectory")
    planning_options(ck)
    ck.add_argument("--side", required=True, choices=["left", "right"])
    ck.add_argument("--entry", required=True, help="skin entry X,Y,Z (LPS mm)")
    ck.add_argument("--target", required=True, help="core end X,Y,Z (LPS mm)")
    ck.set_defaults(run=_cmd_check)

    dm = sub.add_parser("demo", parents=[common], help="phantom, plan of both sides, report")
    dm.add_argument("--out", type=Path, default=Path("out/demo"))
    dm.add_argument("--overwrite", action="store_true", help="replace files in --out")
    dm.set_defaults(run=_cmd_demo)
    return parser


def _joined_points(argv: list[str]) -> list[str]:
    """``--entry -12.5,40,3`` as ``--entry=-12.5,40,3``: argparse would take a value that
    starts with a minus sign for an option."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item in ("--entry", "--target"):
            value = next(items, None)
            out.append(item if value is None else f"{item}={value}")
        else:
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(_joined_points(list(sys.argv[1:] if argv is None else argv)))
    out = _Reporter(quiet=args.quiet)
    try:
        code: int = args.run(args, out)
        return code
    except (InputError, OutputExistsError, _UsageError) as exc:
        print(f"bmbx-plan: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("bmbx-plan: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"bmbx-plan: unexpected failure: {type(exc).__name__}: {exc} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
