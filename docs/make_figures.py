"""Render the README pictures of a prone phantom (needs matplotlib: ``pip install -e .[dev]``).

Run from the repository root: ``python docs/make_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from bmbx_phantoms import TRUTH_LABELS, make_phantom

OUT = Path(__file__).parent / "images"
WINDOW = {"vmin": -250, "vmax": 1000}  # a bone-and-soft-tissue window, HU


def _save(fig: plt.Figure, name: str) -> None:
    fig.savefig(OUT / name, dpi=80, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed=1, position="HFP", pixel_spacing_mm=1.0, slice_spacing_mm=1.5)
    ct, labels = phantom.ct, phantom.labels
    # The scene grid is LPS-aligned: k -> S, j -> P, i -> L. A prone scan is shown as the
    # CT console shows it (the HFP storage order): the back up, the table below, the
    # patient's left on the image left (viewed from the feet).
    k = int(np.rint(ct.lps_to_index([phantom.landmark("psis_right")])[0][0]))
    axial = ct.array[k][::-1, ::-1]
    spacing = ct.spacing_mm
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(axial, cmap="gray", **WINDOW, aspect=spacing[1] / spacing[2])
    ax.set_axis_off()
    _save(fig, "phantom_axial.png")

    names = ["air", *TRUTH_LABELS]
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, len(names)))
    colours[0] = (0, 0, 0, 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(
        labels.array[k][::-1, ::-1],
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(names) - 0.5,
        interpolation="nearest",
        aspect=spacing[1] / spacing[2],
    )
    ax.set_axis_off()
    _save(fig, "phantom_labels.png")

    # Coronal plane halfway between PSIS and ASIS: both iliac wings, sacrum and the SI joints.
    middle = 0.5 * (phantom.landmark("psis_right") + phantom.landmark("asis_right"))
    j = int(np.rint(ct.lps_to_index([middle])[0][1]))
    coronal = ct.array[::-1, j, :]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(coronal, cmap="gray", **WINDOW, aspect=spacing[0] / spacing[2])
    ax.set_axis_off()
    _save(fig, "phantom_coronal.png")
    _plan_figure(phantom)


def _plan_figure(phantom: object) -> None:
    """The planned paths of both sides on the axial slice of the right skin entry."""
    from bmbx_plan import plan_trajectory, segment_pelvis

    ct = phantom.ct  # type: ignore[attr-defined]
    plans = plan_trajectory(segment_pelvis(ct), side="both")
    right = plans.plan("right")
    if right.trajectory is None:
        return
    k = int(np.rint(ct.lps_to_index([right.trajectory.skin_entry_lps_mm])[0][0]))
    shape = ct.shape
    spacing = ct.spacing_mm
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(ct.array[k][::-1, ::-1], cmap="gray", **WINDOW, aspect=spacing[1] / spacing[2])

    def pixels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = ct.lps_to_index(points)
        return shape[2] - 1 - index[:, 2], shape[1] - 1 - index[:, 1]

    for plan in plans.plans:
        t = plan.trajectory
        if t is None:
            continue
        path = np.stack([t.skin_entry_lps_mm, t.cortex_entry_lps_mm])
        core = np.stack([t.core_start_lps_mm, t.core_end_lps_mm])
        ax.plot(*pixels(path), color="yellow", linewidth=2)
        ax.plot(
            *pixels(np.stack([t.cortex_entry_lps_mm, t.core_start_lps_mm])),
            color="orange",
            linewidth=2,
        )
        ax.plot(*pixels(core), color="lime", linewidth=3)
        m = plan.metrics
        x, y = pixels(t.skin_entry_lps_mm[None])
        ax.annotate(
            f"{plan.side.value}: {m.axial_angle_deg:.0f} deg lateral, {m.total_depth_mm:.0f} mm",
            (x[0], y[0]),
            xytext=(-6 if plan.side.value == "left" else 6, 10),
            textcoords="offset points",
            color="white",
            fontsize=8,
            ha="right" if plan.side.value == "left" else "left",
        )
    ax.set_axis_off()
    _save(fig, "plan_axial.png")


if __name__ == "__main__":
    main()
