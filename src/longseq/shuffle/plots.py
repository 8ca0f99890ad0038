"""Pictures for the shuffle experiments."""

from __future__ import annotations

from pathlib import Path

import torch


def prediction_grid(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes, path: Path
) -> Path:
    """A grid of images titled with prediction (green when right, red when wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        ok = int(preds[i]) == int(labels[i])
        ax.set_title(classes[int(preds[i])], fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
