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
    classes = info.extra.get("classes", list(CLASSES))
    if list(classes) != list(CLASSES):
        fail(
            f"{model!r} was trained on other classes ({', '.join(classes)}); the demo "
            "classifies shape images"
        )
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
    data: Path = typer.Option(
        None,
        help="a folder with one subfolder of images per class (default: the shapes dataset)",
    ),
    model: Path = typer.Option(
        None,
        help="a transformers image classifier folder (save_pretrained layout, e.g. a ViT) "
        "to train with the shuffle patched in, instead of --arch",
    ),
    arch: str = typer.Option("vim", help="vim | vit"),
    depth: int = typer.Option(12, min=1),
    dim: int = typer.Option(64, min=8),
    patch: int = typer.Option(8, min=1),
    img_size: int = typer.Option(32, min=1, help="image size of --arch models"),
    p_max: float = typer.Option(0.5, help="shuffle probability of the deepest layer"),
    schedule: str = typer.Option("linear", help="linear | constant | uniform"),
    epochs: int = typer.Option(5, min=1),
    n_train: int = typer.Option(1000, min=1, help="shapes training images (not with --data)"),
    val_fraction: float = typer.Option(
        0.2, help="share of each class of --data held out for validation (fixed split)"
    ),
    flips: bool = typer.Option(
        None,
        "--flips/--no-flips",
        help="random horizontal and vertical flips (default: on for the shapes, off for --data)",
    ),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Train a (small) Vim or ViT, or your transformers image classifier, with or without
    the shuffle, on the shapes dataset or on your own images (--data)."""
    import json as _json

    import torch

    from longseq.data.shapes import CLASSES
    from longseq.shuffle import SCHEDULES
    from longseq.shuffle import patch as patch_shuffle
    from longseq.shuffle.train import (
        TrainConfig,
        build_classifier,
        load_transformers_classifier,
        train_classifier,
    )
    from longseq.utils import default_device, progress_bar

    if arch not in ("vim", "vit"):
        fail(f"--arch must be vim or vit, got {arch!r}")
    if schedule not in SCHEDULES:
        fail(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= p_max <= 1:
        fail(f"--p-max must be in [0, 1], got {p_max}")
    check_number(lr, "--lr", 0, low_open=True)
    if not 0 < val_fraction < 1:
        fail(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if model is None and img_size % patch:
        fail(f"--img-size {img_size} must be a multiple of --patch {patch}")
    check_folder(out, "--out")
    classes, n_files = list(CLASSES), 0
    if data is not None:
        from longseq.data.folder import load_image_folder, scan_image_folder

        try:  # the layout now, before any model is built
            classes, files = scan_image_folder(data)
        except ValueError as e:
            fail(f"--data: {e}")
        n_files = sum(len(f) for f in files)
    try:
        dev = default_device(device)
        torch.manual_seed(seed)
        if model is not None:
            net, img_size = load_transformers_classifier(model, classes)
            shuffle = patch_shuffle(net.model, p_max=p_max, schedule=schedule)
            name = type(net.model).__name__
        else:
            net = build_classifier(
                arch,
                depth,
                dim,
                patch,
                p_max,
                schedule,
                img_size=img_size,
                num_classes=len(classes),
            )
            shuffle, name = net.blocks, arch
    except ValueError as e:
        fail(str(e))
    splits = None
    if data is not None:
        try:
            with progress_bar("reading images", n_files) as advance:
                splits = load_image_folder(data, img_size, val_fraction, seed=0, progress=advance)
        except ValueError as e:
            fail(f"--data: {e}")
    _check_resumable(out / "state.pt", net)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out: cannot create {out} ({e.strerror or e})")
    if flips is None:
        flips = data is None
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        n_train=n_train,
        seed=seed,
        img_size=img_size,
        flips=flips,
    )
    where = "the shapes"
    if splits is not None:
        n_tr, n_val = len(splits["train"][1]), len(splits["val"][1])
        where = f"{data} ({len(classes)} classes, {n_tr} train, {n_val} validation images)"
    console.print(
        f"training {name} ({net.num_parameters() / 1e6:.2f}M params, "
        f"{len(shuffle.probs)} blocks) on {where}, {dev}, shuffle p_max={p_max} {schedule}"
    )
    try:
        res = train_classifier(net, cfg, dev, out / "metrics.jsonl", out / "state.pt", data=splits)
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the last finished epoch is kept in {out / 'state.pt'}; rerun the "
            "same command to resume (it ends with the weights of an uninterrupted run)",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    training = {"run": out.name, **cfg.to_dict()}
    if data is not None:
        training.update(data=str(data), val_fraction=val_fraction, split_seed=0)
        for key in ("n_train", "n_val", "n_test"):
            training.pop(key)
    if model is not None:
        training.update(model=str(model), shuffle_p_max=p_max, shuffle_schedule=schedule)
        try:
            net.model.save_pretrained(out)
            pre = model / "preprocessor_config.json"
            if pre.is_file():
                write_text(out / pre.name, pre.read_text(), "--out")
        except OSError as e:
            fail(f"--out: cannot write the model to {out} ({e.strerror or e})")
    else:
        extra = {"classes": classes, "metrics": res, "training": training}
        hub.save_pretrained(net, out, arch, extra)
    result = {**res, "classes": classes, "training": training}
    write_text(out / "result.json", _json.dumps(result, indent=2), "--out")
    held_out = (
        f"validation {100 * res['val_acc']:.1f}%"
        if res["test_acc"] is None
        else f"test {100 * res['test_acc']:.1f}%  gap {100 * res['gap']:.1f}"
    )
    console.print(f"train {100 * res['train_acc']:.1f}%  {held_out}  -> {out}")


@app.command("predict")
def shuffle_predict(
    images: list[Path] = typer.Argument(..., help="image files, or folders searched for them"),
    model: str = typer.Option(
        ...,
        help="a folder written by shuffle train (--arch or --model), or a shipped checkpoint",
    ),
    device: str = typer.Option(None),
) -> None:
    """Classify image files with a trained classifier; the class names come from the
    checkpoint."""
    import torch

    from longseq.data.folder import image_files, read_image
    from longseq.shuffle.train import load_classifier, probabilities
    from longseq.utils import default_device

    try:
        files = image_files(images)
        dev = default_device(device)
        net, classes, size = load_classifier(model, dev)
        x = torch.stack([read_image(f, size) for f in files])
    except (hub.CheckpointError, ValueError) as e:
        fail(str(e))
    probs = probabilities(net, x, dev)
    table = Table(title=f"{model}: {len(files)} images")
    for col in ("image", "class", "probability"):
        table.add_column(col, overflow="fold")
    for f, p in zip(files, probs, strict=True):
        k = int(p.argmax())
        table.add_row(str(f), classes[k], f"{float(p[k]):.3f}")
    console.print(table)
