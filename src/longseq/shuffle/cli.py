"""The ``longseq shuffle`` commands (ShuffleMamba)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from longseq import hub
from longseq.cliutils import (
    App,
    check_folder,
    check_number,
    check_output_file,
    console,
    fail,
    require_module,
    write_text,
)

app = App(
    help="ShuffleMamba: layer-wise token shuffle for deep Vision Mamba training.",
)
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


@app.command("demo")
def shuffle_demo(
    model: str = typer.Option("shuffle-vim-shapes", help="shipped checkpoint name or directory"),
    images: int = typer.Option(500, min=1, help="freshly generated test images"),
    seed: int = typer.Option(1234, help="seed of the fresh images"),
    device: str = typer.Option(None),
    grid: Path = typer.Option(
        None, help="also write a grid of predictions here (.png, .jpg, .pdf or .svg)"
    ),
) -> None:
    """Classify freshly generated shape images with the shipped Vim and print accuracy."""
    from longseq.data.shapes import CLASSES, ShapesDataset
    from longseq.shuffle.train import predict
    from longseq.utils import default_device

    check_output_file(grid, "--grid", GRID_SUFFIXES)
    if grid is not None:
        require_module("matplotlib", "--grid")
    try:
        dev = default_device(device)
        net, info = hub.load(model, dev)
    except (hub.CheckpointError, ValueError) as e:
        fail(str(e))
    if info.config.get("architecture") not in ("vim", "vit"):
        fail(f"{model!r} is not an image classifier checkpoint")
    size = net.config.img_size
    x, y = ShapesDataset("test", images, size, seed=seed).tensors()
    pred = predict(net, x, dev)
    acc = float((pred == y).float().mean())
    table = Table(title=f"{model}: {100 * acc:.1f}% of {images} fresh images")
    for col in ("class", "images", "accuracy"):
        table.add_column(col)
    for k, name in enumerate(CLASSES):
        mask = y == k
        table.add_row(
            name, str(int(mask.sum())), f"{100 * float((pred[mask] == k).float().mean()):.1f}%"
        )
    console.print(table)
    metrics = info.extra.get("metrics", {})
    if metrics:
        console.print(
            f"recorded at training: train {100 * metrics['train_acc']:.1f}%, "
            f"test {100 * metrics['test_acc']:.1f}% ({info.extra['training']['run']})"
        )
    if grid:
        from longseq.shuffle.plots import prediction_grid

        prediction_grid(x[:32], y[:32], pred[:32], CLASSES, grid)
        console.print(f"wrote {grid}")


def _check_resumable(state, net) -> None:
    """A training state left in --out (an interrupted run) must be of this same model."""
    import torch

    if not state.exists():
        return
    try:
        saved = torch.load(state, map_location="cpu", weights_only=False)["model"]
    except (RuntimeError, KeyError, TypeError, EOFError, OSError) as e:
        fail(f"--out holds {state}, which cannot be read ({type(e).__name__}); delete it")
    try:
        net.load_state_dict(saved)
    except RuntimeError:
        fail(
            f"--out holds {state}, the training state of another model (its weights do not "
            "fit this one); give another --out, or the --arch/--depth/--dim/--patch it was "
            "trained with to resume it"
        )


@app.command("train")
def shuffle_train(
    out: Path = typer.Option(..., help="directory for the checkpoint and metrics"),
    arch: str = typer.Option("vim", help="vim | vit"),
    depth: int = typer.Option(12, min=1),
    dim: int = typer.Option(64, min=8),
    patch: int = typer.Option(8, min=1),
    p_max: float = typer.Option(0.5, help="shuffle probability of the deepest layer"),
    schedule: str = typer.Option("linear", help="linear | constant"),
    epochs: int = typer.Option(5, min=1),
    n_train: int = typer.Option(1000, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Train a (small) Vim or ViT on the shapes dataset, with or without the shuffle."""
    import json as _json

    import torch

    from longseq.data.shapes import CLASSES
    from longseq.shuffle import SCHEDULES
    from longseq.shuffle.train import TrainConfig, build_classifier, train_classifier
    from longseq.utils import default_device

    if arch not in ("vim", "vit"):
        fail(f"--arch must be vim or vit, got {arch!r}")
    if schedule not in SCHEDULES:
        fail(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= p_max <= 1:
        fail(f"--p-max must be in [0, 1], got {p_max}")
    check_number(lr, "--lr", 0, low_open=True)
    check_folder(out, "--out")
    try:
        dev = default_device(device)
        torch.manual_seed(seed)
        net = build_classifier(arch, depth, dim, patch, p_max, schedule)
    except ValueError as e:
        fail(str(e))
    _check_resumable(out / "state.pt", net)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out: cannot create {out} ({e.strerror or e})")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, n_train=n_train, seed=seed)
    console.print(
        f"training {arch} ({net.num_parameters() / 1e6:.2f}M params) on {dev}, "
        f"shuffle p_max={p_max} {schedule}"
    )
    try:
        res = train_classifier(net, cfg, dev, out / "metrics.jsonl", out / "state.pt")
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the last finished epoch is kept in {out / 'state.pt'}; rerun the "
            "same command to resume (it ends with the weights of an uninterrupted run)",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    hub.save_pretrained(
        net,
        out,
        arch,
        {"classes": list(CLASSES), "metrics": res, "training": {"run": out.name, **cfg.to_dict()}},
    )
    write_text(out / "result.json", _json.dumps(res, indent=2), "--out")
    console.print(
        f"train {100 * res['train_acc']:.1f}%  test {100 * res['test_acc']:.1f}%  "
        f"gap {100 * res['gap']:.1f}  -> {out}"
    )
