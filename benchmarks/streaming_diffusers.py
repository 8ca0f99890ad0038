"""StreamingT2V on a diffusers base: CAM + APM against naive conditioning, both trained on
one ``UNet3DConditionModel`` by ``scripts/train_streaming.py --base``; the same comparison,
free and held, on the shipped world models (``--folder streaming-t2v --naive
streaming-naive``: no "base alone" row there).

Generators, all from one diffusers text-to-video folder (``--folder``):

  base alone   the folder's UNet; each chunk continues the last F_cond frames
               training-free ("replace" mode: the known frames re-noised at every step)
  naive        the last frame concatenated to the input, the UNet fine-tuned
               (``--stage naive --out NAIVE``; ``--naive NAIVE`` here)
  CAM + APM    CAM + APM on the frozen UNet (``--stage cam-apm``: FOLDER/streaming)
  ..., held    the same model sampled with ``hold_cond=True``: the chunk's conditioning
               frames held at their noised originals at every step, as "replace" does

Protocol (that of ``benchmarks/streaming_bench.py`` at the base stage, without an enhancer):

1. Gates (``longseq.streaming.evaluate.gates``) on ``--gate-prompts`` held-out prompts
   (``--split train --first-seed 1000``: training captions with seeds unseen in training,
   for choosing a setting without reading the held-out ones):
   the first chunks' colour error against the world's palette, the teacher-forced re-make
   of clean conditioning frames.
2. ``--prompts`` prompts of ``--split`` (held-out captions by default, one seed each from
   ``--first-seed``); every generator makes ``--frames`` frames from the same seed, same
   sampling settings.
3. ``video_metrics`` per video, and ``colour drift``: the frames' colour error against the
   world (``mean_colour_error``) in the last chunk less that in the first chunk, in levels
   (does streaming recolour the scene as it goes?).
4. Paired differences over prompts with 95% t-intervals (``COMPARISONS``).

    python benchmarks/streaming_diffusers.py --folder runs/world-unet3d \
        --naive runs/world-unet3d/naive [--prompts 16] [--frames 64] [--workers 2]
    python benchmarks/streaming_diffusers.py --folder streaming-t2v --naive streaming-naive \
        --steps 50 --name streaming_hold          # the shipped models, free and held
    python benchmarks/streaming_diffusers.py --folder streaming-t2v --naive streaming-naive \
        --steps 50 --split train --first-seed 1000 --out runs/val   # validation prompts

Writes benchmarks/results/NAME.json, .md and a frame strip (.png); NAME is
streaming_diffusers unless ``--name`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.videoworld import clip_for_caption
from longseq.media import frame_strip, labelled_rows, resize_video, write_image
from longseq.streaming import StreamingT2VPipeline
from longseq.streaming.evaluate import gate_prompts, gates, real_clip_metrics, video_metrics
from longseq.streaming.metrics import mean_colour_error
from longseq.utils import default_device, describe_device
from streaming_bench import KEYS, difference_cells, fmt, metric_head, paired, summary  # same folder

RESULTS = Path(__file__).parent / "results"
LABELS = ("base alone", "naive", "CAM + APM", "naive, held", "CAM + APM, held")
COMPARISONS = [  # (a, b): differences a - b
    ("CAM + APM", "naive"),
    ("CAM + APM, held", "naive, held"),
    ("naive, held", "naive"),
    ("CAM + APM, held", "CAM + APM"),
    ("naive", "base alone"),
    ("CAM + APM", "base alone"),
]
_PROMPTS = {
    "test": "held-out prompts (held-out captions x seeds)",
    "train": "validation prompts (training captions x seeds unseen in training)",
}
DKEYS = {**KEYS, "colour_drift": ("colour drift", 2)}
_PIPES: dict[str, StreamingT2VPipeline] = {}


def _shipped(args: argparse.Namespace) -> bool:
    """Is ``--folder`` a longseq checkpoint (memory inside it) rather than a diffusers folder?"""
    return str(args.folder) in hub.registry() or (Path(args.folder) / "config.json").is_file()


def labels(args: argparse.Namespace) -> tuple[str, ...]:
    return LABELS[1:] if _shipped(args) else LABELS


def _pipe(label: str, args: argparse.Namespace) -> StreamingT2VPipeline:
    if label not in _PIPES:
        kind = label.split(",")[0]
        if _shipped(args):  # each model is its own checkpoint
            name, memory = (args.naive if kind == "naive" else args.folder), None
        else:  # one base, memory weights beside it
            name = args.folder
            memory = {"base alone": False, "naive": args.naive, "CAM + APM": None}[kind]
        pipe = StreamingT2VPipeline.from_pretrained(
            str(name), None, default_device(args.device), memory
        )
        pipe.defaults.update(num_inference_steps=args.steps, guidance_scale=args.guidance)
        pipe.defaults["hold_cond"] = True if label.endswith(", held") else None
        _PIPES[label] = pipe
    return _PIPES[label]


def colour_drift(frames: np.ndarray, seams: list[int]) -> float:
    """Colour error against the world in the last chunk less that in the first, in levels."""
    err = mean_colour_error(frames)
    first, last = seams[0] if seams else len(frames), seams[-1] if seams else 0
    return float(err[last:].mean() - err[:first].mean())


def _job(job: tuple) -> dict:
    label, caption, seed, args = job
    torch.set_num_threads(1)
    pipe = _pipe(label, args)
    t0 = time.perf_counter()
    out = pipe(caption, args.frames, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    metrics = video_metrics(out.frames, seams=out.seams)
    metrics["colour_drift"] = colour_drift(out.frames, out.seams)
    return {
        "label": label,
        "seed": seed,
        "seams": out.seams,
        "metrics": metrics,
        "seconds": seconds,
        "frames": out.frames,
    }


def _gate_job(job: tuple) -> dict:
    label, args = job
    torch.set_num_threads(1)
    return {
        "label": label,
        **gates(_pipe(label, args), args.gate_prompts, args.split, first_seed=args.first_seed),
    }


def markdown(r: dict) -> str:
    s = r["setup"]
    title = "# StreamingT2V on a diffusers base: CAM + APM against naive conditioning"
    base = (
        f"Base: `{s['folder']}` ({s['base_parameters'] / 1e6:.2f}M-parameter "
        f"UNet3DConditionModel, {s['size']} px); naive model: `{s['naive']}`. "
    )
    if s.get("shipped"):
        title = "# StreamingT2V, shipped models: CAM + APM against naive, free and held"
        base = f"CAM + APM: `{s['folder']}`, naive: `{s['naive']}` ({s['size']} px). "
    lines = [
        title,
        "",
        base + f"{len(s['prompts'])} {_PROMPTS[s.get('split', 'test')]}, {s['frames']} "
        f"frames each, chunks of {s['chunk_frames']} frames conditioned on {s['cond_frames']}; "
        f"{s['steps']} DDIM steps, guidance {s['guidance']}. {s['device']} in each of "
        f"{s['workers']} processes, {s['wall_minutes']} min. Colour metrics in levels (0-255); "
        "mean ± std over prompts. Written by `benchmarks/streaming_diffusers.py`.",
        "",
        "## Gates",
        "",
        "| generator | base colour error (gate ≤ 4) | re-make error, all F_cond frames "
        "(gate ≤ 6) | re-make error, last frame (the naive model's gate) | passed |",
        "|---|---|---|---|---|",
    ]
    for label, g in r["gates"].items():
        lines.append(
            f"| {label} | {g['base_colour_error']:.2f} | {g['remake_error']:.2f} | "
            f"{g['remake_last_error']:.2f} | {'yes' if g['passed'] else '**no**'} |"
        )
    lines += ["", "## Long videos", "", *metric_head("generator", DKEYS)]
    lines.append(
        "| world clips (real) | "
        + " | ".join(fmt(r["world"], k, d) for k, (_, d) in DKEYS.items())
        + " |"
    )
    for label, g in r["generators"].items():
        x = g["summary"]
        lines.append(
            f"| {label} | " + " | ".join(fmt(x, k, d) for k, (_, d) in DKEYS.items()) + " |"
        )
    lines += [
        "",
        "Paired differences, mean [95% CI]; **bold** where the interval excludes 0:",
        "",
        *metric_head("comparison", DKEYS),
    ]
    for name, diffs in r["paired"].items():
        lines.append(f"| {name} | " + " | ".join(difference_cells(diffs, DKEYS)) + " |")
    lines += ["", "| generator | frames/s |", "|---|---|"]
    lines += [f"| {k} | {g['frames_per_s']:.2f} |" for k, g in r["generators"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--folder",
        required=True,
        help="diffusers folder (CAM + APM in streaming/) or a longseq CAM + APM checkpoint",
    )
    ap.add_argument(
        "--naive", required=True, help="the naive model trained on its UNet, or a checkpoint"
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="test: held-out captions (the benchmark); train: training captions (validation)",
    )
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first prompt")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps per chunk")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--gate-prompts", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="2 prompts, 16 frames (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="streaming_diffusers", help="name of the result files")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.frames, args.gate_prompts = 2, 16, 2
    gens = labels(args)
    comparisons = [(a, b) for a, b in COMPARISONS if a in gens and b in gens]
    for label in gens:  # every model loads before hours of work start
        _pipe(label, args)
    _PIPES.clear()  # the workers load their own
    prompts = gate_prompts(args.prompts, args.split, args.first_seed)
    t_start = time.time()
    with Pool(args.workers) as pool:
        gate_rows = pool.map(_gate_job, [(label, args) for label in gens])
        print(json.dumps(gate_rows, indent=1), flush=True)
        jobs = [(label, c, s, args) for c, s in prompts for label in gens]
        videos = pool.map(_job, jobs, chunksize=1)
    per = {label: [v["metrics"] for v in videos if v["label"] == label] for label in gens}
    seams = videos[0]["seams"]
    captions, seeds = [c for c, _ in prompts], [s for _, s in prompts]
    pipe = _pipe("CAM + APM", args)
    size = pipe._pixel_size(pipe.unet)
    world = real_clip_metrics(captions, args.frames, size, seeds, seams=seams)
    for row, (c, s) in zip(world, prompts, strict=True):
        row["colour_drift"] = colour_drift(
            clip_for_caption(c, seed=s).render(args.frames, size), seams
        )
    results: dict = {
        "gates": {g["label"]: g for g in gate_rows},
        "world": summary(world, DKEYS),
        "generators": {
            label: {
                "summary": summary(per[label], DKEYS),
                "per_prompt": per[label],
                "frames_per_s": args.frames
                * len(per[label])
                / sum(v["seconds"] for v in videos if v["label"] == label),
            }
            for label in gens
        },
        "paired": {f"{a} - {b}": paired(per[a], per[b], DKEYS) for a, b in comparisons},
        "setup": {
            "folder": str(args.folder),
            "naive": str(args.naive),
            "shipped": _shipped(args),
            "base_parameters": sum(
                p.numel() for p in getattr(pipe.unet, "unet", pipe.unet).parameters()
            ),
            "size": size,
            "prompts": prompts,
            "split": args.split,
            "frames": args.frames,
            "steps": args.steps,
            "guidance": args.guidance,
            "chunk_frames": pipe.chunk_frames,
            "cond_frames": pipe.cond_frames,
            "device": describe_device(default_device(args.device), threads=1),
            "workers": args.workers,
            "wall_minutes": round((time.time() - t_start) / 60, 1),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name + ("_quick" if args.quick else "")
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    caption, seed = prompts[0]
    real = clip_for_caption(caption, seed=seed).render(args.frames, size)
    rows = [
        (
            f"world clip\n(colours its own)\n{caption}",
            frame_strip(resize_video(real, (32, 32)), 10, scale=2),
        )
    ]
    for v in videos[: len(gens)]:
        rows.append((v["label"], frame_strip(resize_video(v["frames"], (32, 32)), 10, scale=2)))
    write_image(args.out / f"{name}_strip.png", labelled_rows(rows))
    print(markdown(results))


if __name__ == "__main__":
    main()
