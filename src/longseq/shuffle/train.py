"""Training and evaluation of image classifiers (Vim, ViT, or a transformers image
classifier with the shuffle patched in) on the shapes dataset or a folder of images.

One loop for CPU, one GPU (bf16 autocast) and several GPUs: launched with
``torchrun --nproc_per_node=K``, each process trains on its shard of every batch
under DistributedDataParallel and rank 0 logs and saves.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from longseq.data.shapes import ShapesDataset, normalize
from longseq.utils import dist_info, load_training_state, progress_bar, save_training_state


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    n_train: int = 4000
    n_val: int = 1000
    n_test: int = 2000
    img_size: int = 32
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    flips: bool = True  # random horizontal/vertical flips (every class is flip-invariant)
    val_every: int = 5  # epochs between validation measurements; 0: after the last only

    def to_dict(self) -> dict:
        return asdict(self)


def build_classifier(
    arch: str,
    depth: int,
    dim: int,
    patch: int,
    p_max: float = 0.0,
    schedule: str = "linear",
    heads: int = 4,
    img_size: int = 32,
    drop_path: float = 0.0,
    cls_position: str = "middle",
    headdim: int = 16,
    chunk_size: int = 32,
    num_classes: int | None = None,
) -> torch.nn.Module:
    """The shapes-experiment models: a Vim (Mamba-2 mixers, headdim 16) or a same-size ViT.

    ``drop_path`` is the last block's stochastic-depth rate (linear over depth);
    ``cls_position`` ("middle" or "first"), ``headdim`` and ``chunk_size`` (the scan's
    block length, which changes speed, not the function) apply to the Vim (the ViT's
    class token is first). ``num_classes`` defaults to the shapes' 8.
    """
    from longseq.data.shapes import CLASSES
    from longseq.models.vim import Vim, VimConfig
    from longseq.models.vit import ViT, ViTConfig

    common = dict(
        img_size=img_size,
        patch_size=patch,
        dim=dim,
        depth=depth,
        num_classes=len(CLASSES) if num_classes is None else num_classes,
        shuffle_p_max=p_max,
        shuffle_schedule=schedule,
        drop_path=drop_path,
    )
    if arch == "vim":
        return Vim(
            VimConfig(headdim=headdim, chunk_size=chunk_size, cls_position=cls_position, **common)
        )
    if arch == "vit":
        return ViT(ViTConfig(heads=heads, **common))
    raise ValueError(f"arch must be 'vim' or 'vit', got {arch!r}")


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1]: uint8 ones (a folder of images, kept small in memory) / 255."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


def _random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right and/or up-down with probability 1/2 each."""
    h = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    v = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


@torch.no_grad()
def probabilities(model, images: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    """Class probabilities (n, classes), float32 on the CPU, of images (n, 3, H, W) in
    [0, 1] (or uint8), in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(as_float(images[i : i + batch].to(device)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(x).float().softmax(-1).cpu())
    return torch.cat(out)


def predict(model, images: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    """Predicted class of each image (n, 3, H, W) in [0, 1] (or uint8), in eval mode."""
    return probabilities(model, images, device, batch).argmax(-1)


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device) -> float:
    return float((predict(model, images, device) == labels).float().mean())


def draw_splits(cfg: TrainConfig, progress: bool = False) -> dict:
    """The shapes images of ``cfg``: {"train"|"val"|"test": (images, labels)}, drawn from
    data seed 0 whatever ``cfg.seed`` (every run sees the same images)."""
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    with progress_bar("drawing images", sum(sizes.values()), progress) as advance:
        return {
            split: ShapesDataset(split, n, cfg.img_size, seed=0).tensors(advance)
            for split, n in sizes.items()
        }


def train_classifier(
    model: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    log_path: Path | None = None,
    state_path: Path | None = None,
    progress: bool = True,
    data: dict | None = None,
) -> dict:
    """Train ``model`` on the shapes dataset; return final train/val/test accuracy, the
    wall time and the CPU time (of this process) of training and of the final evaluation.

    ``state_path`` (optional) keeps model, optimizer and epoch after every epoch;
    calling again with the same path resumes. ``data`` (optional) is
    :func:`draw_splits` of ``cfg``, drawn once and reused over runs, or other images in
    the same layout (:func:`longseq.data.folder.load_image_folder`); without a "test"
    split, ``test_acc`` and ``gap`` are None.
    """
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    if data is None:
        data = draw_splits(cfg, progress and rank == 0)
    xtr, ytr = data["train"]
    model.to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    gen = torch.Generator().manual_seed(cfg.seed)  # data order and flips
    start_epoch = load_training_state(state_path, model, opt, device, gen) if state_path else 0
    log = open(log_path, "a") if (log_path and rank == 0) else None  # noqa: SIM115
    val_acc = None  # of the final model, once measured
    t0, cpu0 = time.time(), time.process_time()
    with progress_bar("training", total, enabled=progress and rank == 0) as advance:
        advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            advance(0, description=f"epoch {epoch + 1}/{cfg.epochs}")
            net.train()
            order = torch.randperm(len(xtr), generator=gen)
            tot_loss, seen = 0.0, 0
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size][rank::world]
                x, y = normalize(as_float(xtr[idx].to(device))), ytr[idx].to(device)
                if cfg.flips:
                    x = _random_flips(x, gen)
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * steps_per_epoch + i)
                with torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"
                ):
                    loss = F.cross_entropy(net(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_loss += loss.item() * len(idx)
                seen += len(idx)
                advance()
            rec = {"epoch": epoch + 1, "loss": tot_loss / seen, "seconds": time.time() - t0}
            last = epoch + 1 == cfg.epochs
            if rank == 0 and cfg.val_every > 0 and ((epoch + 1) % cfg.val_every == 0 or last):
                rec["val_acc"] = val_acc = accuracy(model, *data["val"], device)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if state_path is not None and rank == 0:
                save_training_state(state_path, model, opt, epoch + 1, gen)
    if log:
        log.close()
    cpu1 = time.process_time()
    train_acc = accuracy(model, xtr, ytr, device)
    test_acc = accuracy(model, *data["test"], device) if "test" in data else None
    if val_acc is None or start_epoch == cfg.epochs:  # not measured after the last epoch
        val_acc = accuracy(model, *data["val"], device)
    return {
        "train_acc": train_acc,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "gap": None if test_acc is None else train_acc - test_acc,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": cpu1 - cpu0,
        "eval_cpu_seconds": time.process_time() - cpu1,
    }


class TransformersClassifier(torch.nn.Module):
    """A `transformers` image classifier behind this module's interface: images as
    :func:`normalize` leaves them in, logits out. The images are brought to the model's
    own ``image_mean`` / ``image_std`` first; ``self.model`` is the model itself, saved
    with its ``save_pretrained``."""

    def __init__(self, model: torch.nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = images * 0.25 + 0.5  # undo normalize(): back to [0, 1]
        return self.model(pixel_values=(unit - self.mean) / self.std).logits


def load_transformers_classifier(
    path: str | Path, classes: list[str] | None = None
) -> tuple[TransformersClassifier, int]:
    """(classifier, image size) for a `transformers` image-classification folder
    (``save_pretrained`` layout, e.g. a ``ViTForImageClassification``), its head sized to
    ``classes`` (a new head, randomly initialised, when the number differs; None keeps
    the model's own head and labels, ``model.config.id2label``).
    ``image_mean`` / ``image_std`` come from the folder's ``preprocessor_config.json``
    when it has one, else 0.5 (ViT's). Raises ValueError naming the problem."""
    from longseq.hub import quiet_transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {path} is not a transformers model folder (no config.json)")
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as e:
        raise ValueError("--model needs transformers: pip install 'longseq[hf]'") from e
    try:
        with quiet_transformers():
            head = {}
            if classes is not None:
                head = dict(
                    num_labels=len(classes),
                    id2label=dict(enumerate(classes)),
                    label2id={c: i for i, c in enumerate(classes)},
                    ignore_mismatched_sizes=True,
                )
            model = AutoModelForImageClassification.from_pretrained(
                path, local_files_only=True, **head
            )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot load a transformers image classifier from {path}: {first}"
        ) from None
    size = getattr(model.config, "image_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{path}: the model's config has no integer image_size ({size!r})")
    mean, std = [0.5] * 3, [0.5] * 3
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{pre} is not valid JSON ({e})") from None
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    return TransformersClassifier(model, mean, std), size


def load_classifier(
    name_or_path: str | Path, device: torch.device
) -> tuple[torch.nn.Module, list[str], int]:
    """(model in eval mode, class names, image size) for a checkpoint written by
    ``longseq shuffle train`` (or a shipped one, by name), or a `transformers` image
    classifier folder (what ``shuffle train --model`` writes). Raises ValueError or
    :class:`longseq.hub.CheckpointError` naming the problem."""
    from longseq import hub
    from longseq.data.shapes import CLASSES

    path = Path(name_or_path)
    if (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path / 'config.json'} is not valid JSON ({e})") from None
        if "architecture" not in cfg:  # not ours: a transformers model
            net, size = load_transformers_classifier(path)
            labels = net.model.config.id2label
            return net.to(device).eval(), [labels[i] for i in range(len(labels))], size
    net, info = hub.load(name_or_path, device)
    if info.config.get("architecture") not in ("vim", "vit"):
        raise ValueError(f"{str(name_or_path)!r} is not an image classifier checkpoint")
    return net, list(info.extra.get("classes", CLASSES)), net.config.img_size
