"""Train a frame-pair model for KL-tracing: the shipped ``kltrace-match`` (default name) or
the LRAS transformer ``kltrace-lras``.

    # kltrace-match (CPU, two stages): the world model, then the camera hypothesis and
    # real-photo pairs on top of it
    python scripts/train_kltrace.py --name kltrace-world --export runs/export/kltrace-world
    python scripts/train_kltrace.py --init-from runs/export/kltrace-world --camera \\
        --photo-frac 0.5 --steps 1200 --lr 1e-3 --warmup 20 --eval-every 200 --threads 1
    python scripts/train_kltrace.py --arch lras --name kltrace-lras \\
        --pairs 16000 --max-gap 2 --steps 6000 --stop-at 3400 --batch-size 48 --lr 1e-3
    python scripts/train_kltrace.py --head mean --export runs/ablation-mean   # an ablation
    python scripts/train_kltrace.py --pairs 512 --steps 50 --export ""        # smoke run

Three stages, each saved in the run directory so a second call resumes:
1. ``pairs.npy`` / ``val_pairs.npy``: frame pairs of the synthetic world
   (``longseq.data.flowworld``), rendered in chunks by ``--workers`` processes (shared
   by every model trained in the same ``--data-dir``);
2. ``quantizer.pt``: the k-means codebook of 4x4 patches (shared likewise);
3. ``state.pt``: model, optimizer and step, every ``--save-every`` steps, with a
   ``metrics.jsonl`` log.
With ``--photo-frac F`` a fraction F of every batch are frame pairs composited from real
photographs (``longseq.data.photopairs.training_photo_pairs``: scikit-image's bundled
photos, affine camera motion, independently moving layers that occlude, brightness
change, noise; cached as ``photo_pairs.npy``), and the held-out accuracy is also measured
on pairs from the validation photos. ``--init-from NAME_OR_DIR`` starts from a trained
checkpoint (weights and codebook) instead of from scratch.

Batches are augmented by the 8 flips/rotations of the square and by swapping the two
frames (the world's motion is reversible). ``match`` models train with a random number
of revealed frame-1 patches per batch (``--reveal-min`` .. ``--reveal-max`` of the
slots); ``lras`` models train on order prefixes of ``--order-prefix`` slots. At the end
the model is exported with a config.json recording this script, its arguments, its
held-out accuracy against copying frame 0, and occlusion thresholds calibrated on
validation clips.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.flowworld import training_pairs
from longseq.kltrace import (
    TraceConfig,
    calibrate,
    code_accuracy,
    evaluate_methods,
    synthetic_set,
)
from longseq.models.lras import LRAS, LRASConfig
from longseq.models.match_mixture import HEADS, MatchMixture, MatchMixtureConfig
from longseq.utils import (
    default_device,
    load_training_state,
    optimizer_step,
    progress_bar,
    save_training_state,
    seed_everything,
    warmup_cosine_lr,
)

CHUNK = 250
DESCRIPTIONS = {
    "match": "local-matching mixture frame-pair model, 32x32, 4x4 patches (KL-tracing)",
    "lras": "LRAS-style random-order frame-pair transformer, 32x32, 4x4 patches (KL-tracing)",
    "match-camera": "local-matching mixture frame-pair model with a camera hypothesis, 32x32, "
    "4x4 patches (KL-tracing)",
}


def _chunk(args: tuple[int, int, str, int]) -> np.ndarray:
    i, size, split, gap = args
    torch.set_num_threads(1)
    return training_pairs(CHUNK, seed=i, image_size=size, split=split, max_gap=gap)


def make_pairs(
    path: Path, n: int, size: int, workers: int, split: str = "train", max_gap: int = 2
) -> np.ndarray:
    """Frame pairs, generated chunk by chunk and appended to ``path`` (resumable)."""
    have = np.load(path) if path.exists() else np.zeros((0, 2, size, size, 3), np.uint8)
    todo = list(range(len(have) // CHUNK, math.ceil(n / CHUNK)))
    if not todo:
        return have[:n]
    parts = [have]
    with progress_bar(f"rendering {split} pairs", len(todo)) as advance, Pool(workers) as pool:
        jobs = [(i, size, split, max_gap) for i in todo]
        for k, part in enumerate(pool.imap(_chunk, jobs)):
            parts.append(part)
            advance()
            if k % 8 == 7 or k == len(todo) - 1:
                np.save(path, np.concatenate(parts))
    return np.concatenate(parts)[:n]


def cached_photo_pairs(data: Path, n: int, split: str, size: int) -> np.ndarray:
    """Real-photo training pairs of ``split``, rendered once into ``data`` (resumable)."""
    from longseq.data.photopairs import training_photo_pairs

    path = data / f"photo_{split}_pairs_{size}.npy"
    have = np.load(path) if path.exists() else np.zeros((0, 2, size, size, 3), np.uint8)
    if len(have) < n:
        seed = {"train": 0, "val": 1}[split]
        more = training_photo_pairs(n - len(have), split, size, seed=seed * 1000 + len(have))
        have = np.concatenate([have, more])
        np.save(path, have)
    return have[:n]


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


def camera_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the parameters a ``camera`` MatchMixture adds to the same model without
    the camera (``--init-from`` a model without it starts them fresh); empty otherwise."""
    if not isinstance(model, MatchMixture) or not model.config.camera:
        return set()
    plain = MatchMixture(replace(model.config, camera=False))
    return set(model.state_dict()) - set(plain.state_dict())


def build(args) -> torch.nn.Module:
    if args.arch == "lras":
        return LRAS(
            LRASConfig(
                image_size=args.image_size,
                codebook_size=args.codebook,
                n_layer=args.n_layer,
                n_head=args.n_head,
                n_embd=args.n_embd,
            )
        )
    return MatchMixture(
        MatchMixtureConfig(
            image_size=args.image_size,
            codebook_size=args.codebook,
            max_disp=args.max_disp,
            head=args.head,
            reveal_conditioning=not args.no_reveal_conditioning,
            camera=args.camera,
        )
    )


def batch_loss(model, batch: torch.Tensor, args, gs: torch.Generator) -> torch.Tensor:
    """The training loss of one augmented batch (B, 2, H, W, 3) uint8."""
    b = batch.shape[0]
    n_slots = model.config.n_slots
    if args.arch == "lras":
        patches = model.quantizer.patchify(batch.reshape(-1, *batch.shape[2:]))
        patches = patches.reshape(b, 2, n_slots, -1)
        order = torch.argsort(torch.rand(b, n_slots, generator=gs), 1)[:, : args.order_prefix]
        return model(patches[:, 0], patches[:, 1], order.to(batch.device))[1]
    lo, hi = (max(1, round(f * n_slots)) for f in (args.reveal_min, args.reveal_max))
    r = int(torch.randint(lo, hi + 1, (1,), generator=gs))
    order = torch.argsort(torch.rand(b, n_slots, generator=gs), 1)[:, :r]
    revealed = torch.zeros(b, n_slots, dtype=torch.bool).scatter_(1, order, True)
    return model(batch[:, 0], batch[:, 1], revealed.to(batch.device))[1]


def tune_bump(model, data, cfg: TraceConfig, args) -> tuple[TraceConfig, dict]:
    """The bump (amplitude, sigma) with the best KL-tracing delta_avg on validation clips,
    and the table of every candidate's (KL, RGB) delta_avg."""
    table, best = {}, None
    for amp in (float(v) for v in args.trace_amplitudes.split(",")):
        for sigma in (float(v) for v in args.trace_sigmas.split(",")):
            c = replace(cfg, amplitude=amp, sigma=sigma)
            res = evaluate_methods(model, data, c, methods=("kl", "rgb"))
            score = {p: round(res[p]["average_pts_within_thresh"], 4) for p in ("kl", "rgb")}
            table[f"amplitude {amp:g}, sigma {sigma:g}"] = score
            print(f"bump amplitude {amp:g} sigma {sigma:g}: delta_avg {score}", flush=True)
            if best is None or score["kl"] > best[0]:
                best = (score["kl"], c)
    return best[1], table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["match", "lras"], default="match")
    ap.add_argument("--name", default="kltrace-match", help="registry name of the export")
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--val-pairs", type=int, default=500)
    ap.add_argument("--max-gap", type=int, default=1, help="pairs (0, t) with t <= this")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--codebook", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1500, help="length of the LR schedule")
    ap.add_argument("--stop-at", type=int, default=0, help="stop (and export) here (0: --steps)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    # match
    ap.add_argument("--head", choices=HEADS, default="mixture")
    ap.add_argument("--no-reveal-conditioning", action="store_true")
    ap.add_argument("--max-disp", type=int, default=8)
    ap.add_argument(
        "--camera",
        action="store_true",
        help="add the camera hypothesis (contrast-normalised matching)",
    )
    ap.add_argument("--reveal-min", type=float, default=0.05)
    ap.add_argument("--reveal-max", type=float, default=0.4)
    # lras
    ap.add_argument("--order-prefix", type=int, default=16)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--eval-reveal", type=float, default=0.1, help="reveal fraction of the eval")
    ap.add_argument("--calib-clips", type=int, default=12, help="val clips for thresholds")
    ap.add_argument(
        "--trace-scales", default="0.5", help="zoom windows shipped with the model (fractions)"
    )
    ap.add_argument("--trace-masks", type=int, default=5, help="reveal masks shipped")
    ap.add_argument("--trace-reveal", type=float, default=0.1, help="reveal fraction shipped")
    ap.add_argument(
        "--trace-amplitudes",
        default="24,32,48,64,128",
        help="bump amplitudes tried on validation clips (the best KL delta_avg is shipped)",
    )
    ap.add_argument("--trace-sigmas", default="1.5,2", help="bump widths tried likewise")
    ap.add_argument("--photo-frac", type=float, default=0.0, help="real-photo share of a batch")
    ap.add_argument("--photo-pairs", type=int, default=6000, help="real-photo training pairs")
    ap.add_argument("--init-from", default=None, help="checkpoint to start from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--data-dir", default="runs/kltrace-data", help="pairs and quantizer")
    ap.add_argument("--run-dir", default=None, help="default: runs/<name>")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--export", default=None, help="default: the package's checkpoint folder")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    export = str(hub.CHECKPOINT_DIR / args.name) if args.export is None else args.export

    device = default_device(args.device)
    g = seed_everything(args.seed)
    data = Path(args.data_dir)
    run = Path(args.run_dir or f"runs/{args.name}")
    data.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    gap, size, w = args.max_gap, args.image_size, args.workers
    pairs = make_pairs(data / f"pairs_gap{gap}.npy", args.pairs, size, w, "train", gap)
    val = make_pairs(data / f"val_pairs_gap{gap}.npy", args.val_pairs, size, w, "val", gap)
    pairs, val = torch.from_numpy(pairs), torch.from_numpy(val)
    photo, photo_val = None, None
    if args.photo_frac > 0:
        photo = torch.from_numpy(cached_photo_pairs(data, args.photo_pairs, "train", size))
        photo_val = cached_photo_pairs(data, args.val_pairs, "val", size)

    model = build(args).to(device)
    qfile = data / f"quantizer_{args.codebook}.pt"
    if args.init_from:
        init, _ = hub.load(args.init_from, device)
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
        if unexpected or set(missing) - camera_parameters(model):
            raise SystemExit(
                f"--init-from {args.init_from}: another architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        print(
            f"initialised from {args.init_from}"
            + (f" (new: {', '.join(missing)})" if missing else "")
        )
    elif qfile.exists():
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

    log = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (appended to through the loop)
    model.train()
    t0 = time.time()
    last = min(args.steps, args.stop_at or args.steps)  # the schedule is the one of --steps
    with progress_bar("training", last) as advance:
        advance(step)
        while step < last:
            gs = torch.Generator().manual_seed(args.seed * 10**7 + step)  # resumable stream
            n_photo = round(args.photo_frac * args.batch_size) if photo is not None else 0
            idx = torch.randint(len(pairs), (args.batch_size - n_photo,), generator=gs)
            batch = pairs[idx]
            if n_photo:
                pidx = torch.randint(len(photo), (n_photo,), generator=gs)
                batch = torch.cat([batch, photo[pidx]])
            batch = augment(batch, gs).to(device)
            lr = warmup_cosine_lr(step, args.lr, args.warmup, args.steps)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = batch_loss(model, batch, args, gs)
            optimizer_step(opt, loss, model)
            step += 1
            advance()
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": lr}
            if step % args.eval_every == 0 or step == last:
                model.eval()
                rec.update(code_accuracy(model, val[:256], args.eval_reveal))
                if photo_val is not None:
                    acc = code_accuracy(model, photo_val[:256], args.eval_reveal)
                    rec.update({f"photo_{k}": v for k, v in acc.items()})
                model.train()
                print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            if step % args.save_every == 0 or step == last:
                save_training_state(run / "state.pt", model, opt, step)
                log.flush()
    log.close()
    model.eval()
    metrics = {"reveal": args.eval_reveal, **code_accuracy(model, val, args.eval_reveal)}
    if photo_val is not None:
        acc = code_accuracy(model, photo_val, args.eval_reveal)
        metrics.update({f"photo_{k}": v for k, v in acc.items()})
    metrics["train_seconds_this_call"] = round(time.time() - t0, 1)
    print(json.dumps(metrics))
    # the tracing settings shipped with the model, and the occlusion thresholds of
    # KL-tracing and the RGB probe under them, fitted on validation clips
    tcfg = TraceConfig(
        scales=tuple(float(v) for v in args.trace_scales.split(",")),
        n_masks=args.trace_masks,
        reveal=args.trace_reveal,
    )
    calib = synthetic_set(args.calib_clips, "val", n_frames=2)
    tcfg, bump_table = tune_bump(model, calib, tcfg, args)
    tcfg = calibrate(model, calib, tcfg)
    print(f"calibrated occlusion thresholds: {tcfg.thresholds}")
    if export:
        extra = {
            "training": {
                "script": "scripts/train_kltrace.py",
                "argv": sys.argv[1:] if argv is None else argv,
                "args": {k: v for k, v in vars(args).items() if k != "export"},
                "device": str(device),
            },
            "metrics": metrics,
            "n_parameters": model.num_parameters(),
            "kltrace": {
                "thresholds": tcfg.thresholds,
                "calibration_clips": args.calib_clips,
                "config": {
                    "scales": list(tcfg.scales),
                    "n_masks": tcfg.n_masks,
                    "reveal": tcfg.reveal,
                    "amplitude": tcfg.amplitude,
                    "sigma": tcfg.sigma,
                },
                "bump_tuning": bump_table,
            },
        }
        arch = "lras" if args.arch == "lras" else "match_mixture"
        out = hub.save_pretrained(model.cpu(), export, arch, extra)
        if Path(out).resolve().is_relative_to(hub.CHECKPOINT_DIR.resolve()):
            key = "match-camera" if args.arch == "match" and args.camera else args.arch
            hub.register(args.name, out, DESCRIPTIONS[key])
        print(f"exported to {out}")


if __name__ == "__main__":
    main()
