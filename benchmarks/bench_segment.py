"""Time ``segment_pelvis`` on a phantom CT of at least 512x512x300 and report peak memory.

Run::

    python benchmarks/bench_segment.py [--workdir DIR]

Goal: under 20 s on 2 cores and under 3 GB peak memory. The CT is built once (cached in
``--workdir``) and segmented in a fresh subprocess, whose peak resident memory
(``ru_maxrss``, interpreter and imports included) is reported with the time of each step.
Next to wall-clock seconds the CPU seconds of the process are shown: on a shared machine
the wall clock also counts other people's work, the CPU time does not (segmentation is
mostly single-threaded, so unloaded it is close to the wall clock).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIN_SHAPE = (300, 512, 512)
PHANTOM_GRID = {"pixel_spacing_mm": 0.7, "slice_spacing_mm": 0.8}


def build(workdir: Path) -> Path:
    """The prone phantom as NIfTI (cached)."""
    path = workdir / "phantom_0.7x0.8.nii.gz"
    if path.exists():
        return path
    from bmbx_phantoms import make_phantom
    from bmbx_plan.io.export import write_volume

    phantom = make_phantom(seed=0, position="HFP", **PHANTOM_GRID)
    if any(n < m for n, m in zip(phantom.ct.shape, MIN_SHAPE, strict=True)):
        raise RuntimeError(f"phantom grid {phantom.ct.shape} is smaller than {MIN_SHAPE}")
    write_volume(phantom.ct, path)
    return path


def run(path: Path) -> dict[str, object]:
    """Segment in this process; time each step."""
    from bmbx_plan import load_ct, segment_pelvis

    ct = load_ct(path)
    steps: list[tuple[str, float, float]] = []

    def mark(name: str) -> None:
        steps.append((name, time.perf_counter(), time.process_time()))

    start, start_cpu = time.perf_counter(), time.process_time()
    segment_pelvis(ct, progress=mark)
    end, end_cpu = time.perf_counter(), time.process_time()
    marks = [*steps, ("end", end, end_cpu)]
    per_step = {
        name: (marks[n + 1][1] - wall, marks[n + 1][2] - cpu)
        for n, (name, wall, cpu) in enumerate(steps)
    }
    return {
        "shape": list(ct.shape),
        "seconds": end - start,
        "cpu_seconds": end_cpu - start_cpu,
        "steps": per_step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run)))
        return
    if args.build:
        print(build(args.workdir))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # built in a child: ru_maxrss survives fork+exec, so the parent must stay small
        # (a phantom built here put its own 4.4 GB into the segmentation's peak)
        build_command = [sys.executable, __file__, "--build", "--workdir", str(workdir)]
        built = subprocess.run(build_command, capture_output=True, text=True, check=True)
        path = Path(built.stdout.strip())
        out = subprocess.run(
            [sys.executable, __file__, "--run", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        print(f"segment_pelvis on {tuple(result['shape'])} voxels (k, j, i)")
        print(f"{'step':<36} {'seconds':>8} {'cpu s':>8}")
        for name, (seconds, cpu) in result["steps"].items():
            print(f"{name:<36} {seconds:8.2f} {cpu:8.2f}")
        print(
            f"{'total':<36} {result['seconds']:8.2f} {result['cpu_seconds']:8.2f}   (goal < 20 s)"
        )
        print(f"{'peak RSS MiB':<36} {result['peak_rss_mib']:8.0f}   (goal < 3072)")


if __name__ == "__main__":
    main()
