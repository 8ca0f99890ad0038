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
    if t:
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
    """Six panels versus position, one line per layer: largest head-state norm, cosine
    similarity with the previous reading (mean over heads), mean decay a_t, mean |B| and
    |C|, and the RMS of the conv state's x channels."""
    plt = _plt()
    panels = [
        ("largest head state norm", trace.tensor("norm").amax(-1)),
        ("cos(state, previous reading)", trace.tensor("cos_prev").mean(-1)),
        ("mean decay a_t", trace.tensor("decay").mean(-1)),
        ("mean |B|", trace.tensor("B_abs").mean(-1)),
        ("mean |C|", trace.tensor("C_abs").mean(-1)),
        ("conv state RMS (x channels)", trace.tensor("conv_rms")[..., 0]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (label, values) in zip(axes.flat, panels, strict=True):
        for layer in range(values.shape[1]):
            ax.plot(trace.positions, values[:, layer], label=f"layer {layer}")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_xlabel("position (tokens)")
        if train_length:
            ax.axvline(train_length, color="grey", ls="--", lw=1)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_state_histograms(trace: StateTrace, path: str | Path) -> Path:
    """One panel per layer: the histogram of all its state values at each chosen
    position (log counts)."""
    plt = _plt()
    hists = trace.histograms
    n_layers = len(hists[0]["counts"]) if hists else 1
    fig, axes = plt.subplots(1, n_layers, figsize=(3.2 * n_layers, 2.8), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        for h in hists:
            edges, counts = h["edges"][layer], h["counts"][layer]
            ax.stairs(counts, edges, label=f"t = {h['position']:,}")
        ax.set_yscale("log")
        ax.set_xlabel("state value")
        ax.set_title(f"layer {layer}", fontsize=9)
    axes[0][0].set_ylabel("count")
    if hists:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
