"""Training and evaluation of image classifiers (Vim, ViT) on the shapes dataset.

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
) -> torch.nn.Module:
    """The shapes-experiment models: a Vim (Mamba-2 mixers, headdim 16) or a same-size ViT.

    ``drop_path`` is the last block's stochastic-depth rate (linear over depth);
    ``cls_position`` ("middle" or "first"), ``headdim`` and ``chunk_size`` (the scan's
    block length, which changes speed, not the function) apply to the Vim (the ViT's
    class token is first).
    """
    from longseq.data.shapes import CLASSES
    from longseq.models.vim import Vim, VimConfig
    from longseq.models.vit import ViT, ViTConfig

    common = dict(
        img_size=img_size,
        patch_size=patch,
        dim=dim,
        depth=depth,
        num_classes=len(CLASSES),
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


def _random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right and/or up-down with probability 1/2 each."""
    h = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    v = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


@torch.no_grad()
def predict(model, images: torch.Tensor, device, batch: int = 500) -> torch.Tensor:
    """Predicted class of each image in [0, 1] (n, 3, H, W), in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(x).argmax(-1).cpu())
    return torch.cat(out)


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
    :func:`draw_splits` of ``cfg``, drawn once and reused over runs.
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
                x, y = normalize(xtr[idx].to(device)), ytr[idx].to(device)
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
    test_acc = accuracy(model, *data["test"], device)
    if val_acc is None or start_epoch == cfg.epochs:  # not measured after the last epoch
        val_acc = accuracy(model, *data["val"], device)
    return {
        "train_acc": train_acc,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "gap": train_acc - test_acc,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": cpu1 - cpu0,
        "eval_cpu_seconds": time.process_time() - cpu1,
    }
