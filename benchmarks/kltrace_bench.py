"""KL-tracing against the RGB-difference probe and classical flow, and which property of
the model carries the result -> benchmarks/results/kltrace.json, kltrace.md, kltrace_flow.png.

Held-out synthetic clips (test split: seeds and textures never seen in training), 64x64,
16 query points per clip at frame 0 (half on sprites), traced to frame 1 and scored with
the TAP-Vid "first" protocol at native resolution (thresholds 1-16 px). Rows:

* each frame-pair model (the shipped ``kltrace-match`` and, with ``--lras``, the LRAS
  transformer): KL-tracing and the RGB-difference probe from the same forward passes,
  with the tracing settings and occlusion thresholds stored in its checkpoint;
* ``farneback`` / ``dis``: OpenCV dense flow with a forward-backward occlusion check;
* ``zero motion``: every point stays put and visible (the floor).

Model table: parameters, held-out top-1 accuracy of hidden frame-1 codes against copying
frame 0 in place (10% of frame 1 revealed), on windows at every zoom the model was
trained on and at native resolution, and milliseconds per traced point.

Ablation (``--ablation label=checkpoint_dir ...``, models trained by
``scripts/train_kltrace.py`` with ``--head mode``, ``--head mean`` or
``--no-reveal-conditioning``): the same protocol, read by KL and by RGB difference.
KL against RGB: paired per-clip differences of delta_avg with a 95% interval. Without
``--ablation`` the ablation rows of the previous ``kltrace.json`` are kept.

    python benchmarks/kltrace_bench.py [--clips 40] [--lras kltrace-lras]
        [--ablation "mode head=runs/kltrace-ablation/mode" ...]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.flowworld import sample_world, training_pairs
from longseq.kltrace import (
    DEFAULT_MODEL,
    FLOW_METHODS,
    code_accuracy,
    evaluate_methods,
    load_tracer,
    synthetic_set,
    tapvid_metrics,
    trace_points,
    track_with_flow,
)
from longseq.kltrace.plots import flow_figure
from longseq.stats import paired_difference
from longseq.utils import describe_device

RESULTS = Path(__file__).parent / "results"
COLS = [
    ("EPE (px)", "epe", 1, ".2f"),
    ("<1", "pts_within_1", 100, ".1f"),
    ("<2", "pts_within_2", 100, ".1f"),
    ("<4", "pts_within_4", 100, ".1f"),
    ("<8", "pts_within_8", 100, ".1f"),
    ("<16", "pts_within_16", 100, ".1f"),
    ("δ_avg", "average_pts_within_thresh", 100, ".1f"),
    ("occl. acc.", "occlusion_accuracy", 100, ".1f"),
    ("AJ", "average_jaccard", 100, ".1f"),
    ("ms / point", "sec_per_point", 1000, ".1f"),
]


def per_clip_delta(data, tracks: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """delta_avg of each clip alone, (B,)."""
    return np.array(
        [
            tapvid_metrics(
                data.query_points[b : b + 1],
                data.occluded[b : b + 1],
                data.tracks[b : b + 1],
                occ[b : b + 1],
                tracks[b : b + 1],
            )["average_pts_within_thresh"]
            for b in range(len(tracks))
        ]
    )


def markdown(results: dict, models: dict, ablation: dict, paired: dict, meta: dict) -> str:
    lines = [
        "# KL-tracing on held-out synthetic clips",
        "",
        f"{meta['clips']} test clips x {meta['points']} points, {meta['size']} px, frame 0 -> 1, "
        f"TAP-Vid 'first' protocol at native resolution; {meta['device']}. "
        "Thresholds in px; percentages.",
        "",
        "| method | " + " | ".join(c[0] for c in COLS) + " |",
        "|---|" + "---|" * len(COLS),
    ]
    for name, m in results.items():
        cells = [format(m[key] * scale, fmt) for _, key, scale, fmt in COLS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Models",
        "",
        "Held-out top-1 accuracy of hidden frame-1 codes, 10% of frame 1 revealed, against "
        "copying frame 0's code in place.",
        "",
        "| model | parameters | tracing settings | top-1 / copy (all zooms) | top-1 / copy "
        "(native zoom) | ms / point |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        a, n = m["accuracy_all_zooms"], m["accuracy_native"]
        lines.append(
            f"| {name} | {m['parameters']:,} | {m['trace']} | {100 * a['val_top1']:.1f}% / "
            f"{100 * a['copy_top1']:.1f}% (**{a['top1_over_copy']:.2f}x**) | "
            f"{100 * n['val_top1']:.1f}% / {100 * n['copy_top1']:.1f}% "
            f"(**{n['top1_over_copy']:.2f}x**) | {1000 * m['sec_per_point']:.1f} |"
        )
    if ablation:
        lines += [
            "",
            "## Which property carries the result",
            "",
            "| model | top-1 / copy (native) | KL δ_avg | KL EPE | RGB δ_avg | RGB EPE |",
            "|---|---|---|---|---|---|",
        ]
        for name, a in ablation.items():
            lines.append(
                f"| {name} | {a['top1_over_copy']:.2f}x | {100 * a['kl']['average_pts_within_thresh']:.1f} | "
                f"{a['kl']['epe']:.2f} | {100 * a['rgb']['average_pts_within_thresh']:.1f} | "
                f"{a['rgb']['epe']:.2f} |"
            )
    lines += ["", "## KL against the RGB-difference probe", ""]
    for name, d in paired.items():
        lines.append(
            f"- {name}: δ_avg(KL) − δ_avg(RGB) per clip = {100 * d['mean']:+.1f} points, 95% CI "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] over {d['n']} clips"
        )
    lines += [
        "",
        "KL-tracing runs one perturbed sequence per reveal mask and zoom window, plus clean "
        "ones that points sharing a window share; the RGB probe reads the same passes, so its "
        "time is the same. Classical flow computes a dense field forward and backward per "
        "frame pair. `zero motion` predicts every point stays put and visible.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--lras", default="kltrace-lras", help="'' to leave the LRAS row out")
    ap.add_argument("--ablation", nargs="*", default=[], help="label=checkpoint_dir")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--val-pairs", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = synthetic_set(args.clips, "test", args.size, 2, args.points)
    val_all = training_pairs(args.val_pairs, seed=1, split="val", max_gap=1)
    val_native = training_pairs(args.val_pairs, seed=2, split="val", max_gap=1, native=True)
    results, models, loaded, paired = {}, {}, {}, {}
    for name in [args.model] + ([args.lras] if args.lras else []):
        model, cfg = loaded[name] = load_tracer(name)
        tr: dict = {}
        res = evaluate_methods(model, data, cfg, methods=("kl", "rgb"), tracks_out=tr)
        for probe in ("kl", "rgb"):
            results[f"{probe} ({name})"] = res[probe]
        # KL against RGB on the same passes: paired per-clip delta_avg
        d_kl, d_rgb = per_clip_delta(data, *tr["kl"]), per_clip_delta(data, *tr["rgb"])
        paired[name] = asdict(paired_difference(d_kl, d_rgb))
        config = json.loads((hub.resolve(name)[1] / hub.CONFIG).read_text())
        models[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "trace": f"{cfg.n_masks} masks x zooms {list(cfg.scales)}, {cfg.reveal:.0%} revealed",
            "accuracy_all_zooms": code_accuracy(model, val_all, 0.1),
            "accuracy_native": code_accuracy(model, val_native, 0.1),
            "sec_per_point": res["kl"]["sec_per_point"],
            "trace_config": asdict(cfg),
            "training": config.get("training", {}).get("argv"),
        }
    base_model, base_cfg = loaded[args.model]
    classical = evaluate_methods(None, data, base_cfg, methods=tuple(FLOW_METHODS))
    results |= classical
    still = np.repeat(data.query_points[..., None, [2, 1]], 2, 2)
    results["zero motion"] = tapvid_metrics(
        data.query_points, data.occluded, data.tracks, np.zeros_like(data.occluded), still
    ) | {"sec_per_point": 0.0}

    ablation = {}
    previous = out / "kltrace.json"
    if not args.ablation and previous.exists():  # the ablation models live in runs/: keep
        ablation = json.loads(previous.read_text()).get("ablation", {})
    for item in args.ablation:
        label, path = item.split("=", 1)
        model, cfg = load_tracer(path)
        cfg = replace(base_cfg, thresholds=cfg.thresholds)  # the shipped tracing settings
        res = evaluate_methods(model, data, cfg, methods=("kl", "rgb"))
        acc = code_accuracy(model, val_native, 0.1)
        ablation[label] = {"kl": res["kl"], "rgb": res["rgb"], **acc}

    meta = {
        "clips": args.clips,
        "points": args.points,
        "size": args.size,
        "device": describe_device("cpu", threads=args.threads),
        "threads": args.threads,
        "model": args.model,
    }
    best_classical = min(results[m]["epe"] for m in FLOW_METHODS)
    kl, rgb = results[f"kl ({args.model})"], results[f"rgb ({args.model})"]
    zero = results["zero motion"]
    claims = {
        "kl_delta_avg_above_zero_motion_points": 100
        * (kl["average_pts_within_thresh"] - zero["average_pts_within_thresh"]),
        "kl_at_least_rgb_delta_avg": kl["average_pts_within_thresh"]
        >= rgb["average_pts_within_thresh"],
        "kl_epe_below_rgb_probe": kl["epe"] < rgb["epe"],
        "kl_epe_below_best_classical": kl["epe"] < best_classical,
        "top1_over_copy_native": models[args.model]["accuracy_native"]["top1_over_copy"],
        "top1_over_copy_all_zooms": models[args.model]["accuracy_all_zooms"]["top1_over_copy"],
    }
    record = {
        "meta": meta,
        "results": results,
        "models": models,
        "ablation": ablation,
        "paired_kl_minus_rgb_delta_avg": paired,
        "claims": claims,
    }
    (out / "kltrace.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    text = markdown(results, models, ablation, paired, meta)
    (out / "kltrace.md").write_text(text)
    print(text)
    print(json.dumps(claims, indent=2))

    # picture: a grid of points on one held-out clip, every method beside the truth
    world = sample_world(7, args.size, 2, split="test")
    video = world.render()
    pts = np.array(
        [(x + 0.5, y + 0.5) for y in range(4, args.size, 8) for x in range(4, args.size, 8)],
        dtype=np.float32,
    )
    gt, gt_occ = world.track(pts)
    res = trace_points(base_model, video[0], video[1], pts, base_cfg, keep_maps=True)
    est = {
        "KL-tracing": (res.targets["kl"], res.occluded["kl"]),
        "RGB-difference probe": (res.targets["rgb"], res.occluded["rgb"]),
        "DIS": track_with_flow(FLOW_METHODS["dis"], video[0], video[1], pts),
    }
    flow_figure(
        video[0], video[1], pts, est, out / "kltrace_flow.png", truth=(gt[:, 1], gt_occ[:, 1])
    )


if __name__ == "__main__":
    main()
