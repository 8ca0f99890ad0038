"""Pictures of traced flow: arrows over the frame, and the KL map of one point."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def flow_figure(
    frame0: np.ndarray,
    frame1: np.ndarray,
    points: np.ndarray,
    estimates: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
    kl_map: np.ndarray | None = None,
) -> Path:
    """One panel per method with arrows from ``points`` (N, 2) to each estimate
    ``name -> (targets (N, 2), occluded (N,))`` over ``frame0``; occluded points are
    drawn as crosses. ``truth`` adds a ground-truth panel and each method's mean
    end-point error over the points visible in the truth; ``kl_map`` (H, W) adds a panel
    with the KL response of the first point over ``frame1``. A legend names the marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ([("ground truth", truth)] if truth is not None else []) + list(estimates.items())
    n = len(panels) + (kl_map is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for i, (ax, (name, (tg, occ))) in enumerate(zip(axes[0], panels, strict=False)):
        ax.imshow(frame0, extent=(0, frame0.shape[1], frame0.shape[0], 0))
        vis = ~np.asarray(occ, dtype=bool)
        d = tg - points
        ax.quiver(
            points[vis, 0], points[vis, 1], d[vis, 0], d[vis, 1],
            angles="xy", scale_units="xy", scale=1, color="yellow", width=0.008,
            label="motion to frame 1",
        )  # fmt: skip
        ax.scatter(
            points[~vis, 0], points[~vis, 1], marker="x", color="red", s=18, label="occluded"
        )
        title = name
        if truth is not None and i > 0:
            seen = ~np.asarray(truth[1], dtype=bool)
            err = np.linalg.norm(np.asarray(tg)[seen] - np.asarray(truth[0])[seen], axis=1)
            title += f"\nEPE {err.mean():.2f} px ({int(seen.sum())} visible points)"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if kl_map is not None:
        ax = axes[0, -1]
        ax.imshow(frame1, extent=(0, frame1.shape[1], frame1.shape[0], 0))
        ax.imshow(kl_map, alpha=0.6, cmap="magma", extent=(0, frame1.shape[1], frame1.shape[0], 0))
        ax.scatter([points[0, 0]], [points[0, 1]], marker="o", facecolors="none", color="cyan")
        ax.set_title("KL map of point 0 (frame 1)", fontsize=9)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
