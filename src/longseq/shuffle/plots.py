"""Pictures for the shuffle experiments."""

from __future__ import annotations

from pathlib import Path

import torch


def prediction_figure(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes):
    """A matplotlib figure: each image titled with its prediction, green when right; when
    wrong, in red, with the true class below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        pred, true = classes[int(preds[i])], classes[int(labels[i])]
        if pred == true:
            ax.set_title(pred, fontsize=7, color="green")
        else:
            ax.set_title(f"{pred}\n(true: {true})", fontsize=7, color="red")
    fig.suptitle("prediction: green right, red wrong (true class below)", fontsize=8)
    fig.tight_layout()
    return fig


def prediction_grid(
    images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes, path: Path
) -> Path:
    """Write :func:`prediction_figure` to ``path`` (any format matplotlib writes)."""
    import matplotlib.pyplot as plt

    fig = prediction_figure(images, labels, preds, classes)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
