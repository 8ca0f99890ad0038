"""Train the LRAS-style frame-pair model shipped as ``kltrace-lras`` (the KL-tracing default).

    python scripts/train_kltrace_lras.py                        # the shipped recipe (CPU ok)
    python scripts/train_kltrace_lras.py --pairs 512 --steps 50 --export ""   # smoke run

Three stages, each saved in the run directory so a second call resumes:
1. ``pairs.npy``: frame pairs of the synthetic world (``longseq.data.flowworld``),
   generated in chunks by ``--workers`` processes;
2. ``quantizer.pt``: the k-means codebook of 4x4 patches;
3. ``state.pt``: model, optimizer and step, every ``--save-every`` steps, with a
   ``metrics.jsonl`` log.
Each pair is trained on the first ``--order-prefix`` slots of a random order, i.e. with
0 to K-1 frame-1 patches revealed: the regime KL-tracing queries (~10% revealed), in
which the model must carry frame-0 content to its new place rather than fill in from
revealed neighbours. Batches are augmented by the 8 flips/rotations of the square and by swapping the
two frames (the world's motion is reversible). At the end the model is exported
with a config.json recording this script, its arguments and held-out metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.flowworld import training_pairs
from longseq.kltrace import calibrate, synthetic_set
from longseq.models.lras import LRAS, LRASConfig
from longseq.utils import (
    default_device,
    load_training_state,
    optimizer_step,
    progress_bar,
    save_training_state,
    seed_everything,
    warmup_cosine_lr,
)

NAME = "kltrace-lras"
CHUNK = 250


def _chunk(args: tuple[int, int, str]) -> np.ndarray:
    i, size, split = args
    torch.set_num_threads(1)
    return training_pairs(CHUNK, seed=i, image_size=size, split=split)


def make_pairs(path: Path, n: int, size: int, workers: int, split: str = "train") -> np.ndarray:
    """Frame pairs, generated chunk by chunk and appended to ``path`` (resumable)."""
    have = np.load(path) if path.exists() else np.zeros((0, 2, size, size, 3), np.uint8)
    todo = list(range(len(have) // CHUNK, math.ceil(n / CHUNK)))
    if not todo:
        return have[:n]
    parts = [have]
    with progress_bar(f"rendering {split} pairs", len(todo)) as advance, Pool(workers) as pool:
        for k, part in enumerate(pool.imap(_chunk, [(i, size, split) for i in todo])):
            parts.append(part)
            advance()
            if k % 8 == 7 or k == len(todo) - 1:
                np.save(path, np.concatenate(parts))
    return np.concatenate(parts)[:n]


def augment(pairs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random flip/rotation of the square and a random swap of the frames, per pair."""
    out = []
    for p in pairs:  # (2, H, W, 3)
        k = int(torch.randint(4, (1,), generator=g))
        p = torch.rot90(p, k, dims=(1, 2))
        if torch.rand(1, generator=g) < 0.5:
            p = p.flip(2)
        if torch.rand(1, generator=g) < 0.5:
            p = p.flip(0)
        out.append(p)
    return torch.stack(out)


@torch.no_grad()
def evaluate(model: LRAS, pairs: torch.Tensor, reveal: float, device) -> dict:
    """Held-out cross-entropy and top-1 accuracy of frame-1 codes given frame 0 and a
    random ``reveal`` fraction of frame 1 (the KL-tracing condition), against the
    copy-frame-0 baseline accuracy."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    q = model.quantizer
    patches = q.patchify(pairs.reshape(-1, *pairs.shape[2:]).to(device))
    patches = patches.reshape(len(pairs), 2, *patches.shape[1:])
    f0, f1 = patches[:, 0], patches[:, 1]
    codes0, codes1 = q.assign(f0), q.assign(f1)
    n_slots = f0.shape[1]
    r = max(1, round(reveal * n_slots))
    perm = torch.stack([torch.randperm(n_slots, generator=g) for _ in range(len(pairs))]).to(device)
    rev, qry = perm[:, :r], perm[:, r:]
    revealed = f1.gather(1, rev[..., None].expand(-1, -1, f1.shape[-1]))
    logits = model.predict(f0, rev, revealed, qry)
    target = codes1.gather(1, qry)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    acc = (logits.argmax(-1) == target).float().mean()
    copy = (codes0.gather(1, qry) == target).float().mean()
    model.train()
    return {
        "val_ce": round(ce.item(), 4),
        "val_top1": round(acc.item(), 4),
        "copy_top1": round(copy.item(), 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16000)
    ap.add_argument("--val-pairs", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--codebook", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6000, help="length of the LR schedule")
    ap.add_argument(
        "--stop-at", type=int, default=3400, help="stop (and export) at this step (0: --steps)"
    )
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument(
        "--order-prefix",
        type=int,
        default=16,
        help="train on the first K slots of each random order (0..K-1 patches revealed)",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--calib-clips", type=int, default=12, help="val clips for thresholds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--run-dir", default="runs/kltrace-lras")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--export", default=str(hub.CHECKPOINT_DIR / NAME), help="'' to skip")
    args = ap.parse_args(argv)

    device = default_device(args.device)
    g = seed_everything(args.seed)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    pairs = torch.from_numpy(
        make_pairs(run / "pairs.npy", args.pairs, args.image_size, args.workers)
    )
    val = make_pairs(run / "val_pairs.npy", args.val_pairs, args.image_size, args.workers, "val")
    val = torch.from_numpy(val)

    cfg = LRASConfig(
        image_size=args.image_size,
        codebook_size=args.codebook,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    model = LRAS(cfg).to(device)
    qfile = run / "quantizer.pt"
    if qfile.exists():
        model.quantizer.codebook.copy_(torch.load(qfile, map_location=device))
    else:
        idx = torch.randperm(len(pairs), generator=g)[:4000]
        patches = model.quantizer.patchify(pairs[idx].reshape(-1, *pairs.shape[2:]))
        mse = model.quantizer.fit(patches.reshape(-1, patches.shape[-1]).to(device))
        print(f"quantizer: {args.codebook} codes, patch MSE {mse:.5f} (pixels in [0, 1])")
        torch.save(model.quantizer.codebook.cpu(), qfile)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    step = load_training_state(run / "state.pt", model, opt, device)
    if step:
        print(f"resumed from {run / 'state.pt'} at step {step}")

    def lr_at(s: int) -> float:
        return warmup_cosine_lr(s, args.lr, args.warmup, args.steps)

    log = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (appended to through the loop)
    model.train()
    t0 = time.time()
    n_slots = cfg.n_slots
    last = min(args.steps, args.stop_at or args.steps)  # the schedule is the one of --steps
    with progress_bar("training", last) as advance:
        advance(step)
        while step < last:
            gs = torch.Generator().manual_seed(args.seed * 10**7 + step)  # resumable stream
            idx = torch.randint(len(pairs), (args.batch_size,), generator=gs)
            batch = augment(pairs[idx], gs).to(device)
            patches = model.quantizer.patchify(batch.reshape(-1, *batch.shape[2:]))
            patches = patches.reshape(args.batch_size, 2, n_slots, -1)
            order = torch.argsort(torch.rand(args.batch_size, n_slots, generator=gs), 1)
            order = order[:, : args.order_prefix].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            _, loss = model(patches[:, 0], patches[:, 1], order)
            optimizer_step(opt, loss, model)
            step += 1
            advance()
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step - 1)}
            if step % args.eval_every == 0 or step == last:
                rec.update(evaluate(model, val[:256], 0.1, device))
                print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            if step % args.save_every == 0 or step == last:
                save_training_state(run / "state.pt", model, opt, step)
                log.flush()
    log.close()
    metrics = evaluate(model, val, 0.1, device)
    metrics["train_seconds_this_call"] = round(time.time() - t0, 1)
    print(json.dumps(metrics))
    # occlusion thresholds of KL-tracing and the RGB probe, fitted on validation clips
    model.eval()
    tcfg = calibrate(model, synthetic_set(args.calib_clips, "val"))
    print(f"calibrated occlusion thresholds: {tcfg.thresholds}")
    if args.export:
        extra = {
            "training": {
                "script": "scripts/train_kltrace_lras.py",
                "argv": sys.argv[1:] if argv is None else argv,
                "args": {k: v for k, v in vars(args).items() if k != "export"},
                "device": str(device),
            },
            "metrics": metrics,
            "n_parameters": model.num_parameters(),
            "kltrace": {"thresholds": tcfg.thresholds, "calibration_clips": args.calib_clips},
        }
        out = hub.save_pretrained(model.cpu(), args.export, "lras", extra)
        if Path(out).resolve().is_relative_to(hub.CHECKPOINT_DIR.resolve()):
            hub.register(
                NAME,
                out,
                "LRAS-style random-order frame-pair model, 32x32, 4x4 patches (KL-tracing)",
            )
        print(f"exported to {out}")


if __name__ == "__main__":
    main()
