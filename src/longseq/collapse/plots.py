"""Plots for the state-collapse toolkit (matplotlib, written to files)."""

from __future__ import annotations

from pathlib import Path

from longseq.collapse.diagnostics import StateTrace
from longseq.collapse.evaluate import LossCurve, PasskeyResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(curves: dict[str, LossCurve], path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, c in curves.items():
        mids = [(a + b) / 2 for a, b in zip(c.edges[:-1], c.edges[1:], strict=True)]
        ax.plot(mids, c.mean_nll, label=name)
    t = next(iter(curves.values())).train_length
    ax.axvline(t, color="grey", ls="--", lw=1)
    ax.text(t, ax.get_ylim()[1], " training length", va="top", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel("NLL (nats / token)")
    ax.set_title(title or "loss by position", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_passkey(result: PasskeyResult, path: str | Path, title: str = "") -> Path:
    return plot_passkey_grid({title or "passkey retrieval": result}, path)


def plot_passkey_grid(results: dict[str, PasskeyResult], path: str | Path, title: str = "") -> Path:
    """One length x depth accuracy heatmap per entry (e.g. per mitigation), side by side."""
    plt = _plt()
    first = next(iter(results.values()))
    width = 1.0 + 0.7 * len(first.lengths)
    fig, axes = plt.subplots(
        1, len(results), figsize=(width * len(results) + 0.8, 3.2), squeeze=False
    )
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        acc = [list(col) for col in zip(*result.accuracy, strict=True)]  # depth x length
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(result.lengths)), [str(n) for n in result.lengths], fontsize=7)
        ax.set_yticks(range(len(result.depths)), [f"{d:.2f}" for d in result.depths], fontsize=7)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10, y=1.06)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_state_trace(trace: StateTrace, path: str | Path, train_length: int | None = None) -> Path:
    plt = _plt()
    norm = trace.tensor("norm")  # (segments, layers, heads)
    decay = trace.tensor("decay")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for layer in range(norm.shape[1]):
        axes[0].plot(trace.positions, norm[:, layer].max(-1).values, label=f"layer {layer}")
        axes[1].plot(trace.positions, decay[:, layer].mean(-1), label=f"layer {layer}")
    axes[0].set_ylabel("largest head state norm")
    axes[1].set_ylabel("mean decay a_t")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("position (tokens)")
        if train_length:
            ax.axvline(train_length, color="grey", ls="--", lw=1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
