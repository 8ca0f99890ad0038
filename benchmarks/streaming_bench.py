"""StreamingT2V benchmark: long videos from held-out captions.

Generators (16 px base chunks, then the 32 px enhancer with randomized blending):
  naive autoregression   the last frame concatenated to the input (streaming-naive)
  StreamingT2V w/o APM   CAM only (the anchor dropped)
  StreamingT2V           CAM + APM
Enhancer ablation, on the StreamingT2V base videos: independent chunks / shared noise /
randomized blending. Metrics (longseq.streaming.evaluate): MAWE, SCuts, text alignment,
std of flow magnitude at the enhancer's seams; frames/s; peak memory vs video length
(a fresh process per length: CUDA peak allocation, or peak RSS on CPU).

    python benchmarks/streaming_bench.py [--prompts 4] [--frames 240] [--quick]

Writes benchmarks/results/streaming.json, streaming.md and a frame strip.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.videoworld import clip_for_caption, sample_clip
from longseq.media import frame_strip, write_image, write_video
from longseq.streaming import StreamingT2VPipeline
from longseq.streaming.evaluate import video_metrics
from longseq.utils import default_device, synchronize

RESULTS = Path(__file__).parent / "results"
METHODS = {
    "naive autoregression": ("streaming-naive", True),
    "StreamingT2V w/o APM": ("streaming-t2v", False),
    "StreamingT2V": ("streaming-t2v", True),
}
if "streaming-t2v-unfrozen" in hub.registry():  # ablation: the base fine-tuned too
    METHODS["StreamingT2V, base unfrozen"] = ("streaming-t2v-unfrozen", True)
BLENDS = {
    "independent chunks": "independent",
    "shared noise": "shared",
    "randomized blending": "random",
}
KEYS = ("mawe", "scuts", "text_alignment", "seam_flow_std", "flow_magnitude", "warp_error")


def held_out_prompts(n: int) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        c = sample_clip(i, "test").caption
        if c not in out:
            out.append(c)
        i += 1
    return out


def summarize(rows: list[dict]) -> dict:
    out = {}
    for k in KEYS:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    return out


def measure_memory(frames: int, device: str) -> None:
    """Child process: generate ``frames`` frames, print the peak memory in MiB."""
    dev = default_device(device)
    pipe = StreamingT2VPipeline.from_pretrained("streaming-t2v", None, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    pipe("a red circle bounces quickly over a striped gray background", frames, progress=False)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": frames, "peak_mib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--memory-lengths", default="24,60,120,240,480")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="2 prompts, 48 frames (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_memory:
        measure_memory(args.measure_memory, args.device)
        return
    if args.quick:
        args.prompts, args.frames, args.memory_lengths = 2, 48, "24,48"
    dev = default_device(args.device)
    prompts = held_out_prompts(args.prompts)
    encoder, _ = hub.load("streaming-frame-encoder", dev)
    pipes = {
        name: StreamingT2VPipeline.from_pretrained(name, "streaming-enhancer", dev)
        for name in {m for m, _ in METHODS.values()}
    }
    results: dict = {"methods": {}, "enhancer": {}, "world": {}}
    strips = {}

    # the world's own clips of the same captions: what real videos score
    real = []
    for i, p in enumerate(prompts):
        v = clip_for_caption(p, seed=i).render(args.frames, 32)
        real.append(video_metrics(v, p, encoder))
    results["world"] = summarize(real)
    strips["world (real clip)"] = clip_for_caption(prompts[0], 0).render(args.frames, 32)

    base_videos, blended = {}, {}  # StreamingT2V's base and randomized-blending videos
    for label, (name, use_anchor) in METHODS.items():
        pipe = pipes[name]
        rows_base, rows_enh, gen_s, enh_s = [], [], 0.0, 0.0
        for i, p in enumerate(prompts):
            print(f"{label}: {p}", flush=True)
            synchronize(dev)
            t0 = time.perf_counter()
            base = pipe(p, args.frames, use_anchor=use_anchor, seed=i)
            synchronize(dev)
            t1 = time.perf_counter()
            enh = pipe.enhance(base.frames, p, blending="random", seed=i)
            synchronize(dev)
            gen_s += t1 - t0
            enh_s += time.perf_counter() - t1
            rows_base.append(video_metrics(base.frames, p, encoder))
            rows_enh.append(video_metrics(enh.frames, p, encoder))
            if label == "StreamingT2V":
                base_videos[i], blended[i] = base.frames, enh
            if i == 0:
                strips[label] = enh.frames
        results["methods"][label] = {
            "base": summarize(rows_base),
            "enhanced": summarize(rows_enh),
            "per_prompt_base": rows_base,
            "base_frames_per_s": args.frames * len(prompts) / gen_s,
            "enhancer_frames_per_s": args.frames * len(prompts) / enh_s,
        }

    pipe = pipes["streaming-t2v"]
    for label, blending in BLENDS.items():
        rows = []
        for i, p in enumerate(prompts):
            print(f"enhancer, {label}: {p}", flush=True)
            if blending == "random":  # made above with the same seed
                enh = blended[i]
            else:
                enh = pipe.enhance(base_videos[i], p, blending=blending, seed=i)
            rows.append(video_metrics(enh.frames, p, encoder, seams=enh.seams))
        results["enhancer"][label] = {"metrics": summarize(rows), "per_prompt": rows}

    memory = []
    for n in [int(x) for x in args.memory_lengths.split(",")]:
        cmd = [sys.executable, __file__, "--measure-memory", str(n)]
        if args.device:
            cmd += ["--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"memory at {n} frames: {memory[-1]['peak_mib']:.0f} MiB", flush=True)
    results["memory"] = memory
    results["setup"] = {
        "prompts": prompts,
        "frames": args.frames,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "defaults": pipe.defaults,
        "chunk_frames": pipe.chunk_frames,
        "cond_frames": pipe.cond_frames,
        "enhancer_chunk_frames": pipe.enhancer_chunk_frames,
        "enhancer_overlap": pipe.enhancer_overlap,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"streaming{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"streaming{suffix}.md").write_text(markdown(results))
    strip = np.concatenate([frame_strip(v, 8, scale=3) for v in strips.values()], 0)
    write_image(args.out / f"streaming_strip{suffix}.png", strip)
    write_video(args.out / f"streaming{suffix}.gif", strips["StreamingT2V"][::2], fps=8, scale=3)
    print(markdown(results))


def _fmt(m: dict, k: str, digits: int = 2) -> str:
    return f"{m[k]['mean']:.{digits}f} ± {m[k]['std']:.{digits}f}" if k in m else "-"


def markdown(r: dict) -> str:
    s = r["setup"]
    lines = [
        "# StreamingT2V benchmark",
        "",
        f"{len(s['prompts'])} held-out captions, {s['frames']} frames each; base chunks of "
        f"{s['chunk_frames']} frames conditioned on {s['cond_frames']} (16 px), enhancer chunks "
        f"of {s['enhancer_chunk_frames']} with overlap {s['enhancer_overlap']} (32 px). "
        f"Device: {s['device']}, {s['threads']} threads. Mean ± std over captions. "
        "Flow metrics at 64 px (DIS).",
        "",
        "## Long videos",
        "",
        "| generator | stage | MAWE ↓ | SCuts ↓ | text alignment ↑ | flow magnitude | frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    w = r["world"]
    lines.append(
        f"| world clips (real) | 32 px | {_fmt(w, 'mawe', 1)} | {_fmt(w, 'scuts')} | "
        f"{_fmt(w, 'text_alignment', 3)} | {_fmt(w, 'flow_magnitude')} | - |"
    )
    for label, m in r["methods"].items():
        for stage in ("base", "enhanced"):
            fps = m["base_frames_per_s"] if stage == "base" else m["enhancer_frames_per_s"]
            x = m[stage]
            lines.append(
                f"| {label} | {stage} | {_fmt(x, 'mawe', 1)} | {_fmt(x, 'scuts')} | "
                f"{_fmt(x, 'text_alignment', 3)} | {_fmt(x, 'flow_magnitude')} | {fps:.1f} |"
            )
    lines += [
        "",
        "## Enhancer: joining chunks (StreamingT2V base videos)",
        "",
        "| chunks | seam flow std ↓ | MAWE ↓ | SCuts ↓ | text alignment ↑ |",
        "|---|---|---|---|---|",
    ]
    for label, e in r["enhancer"].items():
        x = e["metrics"]
        lines.append(
            f"| {label} | {_fmt(x, 'seam_flow_std', 3)} | {_fmt(x, 'mawe', 1)} | "
            f"{_fmt(x, 'scuts')} | {_fmt(x, 'text_alignment', 3)} |"
        )
    lines += [
        "",
        "## Peak memory vs video length (StreamingT2V base)",
        "",
        "| frames | peak MiB |",
        "|---|---|",
    ]
    lines += [f"| {m['frames']} | {m['peak_mib']:.0f} |" for m in r["memory"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
