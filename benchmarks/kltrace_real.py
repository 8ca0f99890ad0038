"""KL-tracing on frame pairs built from real photographs, beside the synthetic world
-> benchmarks/results/kltrace_real.json, kltrace_real.md.

Real pairs (``longseq.data.photopairs``, test split: photos shipped inside matplotlib and
scikit-learn, never used to train or to choose settings): global sub-pixel translation,
small rotation + scale, and a textured patch from another photo moving over a static
background; exact ground truth, 64 px frames, 16 query points each, frame 0 -> 1. World
rows: held-out clips of ``longseq.data.flowworld`` (test split), same protocol.

Methods: KL-tracing and the RGB-difference probe (one set of forward passes), DIS dense
flow with a forward-backward occlusion check, and zero motion (every point stays put and
visible). Per set: TAP-Vid "first" metrics, the median per-component error of visible
points (the precision), ms per point, and paired 95% intervals (over frame pairs) of
delta_avg(KL) - delta_avg(zero motion) and delta_avg(KL) - delta_avg(RGB).

    python benchmarks/kltrace_real.py [--pairs 48] [--clips 24] [--model kltrace-match]
        [--set NAME=VALUE ...]   # tracing settings, e.g. --set jitter=0 kl_threshold=0.98
                                 # or passes=1 (kl_refine_contrast=C: KL's fall-back)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from longseq.data.photopairs import MOTIONS, photo_set
from longseq.kltrace import DEFAULT_MODEL, evaluate_methods, load_tracer, synthetic_set
from longseq.kltrace.evaluate import SyntheticSet
from longseq.kltrace.metrics import tapvid_metrics
from longseq.stats import paired_difference
from longseq.utils import describe_device

RESULTS = Path(__file__).parent / "results"
METHODS = ("kl", "rgb", "dis", "zero")
LABELS = {"kl": "KL-tracing", "rgb": "RGB probe", "dis": "DIS", "zero": "zero motion"}


def subset(data: SyntheticSet, idx: list[int]) -> SyntheticSet:
    return SyntheticSet(
        data.videos[idx], data.query_points[idx], data.tracks[idx], data.occluded[idx]
    )


def scores(data: SyntheticSet, tracks: np.ndarray, occ: np.ndarray) -> dict:
    """TAP-Vid metrics, per-pair delta_avg and the median per-component error of the
    visible points."""
    m = tapvid_metrics(data.query_points, data.occluded, data.tracks, occ, tracks, "first")
    per_pair = [
        tapvid_metrics(
            data.query_points[b : b + 1],
            data.occluded[b : b + 1],
            data.tracks[b : b + 1],
            occ[b : b + 1],
            tracks[b : b + 1],
        )["average_pts_within_thresh"]
        for b in range(len(tracks))
    ]
    vis = ~data.occluded[:, :, 1]
    err = np.abs(tracks[:, :, 1] - data.tracks[:, :, 1])[vis]
    return m | {"per_pair_delta": per_pair, "median_component_error": float(np.median(err))}


def run_set(model, cfg, data: SyntheticSet) -> dict:
    tracks: dict = {}
    res = evaluate_methods(model, data, cfg, methods=("kl", "rgb", "dis"), tracks_out=tracks)
    still = np.repeat(data.query_points[..., None, [2, 1]], 2, 2).astype(np.float32)
    tracks["zero"] = (still, np.zeros_like(data.occluded))
    out = {}
    for name in METHODS:
        out[name] = scores(data, *tracks[name])
        out[name]["sec_per_point"] = res[name]["sec_per_point"] if name in res else 0.0
    return {"methods": out, "tracks": tracks}


def split_by_motion(data: SyntheticSet, run: dict) -> dict:
    """Per motion type: metrics recomputed on that type's pairs."""
    out = {}
    for motion in MOTIONS:
        idx = [i for i, m in enumerate(data.motions) if m == motion]
        sub = subset(data, idx)
        out[motion] = {
            name: scores(sub, tr[idx], oc[idx]) | {"sec_per_point": m["sec_per_point"]}
            for (name, (tr, oc)), m in zip(
                run["tracks"].items(), (run["methods"][k] for k in run["tracks"]), strict=True
            )
        }
    return out


def point_groups(data) -> dict[str, np.ndarray]:
    """Masks (B, N) of point groups of the real pairs: on the moving patch, on the static
    background beside it, and the least-textured third of all points (standard deviation
    of frame 0's grey levels in the 5x5 pixels around the point)."""
    b_idx = np.array([m == "patch" for m in data.motions])[:, None]
    moved = np.linalg.norm(data.tracks[:, :, 1] - data.tracks[:, :, 0], axis=-1) > 0
    grey = data.videos[:, 0].astype(np.float64).mean(-1)
    pad = np.pad(grey, ((0, 0), (2, 2), (2, 2)), mode="edge")
    xy = data.tracks[:, :, 0].astype(int).clip(0, grey.shape[-1] - 1)
    texture = np.array(
        [[pad[b, y : y + 5, x : x + 5].std() for x, y in xy[b]] for b in range(len(data.videos))]
    )
    return {
        "patch pairs: points on the moving patch": b_idx & moved,
        "patch pairs: static background": b_idx & ~moved,
        "least-textured third of all points": texture <= np.quantile(texture, 1 / 3),
    }


def group_scores(data, tracks: dict, groups: dict) -> dict:
    """Per group and method: delta_avg over the group's visible points (pooled), and the
    share of its visible points reported occluded."""
    vis = ~data.occluded[:, :, 1]
    out = {}
    for gname, mask in groups.items():
        sel = mask & vis
        row = {}
        for name, (tr, oc) in tracks.items():
            err = np.linalg.norm(tr[:, :, 1] - data.tracks[:, :, 1], axis=-1)[sel]
            row[name] = {
                "delta_avg": float(np.mean([(err < t).mean() for t in (1, 2, 4, 8, 16)])),
                "visible_flagged_occluded": float(oc[:, :, 1][sel].mean()),
                "points": int(sel.sum()),
            }
        out[gname] = row
    return out


def paired(methods: dict) -> dict:
    kl = methods["kl"]["per_pair_delta"]
    return {
        "kl_minus_zero": asdict(paired_difference(kl, methods["zero"]["per_pair_delta"])),
        "kl_minus_rgb": asdict(paired_difference(kl, methods["rgb"]["per_pair_delta"])),
    }


def markdown(rows: dict, groups: dict, meta: dict) -> str:
    lines = [
        "# KL-tracing on real-photo frame pairs and on the world",
        "",
        f"Model `{meta['model']}`, tracing settings {meta['trace']}. Real pairs: "
        f"{meta['pairs']} test pairs from photos shipped in matplotlib and scikit-learn "
        f"({meta['pairs'] // len(MOTIONS)} per motion type); world: {meta['clips']} held-out "
        f"clips. 64 px frames, {meta['points']} points each, frame 0 -> 1, TAP-Vid 'first' "
        f"metrics (thresholds in px, percentages); precision = median per-component error of "
        f"visible points. {meta['device']}.",
        "",
        "| set | method | δ_avg | EPE (px) | precision (px) | <1 | occl. acc. | AJ | ms / point |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, row in rows.items():
        for name in METHODS:
            m = row["methods"][name]
            lines.append(
                f"| {set_name} | {LABELS[name]} | {100 * m['average_pts_within_thresh']:.1f} | "
                f"{m['epe']:.2f} | {m['median_component_error']:.2f} | "
                f"{100 * m['pts_within_1']:.1f} | {100 * m['occlusion_accuracy']:.1f} | "
                f"{100 * m['average_jaccard']:.1f} | {1000 * m['sec_per_point']:.1f} |"
            )
    lines += [
        "",
        "Point groups of the real pairs (δ_avg over the group's visible points, pooled; in "
        "brackets the share of them reported occluded):",
        "",
        "| group | points | " + " | ".join(LABELS[m] for m in METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for gname, row in groups.items():
        cells = [
            f"{100 * row[m]['delta_avg']:.1f} ({100 * row[m]['visible_flagged_occluded']:.0f}%)"
            for m in METHODS
        ]
        lines.append(f"| {gname} | {row['kl']['points']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences of δ_avg per frame pair (points), 95% t intervals:",
        "",
        "| set | KL − zero motion | KL − RGB probe | pairs |",
        "|---|---|---|---|",
    ]
    for set_name, row in rows.items():
        z, r = row["paired"]["kl_minus_zero"], row["paired"]["kl_minus_rgb"]
        lines.append(
            f"| {set_name} | {100 * z['mean']:+.1f} [{100 * z['low']:+.1f}, {100 * z['high']:+.1f}] "
            f"| {100 * r['mean']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] | {z['n']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--pairs", type=int, default=48, help="real test pairs (a multiple of 3)")
    ap.add_argument("--clips", type=int, default=24, help="world test clips")
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--set", nargs="*", default=[], help="tracing setting NAME=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="kltrace_real", help="output file stem")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, cfg = load_tracer(args.model)
    for item in args.set:
        key, value = item.split("=", 1)
        if key == "kl_threshold":  # the absolute occlusion threshold of KL-tracing
            cfg.thresholds = {**cfg.thresholds, "kl": float(value)}
            continue
        if key == "kl_refine_contrast":  # KL-tracing's fall-back threshold of a pass
            cfg.refine_contrast = {**cfg.refine_contrast, "kl": float(value)}
            continue
        old = getattr(cfg, key)
        if isinstance(old, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--set {key}: true or false, got {value!r}")
            setattr(cfg, key, value.lower() == "true")
            continue
        setattr(cfg, key, type(old)(value) if not isinstance(old, str) else value)
    cfg.validate()
    real = photo_set(args.pairs, "test", n_points=args.points)
    world = synthetic_set(args.clips, "test", 64, 2, args.points)
    real_run, world_run = run_set(model, cfg, real), run_set(model, cfg, world)
    rows = {f"real: {k}": {"methods": v} for k, v in split_by_motion(real, real_run).items()}
    rows["real: all"] = {"methods": real_run["methods"]}
    rows["world"] = {"methods": world_run["methods"]}
    groups = group_scores(real, real_run["tracks"], point_groups(real))
    for row in rows.values():
        row["paired"] = paired(row["methods"])
    meta = {
        "model": args.model,
        "trace": (
            f"{cfg.n_masks} masks, zooms {list(cfg.scales)}, jitter {cfg.jitter}, "
            f"readout {cfg.readout}"
            + (
                f" (width {cfg.fit_width:g} sigma, reach {cfg.fit_reach:g} px)"
                if cfg.readout == "fit"
                else ""
            )
            + f", occlusion {cfg.occlusion}, {cfg.passes} pass(es) (gain {cfg.refine_gain:g}, "
            f"largest residual {cfg.refine_max_residual:g} px, largest motion "
            f"{cfg.max_motion:g} px, KL contrast >= {cfg.refine_contrast['kl']:g})"
        ),
        # infinite limits (no fall-back) as None: strict JSON
        "trace_config": {
            k: None if isinstance(v, float) and not np.isfinite(v) else v
            for k, v in asdict(cfg).items()
        },
        "pairs": args.pairs,
        "clips": args.clips,
        "points": args.points,
        "device": describe_device("cpu", threads=args.threads),
        "threads": args.threads,
    }
    ra, w = rows["real: all"], rows["world"]
    claims = {
        "real_kl_minus_zero_each_motion": {
            k: rows[f"real: {k}"]["paired"]["kl_minus_zero"] for k in MOTIONS
        },
        "real_kl_epe": ra["methods"]["kl"]["epe"],
        "real_kl_at_least_rgb": ra["methods"]["kl"]["average_pts_within_thresh"]
        >= ra["methods"]["rgb"]["average_pts_within_thresh"],
        "real_kl_occlusion_at_least_all_visible": ra["methods"]["kl"]["occlusion_accuracy"]
        >= ra["methods"]["zero"]["occlusion_accuracy"],
        "world_kl_delta_avg": w["methods"]["kl"]["average_pts_within_thresh"],
        "world_kl_occlusion_at_least_all_visible": w["methods"]["kl"]["occlusion_accuracy"]
        >= w["methods"]["zero"]["occlusion_accuracy"],
    }
    record = {"meta": meta, "rows": rows, "point_groups": groups, "claims": claims}
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    text = markdown(rows, groups, meta)
    (out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
