"""Pictures for the shuffle experiments."""

from __future__ import annotations

import math
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


METHOD_STYLE = {  # colour, marker
    "none": ("#7f7f7f", "o"),
    "drop-path": ("#1f77b4", "s"),
    "linear": ("#d62728", "^"),
    "constant": ("#2ca02c", "v"),
}


def _half(x: float) -> float:
    return 0.0 if math.isnan(x) else 100 * x


def depth_figure(summary: dict):
    """Test accuracy and train-test gap against depth, one line per method, each point
    the mean over seeds with its 95% interval (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = summary["config"]["depths"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    methods = [m for m in METHOD_STYLE if any(r["method"] == m for r in summary["rows"])]
    for k, method in enumerate(methods):
        rows = sorted(
            (r for r in summary["rows"] if r["method"] == method), key=lambda r: r["depth"]
        )
        colour, marker = METHOD_STYLE[method]
        label = method + (f" (p {rows[0]['p']:g})" if method in ("linear", "constant") else "")
        # spread the methods a little along x so that their intervals do not overlap
        xs = [depths.index(r["depth"]) + 0.08 * (k - (len(methods) - 1) / 2) for r in rows]
        for ax, metric in zip(axes, ("test_acc", "gap"), strict=True):
            mean = [100 * r[metric]["mean"] for r in rows]
            err = [  # no interval (one seed so far): no bar
                [_half(r[metric]["mean"] - r[metric]["low"]) for r in rows],
                [_half(r[metric]["high"] - r[metric]["mean"]) for r in rows],
            ]
            ax.errorbar(xs, mean, yerr=err, color=colour, marker=marker, capsize=3, label=label)
    for ax, title in zip(axes, ("test accuracy (%)", "train - test gap (points)"), strict=True):
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("depth (layers)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n = len(summary["config"]["seeds"])
    fig.suptitle(
        f"Vim on shapes: mean over {n} seeds, 95% intervals (drop-path under both shuffles)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def depth_plot(summary: dict, path: Path) -> Path:
    """Write :func:`depth_figure` to ``path``."""
    import matplotlib.pyplot as plt

    fig = depth_figure(summary)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
