"""StreamingT2V benchmark: does memory keep long videos consistent?

Generators, a 2 x 2 design over short-term memory (naive last-frame concatenation or
CAM) and long-term memory (APM or none), all on the same base model:

  naive            the last frame concatenated to the input     (streaming-naive)
  APM only         naive + APM                                   (streaming-naive-apm)
  CAM only         CAM on the frozen base                        (streaming-cam)
  CAM + APM        StreamingT2V                                  (streaming-t2v)

Protocol:
1. **Gates** before any comparison (``longseq.streaming.evaluate.gates``): the base
   model's colours against the world's palette, and each memory model's teacher-forced
   re-make of clean conditioning frames. A failed gate is reported beside the tables.
2. ``--prompts`` held-out prompts (held-out captions, one seed each); every generator
   continues the same first chunk (same seed, same base) for ``--frames`` frames, at
   16 px (base) and after the 32 px enhancer with randomized blending.
3. Metrics (``longseq.streaming.evaluate.video_metrics``): seam-jump ratio and share of
   seams above the within-chunk 95th percentile, object and background colour drift from
   the anchor (frame 0) and after re-appearances, palette error, SCuts (min_scene_len 4),
   MAWE (the authors' definition, colour-aware flow); the world's own clips at the same
   resolution for reference.
4. Paired differences over prompts with 95% t-intervals (``longseq.stats``): CAM + APM vs
   naive, CAM vs naive, and APM's effect with and without CAM.
5. Enhancer ablation on the CAM + APM videos: independent chunks / shared noise /
   randomized blending, seam flow std and seam jumps at the enhancer's seams.
6. Memory while generating (a fresh process per length; RSS added by generation).

    python benchmarks/streaming_bench.py [--prompts 16] [--frames 128] [--workers 2]
    python benchmarks/streaming_bench.py --quick                 # a smoke run

Writes benchmarks/results/streaming.json, streaming.md, streaming_strip.png and
streaming.gif.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.videoworld import clip_for_caption
from longseq.media import frame_strip, labelled_rows, resize_video, write_image, write_video
from longseq.stats import paired_difference
from longseq.streaming import BLENDINGS, StreamingT2VPipeline
from longseq.streaming.evaluate import gate_prompts, gates, real_clip_metrics, video_metrics
from longseq.utils import default_device, describe_device, process_memory_mib, reset_peak_memory

RESULTS = Path(__file__).parent / "results"
GENERATORS = {
    "naive": "streaming-naive",
    "APM only": "streaming-naive-apm",
    "CAM only": "streaming-cam",
    "CAM + APM": "streaming-t2v",
}
COMPARISONS = [  # (a, b): differences a - b
    ("CAM + APM", "naive"),
    ("CAM only", "naive"),
    ("CAM + APM", "CAM only"),
    ("APM only", "naive"),
]
KEYS = {  # metric -> (label, digits); lower is better for all of them
    "seam_jump_ratio": ("seam-jump ratio", 2),
    "seam_share_above_p95": ("seams > p95", 2),
    "object_drift": ("object drift", 1),
    "reappear_drift": ("drift after re-appearance", 1),
    "background_drift": ("background drift", 1),
    "palette_error": ("palette error", 1),
    "scuts": ("SCuts", 2),
    "mawe": ("MAWE", 1),
}
_PIPES: dict[str, StreamingT2VPipeline] = {}
FIRST_CHUNK: str | None = None  # --first-chunk: the checkpoint making every first chunk


def _pipe(name: str, device: str | None) -> StreamingT2VPipeline:
    if name not in _PIPES:
        _PIPES[name] = StreamingT2VPipeline.from_pretrained(
            name, "streaming-enhancer", default_device(device), first_chunk=FIRST_CHUNK
        )
    return _PIPES[name]


def _job(args: tuple) -> dict:
    """One generator on one prompt: base video, enhanced video, metrics, timings."""
    label, caption, seed, frames, steps, device = args
    torch.set_num_threads(1)
    pipe = _pipe(GENERATORS[label], device)
    t0 = time.perf_counter()
    base = pipe(caption, frames, seed=seed, progress=False, num_inference_steps=steps)
    t1 = time.perf_counter()
    enh = pipe.enhance(base.frames, caption, seed=seed, progress=False)
    t2 = time.perf_counter()
    return {
        "label": label,
        "seed": seed,
        "seams": base.seams,
        "base": video_metrics(base.frames, seams=base.seams),
        "enhanced": video_metrics(enh.frames, seams=base.seams),
        "base_s": t1 - t0,
        "enhance_s": t2 - t1,
        "frames_base": base.frames,
        "frames_enhanced": enh.frames,
    }


def _blend_job(args: tuple) -> dict:
    caption, seed, frames_base, blending, device = args
    torch.set_num_threads(1)
    pipe = _pipe(GENERATORS["CAM + APM"], device)
    enh = pipe.enhance(frames_base, caption, seed=seed, blending=blending, progress=False)
    m = video_metrics(enh.frames, seams=enh.seams)
    return {"blending": blending, "seed": seed, **m}


def _gate_job(args: tuple) -> dict:
    label, n, steps, device = args
    torch.set_num_threads(1)
    return {"label": label, **gates(_pipe(GENERATORS[label], device), n, "test", steps)}


def measure_memory(frames: int, device: str | None) -> None:
    """Child process: generate ``frames`` frames; print the memory the generation added."""
    torch.set_num_threads(1)
    dev = default_device(device)
    pipe = StreamingT2VPipeline.from_pretrained("streaming-t2v", None, dev)
    caption = gate_prompts(1)[0][0]
    pipe(caption, 16, progress=False, num_inference_steps=2)  # warm up allocators
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    reset_peak_memory()
    before = process_memory_mib()["rss"]
    for _ in pipe.stream(caption, frames, progress=False, num_inference_steps=2):
        pass  # streamed: only the newest chunk is held
    added = process_memory_mib()["peak"] - before
    if dev.type == "cuda":
        added = torch.cuda.max_memory_allocated(dev) / 2**20
    print(json.dumps({"frames": frames, "added_mib": added, "before_mib": before}))


def summary(rows: list[dict], keys: dict = KEYS) -> dict:
    """Mean, std and count over prompts of each metric of ``keys`` (finite values)."""
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            out[k] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": len(vals)}
    return out


def paired(rows_a: list[dict], rows_b: list[dict], keys: dict = KEYS) -> dict:
    """Paired differences per metric; a metric with fewer than 2 finite pairs (e.g. drift
    after re-appearance when few videos have one) is left out."""
    out = {}
    for k in keys:
        pairs = [(a[k], b[k]) for a, b in zip(rows_a, rows_b, strict=True) if k in a and k in b]
        if sum(np.isfinite(x) and np.isfinite(y) for x, y in pairs) >= 2:
            out[k] = asdict(paired_difference([x for x, _ in pairs], [y for _, y in pairs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: model's)")
    ap.add_argument("--gate-prompts", type=int, default=16)
    ap.add_argument("--memory-lengths", default="64,256,1024")
    ap.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="2 prompts, 24 frames (a smoke run)")
    ap.add_argument(
        "--first-chunk",
        default=None,
        help="a checkpoint making every first chunk (e.g. "
        "streaming-first); results get the suffix _first_chunk",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global FIRST_CHUNK
    FIRST_CHUNK = args.first_chunk  # read by the worker processes (forked after this)
    if args.measure_memory:
        measure_memory(args.measure_memory, args.device)
        return
    if args.quick:
        args.prompts, args.frames, args.gate_prompts = 2, 24, 2
        args.memory_lengths = "24,48"
    missing = [n for n in [*GENERATORS.values(), "streaming-enhancer"] if n not in hub.registry()]
    if missing:
        raise SystemExit(f"train these first (scripts/train_streaming.py): {missing}")
    prompts = gate_prompts(args.prompts, "test")
    t_start = time.time()
    with Pool(args.workers) as pool:
        gate_rows = pool.map(
            _gate_job, [(g, args.gate_prompts, args.steps, args.device) for g in GENERATORS]
        )
        print(json.dumps(gate_rows, indent=1), flush=True)
        jobs = [
            (label, caption, seed, args.frames, args.steps, args.device)
            for caption, seed in prompts
            for label in GENERATORS
        ]
        videos = pool.map(_job, jobs, chunksize=1)
        cam_apm = [v for v in videos if v["label"] == "CAM + APM"]
        blend_jobs = [
            (caption, seed, v["frames_base"], b, args.device)
            for (caption, seed), v in zip(prompts, cam_apm, strict=True)
            for b in BLENDINGS
        ]
        blends = pool.map(_blend_job, blend_jobs, chunksize=1)
    seams = videos[0]["seams"]
    captions, seeds = [c for c, _ in prompts], [s for _, s in prompts]
    real = {
        "16 px": real_clip_metrics(captions, args.frames, 16, seeds, seams=seams),
        "32 px": real_clip_metrics(captions, args.frames, 32, seeds, seams=seams),
    }
    results: dict = {"gates": {g["label"]: g for g in gate_rows}, "generators": {}, "paired": {}}
    results["world"] = {k: summary(v) for k, v in real.items()}
    per = {
        stage: {label: [v[stage] for v in videos if v["label"] == label] for label in GENERATORS}
        for stage in ("base", "enhanced")
    }
    for label in GENERATORS:
        mine = [v for v in videos if v["label"] == label]
        results["generators"][label] = {
            "checkpoint": GENERATORS[label],
            "base": summary(per["base"][label]),
            "enhanced": summary(per["enhanced"][label]),
            "per_prompt_base": per["base"][label],
            "per_prompt_enhanced": per["enhanced"][label],
            "base_frames_per_s": args.frames * len(mine) / sum(v["base_s"] for v in mine),
            "enhancer_frames_per_s": args.frames * len(mine) / sum(v["enhance_s"] for v in mine),
        }
    for stage in ("base", "enhanced"):
        results["paired"][stage] = {
            f"{a} - {b}": paired(per[stage][a], per[stage][b]) for a, b in COMPARISONS
        }
    results["enhancer"] = {
        b: summary([r for r in blends if r["blending"] == b])
        | {
            "seam_flow_std": float(
                np.mean([r["seam_flow_std"] for r in blends if r["blending"] == b])
            )
        }
        for b in BLENDINGS
    }
    memory = []
    for n in [int(x) for x in args.memory_lengths.split(",")]:
        cmd = [sys.executable, __file__, "--measure-memory", str(n)]
        if args.device:
            cmd += ["--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"memory added while generating {n} frames: {memory[-1]['added_mib']:.1f} MiB")
    results["memory"] = memory
    pipe = _pipe(GENERATORS["CAM + APM"], args.device)
    results["setup"] = {
        "prompts": prompts,
        "frames": args.frames,
        "device": describe_device(default_device(args.device), threads=1),
        "workers": args.workers,
        "threads_per_worker": 1,
        "defaults": pipe.defaults,
        "first_chunk": args.first_chunk,
        "chunk_frames": pipe.chunk_frames,
        "cond_frames": pipe.cond_frames,
        "enhancer_chunk_frames": pipe.enhancer_chunk_frames,
        "enhancer_overlap": pipe.enhancer_overlap,
        "wall_minutes": round((time.time() - t_start) / 60, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("_first_chunk" if args.first_chunk else "")
    (args.out / f"streaming{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"streaming{suffix}.md").write_text(markdown(results))
    _pictures(args, prompts, videos, suffix)
    print(markdown(results))


def _pictures(args, prompts, videos, suffix: str) -> None:
    """A labelled frame strip of prompt 0 (real clip, each generator at 16 px and after the
    enhancer) and a GIF of the real clip beside naive and CAM + APM, enhanced."""
    caption, seed = prompts[0]
    first = {v["label"]: v for v in videos if v["seed"] == seed}
    real = clip_for_caption(caption, seed=seed).render(args.frames, 32)
    rows = [(f"world clip, 32 px\n(colours its own)\n{caption}", frame_strip(real, 10, scale=2))]
    for label, v in first.items():
        up = resize_video(v["frames_base"], (32, 32))
        rows.append((f"{label}\nbase, 16 px", frame_strip(up, 10, scale=2)))
        rows.append((f"{label}\nenhanced, 32 px", frame_strip(v["frames_enhanced"], 10, scale=2)))
    write_image(args.out / f"streaming_strip{suffix}.png", labelled_rows(rows))
    gif = np.concatenate(
        [real, first["naive"]["frames_enhanced"], first["CAM + APM"]["frames_enhanced"]], 2
    )
    write_video(args.out / f"streaming{suffix}.gif", gif, fps=8, scale=3)


def fmt(m: dict, k: str, digits: int) -> str:
    return f"{m[k]['mean']:.{digits}f} ± {m[k]['std']:.{digits}f}" if k in m else "-"


def metric_head(first: str, keys: dict = KEYS) -> list[str]:
    """The header rows of a table with one column per metric of ``keys``."""
    return [
        f"| {first} | " + " | ".join(v[0] for v in keys.values()) + " |",
        "|---|" + "---|" * len(keys),
    ]


def difference_cells(diffs: dict, keys: dict = KEYS) -> list[str]:
    """One table cell per metric: mean [95% CI], bold where the interval excludes 0."""
    cells = []
    for k, (_, d) in keys.items():
        if k not in diffs:
            cells.append("-")
            continue
        x = diffs[k]
        cell = f"{x['mean']:+.{d}f} [{x['low']:+.{d}f}, {x['high']:+.{d}f}]"
        cells.append(f"**{cell}**" if x["excludes_zero"] else cell)
    return cells


def markdown(r: dict) -> str:
    s = r["setup"]
    lines = [
        "# StreamingT2V benchmark",
        "",
        f"{len(s['prompts'])} held-out prompts (held-out captions x seeds), {s['frames']} "
        f"frames each; base chunks of {s['chunk_frames']} frames conditioned on "
        f"{s['cond_frames']} (16 px), enhancer chunks of {s['enhancer_chunk_frames']} with "
        f"overlap {s['enhancer_overlap']} (32 px); sampling {s['defaults']}"
        + (f"; every first chunk by `{s['first_chunk']}`" if s.get("first_chunk") else "")
        + ". "
        f"{s['device']} in each of {s['workers']} processes, {s['wall_minutes']} min. "
        "Colour metrics in levels (0-255); mean ± std over prompts.",
        "",
        "## Gates",
        "",
        "| generator | base colour error (gate ≤ 4) | re-make error, all F_cond frames "
        "(gate ≤ 6) | re-make error, last frame (the naive models' gate) | passed | "
        "base palette error | colour error of new frames |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, g in r["gates"].items():
        lines.append(
            f"| {label} | {g['base_colour_error']:.2f} | {g['remake_error']:.2f} | "
            f"{g['remake_last_error']:.2f} | {'yes' if g['passed'] else '**no**'} | "
            f"{g['base_palette_error']:.1f} | {g['continue_colour_error']:.1f} |"
        )
    for stage, size in (("base", "16 px"), ("enhanced", "32 px")):
        lines += ["", f"## Long videos, {stage} ({size})", "", *metric_head("generator")]
        w = r["world"][size]
        lines.append(
            "| world clips (real) | "
            + " | ".join(fmt(w, k, d) for k, (_, d) in KEYS.items())
            + " |"
        )
        for label, g in r["generators"].items():
            x = g[stage]
            lines.append(
                f"| {label} | " + " | ".join(fmt(x, k, d) for k, (_, d) in KEYS.items()) + " |"
            )
        lines += [
            "",
            f"Paired differences ({stage}), mean [95% CI]; **bold** where the interval excludes 0:",
            "",
            *metric_head("comparison"),
        ]
        for name, diffs in r["paired"][stage].items():
            lines.append(f"| {name} | " + " | ".join(difference_cells(diffs)) + " |")
    lines += [
        "",
        "## Enhancer: joining chunks (CAM + APM base videos)",
        "",
        "| chunks | seam flow std ↓ | seam-jump ratio ↓ | SCuts ↓ |",
        "|---|---|---|---|",
    ]
    for b, e in r["enhancer"].items():
        lines.append(
            f"| {b} | {e['seam_flow_std']:.3f} | {fmt(e, 'seam_jump_ratio', 2)} | {fmt(e, 'scuts', 2)} |"
        )
    lines += [
        "",
        "## Speed and memory",
        "",
        "| generator | base frames/s | enhancer frames/s |",
        "|---|---|---|",
    ]
    for label, g in r["generators"].items():
        lines.append(
            f"| {label} | {g['base_frames_per_s']:.1f} | {g['enhancer_frames_per_s']:.1f} |"
        )
    lines += ["", "| frames generated | memory added (MiB) |", "|---|---|"]
    lines += [f"| {m['frames']} | {m['added_mib']:.1f} |" for m in r["memory"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
