"""Choose a frame-pair model's KL-tracing readout and occlusion rule on validation pairs,
and store them in its checkpoint (``config.json``, ``longseq.kltrace``).

Validation data: real-photo pairs from scikit-image's held-out photos (every motion type
of ``longseq.data.photopairs``) and held-out clips of the synthetic world; never the
test photos. Candidates:

* **sub-pixel readout**: reveal-mask windows jittered across the patch (``jitter`` 0 or 1
  patch) x the reveal fraction x the peak refinement (``centroid``, ``softargmax``, or
  ``fit`` with each of ``--fit-widths``); the one with the best mean KL delta_avg over the
  four validation groups (three photo motion types, the world) wins. The precision (median per-component error of visible points
  within 3 px) is reported for each;
* **occlusion**: an absolute peak threshold (``peak``) or a threshold on the peak over the
  mean of the point's own KL map (``contrast``); the rule and threshold with the largest
  *smaller* gain in occlusion accuracy over "everything visible" across the photo and the
  world sets win (so a rule fitted to one world cannot cost the other); if no rule gains
  on both sets, ``none`` (every point reported visible).

The readout is chosen on the first pass's maps (``passes=1``); the refinement passes
that follow it are chosen by ``scripts/tune_kltrace_refine.py``.

    python scripts/tune_kltrace_tracing.py --model kltrace-match [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from longseq import hub
from longseq.data.photopairs import MOTIONS, photo_set
from longseq.kltrace import load_tracer, synthetic_set, trace_points
from longseq.kltrace.metrics import tapvid_metrics
from longseq.kltrace.tracing import _window_sides, read_peak


def trace_set(model, cfg, data) -> tuple[np.ndarray, list]:
    """KL maps (B, N, H, W) and raw slot responses (B lists of N) of every query point of
    a two-frame set."""
    maps, slots = [], []
    for b in range(len(data.videos)):
        pts = data.query_points[b][:, [2, 1]]
        r = trace_points(model, data.videos[b, 0], data.videos[b, 1], pts, cfg, keep_maps=True)
        maps.append(r.maps["kl"])
        slots.append(r.slots["kl"])
    return np.stack(maps), slots


def readout(data, traced: tuple, cfg, patch: int, finest: float) -> tuple[np.ndarray, ...]:
    """Targets (B, N, 2), peaks and contrasts (B, N) under ``cfg.readout`` of the maps
    and slot responses that :func:`trace_set` traced for ``data``."""
    maps, slots = traced
    b, n = maps.shape[:2]
    pts = data.query_points[:, :, [2, 1]]
    out = [
        read_peak(maps[i, j], slots[i][j], cfg, patch, finest, pts[i, j])
        for i in range(b)
        for j in range(n)
    ]
    tg, pk, ct = (np.array(v) for v in zip(*out, strict=True))
    return tg.reshape(b, n, 2), pk.reshape(b, n), ct.reshape(b, n)


def groups(photos, world) -> dict:
    g = {m: (photos, [i for i, x in enumerate(photos.motions) if x == m]) for m in MOTIONS}
    return g | {"world": (world, list(range(len(world.videos))))}


def score(data, idx, targets) -> dict:
    q, o, t = data.query_points[idx], data.occluded[idx], data.tracks[idx]
    tracks = np.stack([t[:, :, 0], targets[idx]], 2).astype(np.float32)
    m = tapvid_metrics(q, o, t, np.zeros_like(o), tracks, "first")
    err = targets[idx] - t[:, :, 1]
    vis = ~o[:, :, 1]
    inl = vis & (np.linalg.norm(err, axis=-1) < 3)
    return {
        "delta_avg": round(100 * m["average_pts_within_thresh"], 2),
        "epe": round(m["epe"], 3),
        "precision_px": round(float(np.median(np.abs(err[inl]))), 3),
    }


def occlusion_gain(score_: np.ndarray, occluded: np.ndarray, t: float) -> float:
    return float(((score_ < t) == occluded).mean() - (1 - occluded.mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="kltrace-match")
    ap.add_argument("--photo-pairs", type=int, default=24, help="validation photo pairs")
    ap.add_argument("--clips", type=int, default=16, help="validation world clips")
    ap.add_argument("--jitters", default="0,1")
    ap.add_argument("--reveals", default="", help="default: the model's and 0.25")
    ap.add_argument("--fit-widths", default="1,1.5,2", help="widths tried by the fit readout")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="store the choice in the checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, base = load_tracer(args.model)
    photos = photo_set(args.photo_pairs, "val")
    world = synthetic_set(args.clips, "val", 64, 2, 16)
    sets = {"photos": photos, "world": world}
    reveals = [float(v) for v in args.reveals.split(",")] if args.reveals else [base.reveal, 0.25]
    # frame px per slot of the finest zoom, as trace_points reckons it (both sets: 64 px)
    sides = _window_sides(photos.videos.shape[2:4], base.scales, model.image_size)
    finest = min(sides) / (model.image_size // model.patch)
    readouts = [("centroid", None), ("softargmax", None)]
    readouts += [("fit", float(v)) for v in args.fit_widths.split(",") if v]
    table, best, kept = [], None, {}
    for jitter in (float(v) for v in args.jitters.split(",")):
        for reveal in dict.fromkeys(reveals):
            cfg = replace(base, jitter=jitter, reveal=reveal, passes=1)  # the first pass
            t0 = time.time()
            maps = {k: trace_set(model, cfg, d) for k, d in sets.items()}
            for how, width in readouts:
                read_cfg = replace(cfg, readout=how, fit_width=width or base.fit_width)
                ro = {
                    k: readout(sets[k], m, read_cfg, model.patch, finest) for k, m in maps.items()
                }
                tg = {"photos": ro["photos"][0], "world": ro["world"][0]}
                row = {"jitter": jitter, "reveal": reveal, "readout": how}
                if width is not None:
                    row["fit_width"] = width
                for name, (data, idx) in groups(photos, world).items():
                    row[name] = score(data, idx, tg["world" if name == "world" else "photos"])
                row["mean_delta_avg"] = round(
                    float(np.mean([row[g]["delta_avg"] for g in (*MOTIONS, "world")])), 2
                )
                table.append(row)
                print(json.dumps(row), f"({time.time() - t0:.0f} s)", flush=True)
                if best is None or row["mean_delta_avg"] > best["mean_delta_avg"]:
                    best, kept = row, ro
    # occlusion: rule and threshold with the best worst-case gain over "everything
    # visible" (ties: the lowest threshold, which flags least); "none" unless a rule gains
    # on both sets
    occ = {k: d.occluded[:, :, 1] for k, d in sets.items()}
    rules = {}
    for rule, col in (("peak", 1), ("contrast", 2)):
        cands = np.unique(np.concatenate([kept[k][col].ravel() for k in sets]))
        cands = np.concatenate([[cands.min() - 1e-6], cands])
        gains = [[round(occlusion_gain(kept[k][col], occ[k], t), 9) for k in sets] for t in cands]
        i = max(range(len(cands)), key=lambda j: (min(gains[j]), sum(gains[j]), -j))
        rules[rule] = {"threshold": float(cands[i]), **dict(zip(sets, gains[i], strict=True))}
    rule = max(
        rules, key=lambda r: (min(rules[r][k] for k in sets), sum(rules[r][k] for k in sets))
    )
    if min(rules[rule][k] for k in sets) <= 0:
        rule = "none"
    choice = {
        "jitter": best["jitter"],
        "reveal": best["reveal"],
        "readout": best["readout"],
        **({"fit_width": best["fit_width"]} if "fit_width" in best else {}),
        "occlusion": rule,
    }
    print("chosen:", json.dumps(choice), "occlusion rules:", json.dumps(rules))
    if args.write:
        name, path, _ = hub.resolve(args.model)
        cfile = path / hub.CONFIG
        config = json.loads(cfile.read_text())
        kl = config.setdefault("kltrace", {})
        kl["config"] = {**kl.get("config", {}), **choice}
        if rule == "none":
            pass
        elif rule == "peak":
            kl["thresholds"] = {**kl.get("thresholds", {}), "kl": rules["peak"]["threshold"]}
        else:
            kl["config"]["contrast_thresholds"] = {"kl": rules["contrast"]["threshold"], "rgb": 0.0}
        kl["tracing_tuning"] = {
            "script": "scripts/tune_kltrace_tracing.py",
            "argv": sys.argv[1:],
            "validation": {"photo_pairs": args.photo_pairs, "world_clips": args.clips},
            "candidates": table,
            "occlusion_rules": rules,
        }
        cfile.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote {cfile}")


if __name__ == "__main__":
    main()
