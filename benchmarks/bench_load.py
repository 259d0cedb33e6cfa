"""Time ``bmbx_plan.load_ct`` against plain SimpleITK and naive pydicom on a large series.

Builds (or reuses, in ``--workdir``) a prone phantom CT series of at least 512x512x300,
then times each method in its own subprocess (best of
``--repeats`` runs, page cache warm after the first) and reports the peak resident memory
of that subprocess (``ru_maxrss``, which includes the interpreter and imports).

Run::

    python benchmarks/bench_load.py [--workdir DIR] [--repeats 5] [--compress rle]

Goal: ``load_ct`` within 1.2x of SimpleITK's ImageSeriesReader.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MIN_SHAPE = (300, 512, 512)
# A default phantom at 0.7 mm pixels and 0.8 mm slices covers at least 512x512x300.
PHANTOM_GRID = {"pixel_spacing_mm": 0.7, "slice_spacing_mm": 0.8}


def build_series(folder: Path, *, compress: str | None) -> Path:
    """Write a prone phantom series once; reuse it when it is already complete."""
    series = folder / f"phantom_{compress or 'raw'}_0.7x0.8"
    done = series / "COMPLETE"
    if done.exists():
        return series
    from bmbx_phantoms import make_phantom
    from bmbx_phantoms.dicom_writer import write_ct_series

    phantom = make_phantom(seed=0, position="HFP", **PHANTOM_GRID)
    if any(n < m for n, m in zip(phantom.ct.shape, MIN_SHAPE, strict=True)):
        raise RuntimeError(f"phantom grid {phantom.ct.shape} is smaller than {MIN_SHAPE}")
    write_ct_series(phantom.ct, series, patient_position="HFP", compress=compress)
    done.write_text("ok")
    return series


def _load_ct(folder: Path) -> Any:
    from bmbx_plan import load_ct

    return load_ct(folder).array


def _simpleitk(folder: Path) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def _pydicom_naive(folder: Path) -> Any:
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    return np.stack(
        [
            ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in slices
        ]
    )


METHODS: dict[str, Callable[[Path], Any]] = {
    "load_ct": _load_ct,
    "SimpleITK ImageSeriesReader": _simpleitk,
    "pydicom naive": _pydicom_naive,
}


def run_one(method: str, folder: Path, repeats: int) -> dict[str, Any]:
    """Time one method in this process (called in a child process)."""
    func = METHODS[method]
    times = []
    shape: tuple[int, ...] = ()
    for _ in range(repeats):
        start = time.perf_counter()
        array = func(folder)
        times.append(time.perf_counter() - start)
        shape = tuple(array.shape)
        del array
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "best_s": min(times),
        "median_s": float(np.median(times)),
        "peak_mib": peak_mib,
        "shape": shape,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="cache for the series")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compress", choices=["rle", "jpeg2000"], default=None)
    parser.add_argument("--run", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.series, args.repeats)))
        return
    if args.build:
        print(build_series(args.workdir, compress=args.compress))
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # built in a child: ru_maxrss survives fork+exec, so the parent must stay small
        build = [sys.executable, __file__, "--build", "--workdir", str(workdir)]
        build += ["--compress", args.compress] if args.compress else []
        series = Path(
            subprocess.run(build, capture_output=True, text=True, check=True).stdout.strip()
        )
        print(f"series: {series} (ready in {time.perf_counter() - start:.1f} s)")
        results = {}
        for method in METHODS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    method,
                    "--series",
                    str(series),
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[method] = json.loads(out.stdout)
        reference = results["SimpleITK ImageSeriesReader"]["best_s"]
        print(
            f"\n{'method':<30} {'best s':>8} {'median s':>9} {'vs SimpleITK':>13} "
            f"{'peak RSS MiB':>13}  shape"
        )
        for method, r in results.items():
            print(
                f"{method:<30} {r['best_s']:8.3f} {r['median_s']:9.3f} "
                f"{r['best_s'] / reference:12.2f}x {r['peak_mib']:13.0f}  {tuple(r['shape'])}"
            )


if __name__ == "__main__":
    main()
