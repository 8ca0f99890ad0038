"""Train the attribute classifier that measures StreamingT2V's prompt fidelity
(``fidelity-classifier``), on the video world's frames and tracks.

Independent of the generators and of APM's frame encoder: its own network
(:class:`longseq.models.attribute_cnn.AttributeCNN`, luma only, 16 px) and its own data.

1. visibility: the object-pixel count (world luma rule) that best separates frames with
   at least half the object in view from the others, on training clips;
2. speed: the mean per-frame step of the track that best separates "slowly" from
   "quickly" over ``--track-frames`` frames of training clips;
3. motion: a linear head on four track features (softmax regression), training clips;
4. shape: the CNN on training-caption frames with at least half the object in view.

Held-out metrics are measured on clips of the held-out captions (the ``test`` split, its
own seed stream) and stored in the checkpoint's JSON; the script stops without
registering when held-out shape accuracy is under ``--gate`` (0.99).

    python scripts/train_fidelity_classifier.py            # ~3 CPU minutes, one thread
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longseq import hub
from longseq.data import videoworld as vw
from longseq.models.attribute_cnn import AttributeCNN, AttributeCNNConfig
from longseq.streaming.metrics import FIDELITY_BLOCK, object_track, track_features, track_steps

NAME = "fidelity-classifier"


def frame_set(split: str, n_clips: int, per_clip: int, size: int, seed: int):
    """Frames (N, size, size, 3), shape labels (N,), visibility fractions (N,), from
    ``n_clips`` clips of ``split``, ``per_clip`` random frames each (frames 0-239)."""
    rng = np.random.default_rng([seed, 11])
    frames, shapes, vis = [], [], []
    for _ in range(n_clips):
        clip = vw.sample_clip(int(rng.integers(2**31)), split)
        v = clip.visibility(240)
        for t in rng.choice(240, per_clip, replace=False):
            frames.append(clip.render(1, size, int(t))[0])
            shapes.append(vw.SHAPES.index(clip.attrs["shape"]))
            vis.append(v[t])
    return np.stack(frames), np.array(shapes), np.array(vis)


def track_set(split: str, n_clips: int, n_frames: int, size: int, seed: int):
    """Per clip: centres (T, 2), object-pixel counts (T,), motion and speed labels."""
    rng = np.random.default_rng([seed, 13])
    out = []
    for _ in range(n_clips):
        clip = vw.sample_clip(int(rng.integers(2**31)), split)
        centres, count = object_track(clip.render(n_frames, size))
        out.append((centres, count, clip.attrs["motion"], clip.attrs["speed"]))
    return out


def best_split(values: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold ``x`` for ``values > x`` that agrees most with ``positive``, and
    that agreement (midpoints between sorted values are tried)."""
    v = np.sort(np.unique(values))
    cands = (v[1:] + v[:-1]) / 2 if len(v) > 1 else v
    acc = [((values > c) == positive).mean() for c in cands]
    i = int(np.argmax(acc))
    return float(cands[i]), float(acc[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--clips", type=int, default=3000, help="training clips for frames")
    ap.add_argument("--per-clip", type=int, default=12)
    ap.add_argument("--track-clips", type=int, default=300)
    ap.add_argument("--track-frames", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate", type=float, default=0.99, help="held-out shape accuracy to ship")
    ap.add_argument("--out", type=Path, default=hub.CHECKPOINT_DIR / NAME)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    metrics: dict[str, float] = {}

    # 1. visibility threshold on object-pixel counts
    x_tr, y_tr, vis_tr = frame_set("train", args.clips, args.per_clip, args.size, args.seed)
    x_te, y_te, vis_te = frame_set("test", args.clips // 3, args.per_clip, args.size, args.seed)
    count_tr = object_track(x_tr)[1]
    count_te = object_track(x_te)[1]
    visible_pixels, metrics["visible_train_agreement"] = best_split(count_tr, vis_tr >= 0.5)
    visible_pixels = float(np.ceil(visible_pixels))  # counts are integers: count >= this
    metrics["visible_heldout_agreement"] = float(
        ((count_te >= visible_pixels) == (vis_te >= 0.5)).mean()
    )
    print(
        f"visible: >= {visible_pixels:.0f} px, held-out agreement {metrics['visible_heldout_agreement']:.4f}"
    )

    # 2. speed split and 3. motion head, from tracks
    cfg = AttributeCNNConfig(size=args.size, visible_pixels=visible_pixels)
    model = AttributeCNN(cfg)

    def track_table(tracks):
        mean_step, block_steps, block_quick, feats, motions, quick = [], [], [], [], [], []
        for centres, count, motion, speed in tracks:
            vis = count >= visible_pixels
            steps = track_steps(centres, vis)
            mean_step.append(np.nanmean(steps) if np.isfinite(steps).any() else np.nan)
            for s in range(0, len(steps), FIDELITY_BLOCK):
                b = steps[s : s + FIDELITY_BLOCK - 1]
                if np.isfinite(b).any():
                    block_steps.append(np.nanmean(b))
                    block_quick.append(speed == "quickly")
            feats.append(track_features(centres, vis))
            motions.append(cfg.motions.index(motion))
            quick.append(speed == "quickly")
        return (
            np.array(mean_step), np.array(block_steps), np.array(block_quick),
            np.array(feats), np.array(motions), np.array(quick),
        )  # fmt: skip

    tr = track_table(track_set("train", args.track_clips, args.track_frames, args.size, args.seed))
    te = track_table(
        track_set("test", args.track_clips // 3, args.track_frames, args.size, args.seed)
    )
    ok = np.isfinite(tr[0])
    cfg.speed_split, metrics["speed_train_agreement"] = best_split(tr[0][ok], tr[5][ok])
    ok_te = np.isfinite(te[0])
    metrics["speed_heldout_agreement"] = float(
        ((te[0][ok_te] > cfg.speed_split) == te[5][ok_te]).mean()
    )
    metrics["speed_heldout_block_agreement"] = float(((te[1] > cfg.speed_split) == te[2]).mean())
    metrics["speed_heldout_read"] = float(ok_te.mean())
    for name, quick in (("slow", False), ("quick", True)):
        metrics[f"mean_step_heldout_{name}_px"] = float(
            np.nanmean(te[0][te[5] == quick]) * args.size
        )
    print(f"speed: split {cfg.speed_split * args.size:.3f} px/frame, held-out agreement "
          f"{metrics['speed_heldout_agreement']:.3f} (blocks of {FIDELITY_BLOCK}: "
          f"{metrics['speed_heldout_block_agreement']:.3f})")  # fmt: skip
    f_ok = np.isfinite(tr[3]).all(1)
    feats = torch.tensor(tr[3][f_ok], dtype=torch.float32)
    model.track_mean.copy_(feats.mean(0))
    model.track_std.copy_(feats.std(0).clamp_min(1e-6))
    labels = torch.tensor(tr[4][f_ok])
    opt = torch.optim.Adam(model.motion_head.parameters(), lr=0.05)
    for _ in range(500):
        loss = F.cross_entropy(model.motion_logits(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    te_ok = np.isfinite(te[3]).all(1)
    with torch.no_grad():
        pred = model.motion_logits(torch.tensor(te[3][te_ok], dtype=torch.float32)).argmax(-1)
        pred_tr = model.motion_logits(feats).argmax(-1)
    metrics["motion_train_agreement"] = float((pred_tr == labels).float().mean())
    metrics["motion_heldout_agreement"] = float((pred.numpy() == te[4][te_ok]).mean())
    metrics["motion_heldout_read"] = float(te_ok.mean())
    print(f"motion: held-out agreement {metrics['motion_heldout_agreement']:.3f} (chance 0.33)")

    # 4. shape CNN on frames with at least half the object in view
    keep = vis_tr >= 0.5
    xs = model.luma(x_tr[keep])
    ys = torch.tensor(y_tr[keep])
    opt = torch.optim.AdamW(
        [p for n, p in model.named_parameters() if not n.startswith("motion")],
        lr=args.lr,
        weight_decay=1e-4,
    )
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        rows = torch.randint(len(xs), (args.batch,), generator=gen)
        x = xs[rows]
        flip = torch.rand(len(x), generator=gen) < 0.5  # shapes are mirror-symmetric classes
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), ys[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        keep_te = vis_te >= 0.5
        pred = model(model.luma(x_te[keep_te])).argmax(-1).numpy()
    metrics["shape_heldout_accuracy"] = float((pred == y_te[keep_te]).mean())
    metrics["shape_heldout_frames"] = int(keep_te.sum())
    print(f"shape: held-out accuracy {metrics['shape_heldout_accuracy']:.4f} "
          f"on {keep_te.sum()} frames")  # fmt: skip
    metrics["wall_minutes"] = round((time.time() - t0) / 60, 1)
    if metrics["shape_heldout_accuracy"] < args.gate:
        raise SystemExit(f"held-out shape accuracy under the gate {args.gate}; not shipped")
    extra = {
        "training": {
            "script": "scripts/train_fidelity_classifier.py",
            "arguments": {k: v for k, v in vars(args).items() if k != "out"},
            "data": "longseq.data.videoworld: train split (training captions) for fitting, "
            "test split (held-out captions, own seed stream) for the metrics",
            "data_seed": args.seed,
            "threads": 1,
        },
        "metrics": metrics,
    }
    hub.save_pretrained(model, args.out, "attribute_cnn", extra)
    if args.out.resolve().parent == hub.CHECKPOINT_DIR.resolve():
        hub.register(
            NAME,
            args.out,
            "attribute classifier for prompt fidelity (16 px luma CNN: shape; visibility, "
            "speed and motion from the object's track), video world",
        )
    print(f"wrote {args.out} ({metrics['cpu_minutes']} min)")


if __name__ == "__main__":
    main()
