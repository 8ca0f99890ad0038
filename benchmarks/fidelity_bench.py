"""StreamingT2V prompt fidelity: do the generated videos show what the caption names?

Measured with the shipped attribute classifier (``fidelity-classifier``: its own 16 px
luma CNN for the shape, visibility by the world's luma rule, speed and motion from the
object's track; trained by scripts/train_fidelity_classifier.py, independent of APM's
frame encoder) on base-stage (16 px) videos of the shipped generators and on the world's
own clips of the same captions and seeds:

  CAM + APM   streaming-t2v (the shipped default)
  naive       streaming-naive

Protocol:
1. The base model's prompt gate (``longseq.streaming.evaluate.prompt_gate``) on the first
   chunks (8 frames, from the text alone): shape accuracy among visible frames >= 0.9 and
   speed agreement >= 0.75.
2. Per video: share of frames with the object at least half in view; shape accuracy
   among visible frames in the first third, the last third and all frames; speed and
   motion read from the whole track against the caption; speed agreement per block of 8
   frames; the shapes the classifier answers.
3. Accuracy per block of 8 frames, plotted over time (one line per generator, the world's
   clips as the reference).
4. Paired differences with 95% t-intervals (``longseq.stats``) over the videos: CAM + APM
   against naive, and last third against first third for each generator.
5. The text encoder's caption embeddings: cosine similarity of the token states the
   UNet's cross-attention sees, for caption pairs that differ in the shape word only,
   in the motion word only, and in the speed word only.

    python benchmarks/fidelity_bench.py [--seeds 100,101,102] [--frames 96]
    python benchmarks/fidelity_bench.py --quick      # 1 seed, 24 frames (a smoke run)
    # every later chunk the best of 3 by the first chunk's scorer, against one sample:
    python benchmarks/fidelity_bench.py --first-chunk streaming-first --chunk-candidates 3 \
        --against benchmarks/results/fidelity_first_chunk.json

Videos are generated one thread per process and kept in ``--cache`` (an .npz), so the
metrics can be recomputed without generating again; ``--only LABEL`` generates one
generator's videos into its cache and stops (one process per generator), and a run given
several ``--cache`` files reads them all. Writes benchmarks/results/fidelity.json,
fidelity.md and fidelity_time.png (suffixes ``_first_chunk``, ``_chunks<K>``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data import videoworld as vw
from longseq.stats import paired_difference
from longseq.streaming.evaluate import SHAPE_GATE, SPEED_GATE, VISIBLE_GATE, prompt_gate
from longseq.streaming.metrics import FIDELITY_BLOCK, prompt_fidelity
from longseq.utils import describe_device

RESULTS = Path(__file__).parent / "results"
GENERATORS = {"CAM + APM": "streaming-t2v", "naive": "streaming-naive"}
WORLD = "world clips"
COLUMNS = {  # key -> label
    "any_object": "any object pixels",
    "visible": "object visible (half or more)",
    "shape_early": "prompted shape, first third",
    "shape_late": "prompted shape, last third",
    "shape_all": "prompted shape, all",
    "speed_correct": "speed (whole video)",
    "speed_blocks": "speed (blocks of 8)",
    "motion_correct": "motion (whole video)",
}


def generate(
    captions,
    seeds,
    frames,
    steps,
    caches: list[Path],
    first_chunk: str | None = None,
    chunk_candidates: int = 1,
    only: str | None = None,
) -> dict[str, np.ndarray]:
    """Base-stage videos of each generator (or of ``only``), keyed "label|caption|seed",
    and the seconds each took (one thread), keyed "seconds|label|caption|seed". Every
    cache is read; new videos are written to the first."""
    from longseq.streaming import StreamingT2VPipeline

    videos: dict[str, np.ndarray] = {}
    for c in caches:
        if c.exists():
            videos.update(dict(np.load(c)))
    cache = caches[0] if caches else None
    for label, name in GENERATORS.items():
        if only is not None and label != only:
            continue
        pipe = None
        for caption, seed in itertools.product(captions, seeds):
            key = f"{label}|{caption}|{seed}"
            if key in videos and len(videos[key]) >= frames:
                continue
            pipe = pipe or StreamingT2VPipeline.from_pretrained(
                name, None, "cpu", first_chunk=first_chunk
            )
            t0 = time.perf_counter()
            out = pipe(
                caption,
                frames,
                seed=seed,
                progress=False,
                num_inference_steps=steps,
                chunk_candidates=chunk_candidates,
            )
            videos[key] = out.frames
            videos[f"seconds|{key}"] = np.array(time.perf_counter() - t0)
            print(
                f"{label} | {caption} | seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True
            )
            if cache is not None:
                np.savez_compressed(cache, **videos)
    return {k: v if k.startswith("seconds|") else v[:frames] for k, v in videos.items()}


def video_row(video: np.ndarray, caption: str, classifier) -> dict:
    fid = prompt_fidelity(video, caption, classifier)
    n = len(video)
    blocks = fid.blocks(FIDELITY_BLOCK)
    starts = range(0, n, FIDELITY_BLOCK)
    whole = fid.summary()
    answers = [s for s in fid.shape if s is not None]
    return {
        "visible": whole["visible"],
        "any_object": whole["any_object"],
        "shape_early": fid.summary(0, n // 3)["shape_accuracy"],
        "shape_late": fid.summary(n - n // 3)["shape_accuracy"],
        "shape_all": whole["shape_accuracy"],
        "speed_correct": whole["speed_correct"],
        "speed_blocks": float(np.nanmean(blocks["speed_correct"]))
        if np.isfinite(blocks["speed_correct"]).any()
        else float("nan"),
        "motion_correct": whole["motion_correct"],
        "mean_step_px": whole["mean_step"] * classifier.config.size,
        "speed_read": fid.speed,
        "motion_read": fid.motion,
        "answers": {s: answers.count(s) for s in classifier.config.shapes},
        "n_visible": int(fid.visible.sum()),
        "n_correct": int(np.nansum(fid.shape_correct)),
        "block_shape": blocks["shape_accuracy"].tolist(),
        "block_n_visible": [int(fid.visible[i : i + FIDELITY_BLOCK].sum()) for i in starts],
        "block_n_correct": [
            int(np.nansum(fid.shape_correct[i : i + FIDELITY_BLOCK])) for i in starts
        ],
        "block_visible": blocks["visible"].tolist(),
    }


def caption_separation() -> dict:
    """Cosine similarity of the text encoder's token states (flattened, as cross-attention
    sees them) for caption pairs differing in exactly one word, grouped by that word."""
    from longseq.streaming.text import TextEncoder

    encoder = TextEncoder()
    attrs = vw.all_captions()
    caps = [vw.caption_of(a) for a in attrs]
    states = encoder(caps).flatten(1)
    states = torch.nn.functional.normalize(states, dim=-1)
    pooled = torch.nn.functional.normalize(encoder(caps).sum(1), dim=-1)
    out = {}
    for key in vw.CAPTION_ATTRIBUTES:
        tok, pool = [], []
        for i, j in itertools.combinations(range(len(caps)), 2):
            diff = [k for k in vw.CAPTION_ATTRIBUTES if attrs[i][k] != attrs[j][k]]
            if diff == [key]:
                tok.append(float(states[i] @ states[j]))
                pool.append(float(pooled[i] @ pooled[j]))
        out[key] = {
            "tokens": float(np.mean(tok)),
            "pooled": float(np.mean(pool)),
            "pairs": len(tok),
        }
    return out


def _mean(rows: list[dict], key: str) -> float:
    vals = np.array([r[key] for r in rows], float)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", default="100,101,102", help="unseen seeds (the benchmark uses 0-15)")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: model's)")
    ap.add_argument(
        "--cache",
        type=Path,
        action="append",
        default=[],
        help=".npz of generated videos (reused; give several to read them all, the first is "
        "written)",
    )
    ap.add_argument(
        "--chunk-candidates",
        type=int,
        default=1,
        help="every later chunk sampled K times, the best by the first chunk's scorer kept "
        "(needs --first-chunk streaming-first, whose scorer it uses); suffix _chunks<K>",
    )
    ap.add_argument(
        "--against",
        type=Path,
        default=None,
        help="a fidelity JSON of the same prompts (e.g. one sample per chunk): paired "
        "differences of this run against it",
    )
    ap.add_argument(
        "--only",
        choices=list(GENERATORS),
        default=None,
        help="generate this generator's videos into --cache and stop",
    )
    ap.add_argument("--quick", action="store_true", help="1 seed, 24 frames (a smoke run)")
    ap.add_argument(
        "--first-chunk",
        default=None,
        help="a checkpoint making every first chunk (e.g. "
        "streaming-first); results get the suffix _first_chunk",
    )
    ap.add_argument("--no-text", action="store_true", help="skip the caption embeddings")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        seeds, args.frames = seeds[:1], 24
    if args.frames < 3 * FIDELITY_BLOCK:
        raise SystemExit(f"--frames must be at least {3 * FIDELITY_BLOCK}, got {args.frames}")
    captions = list(vw.HELD_OUT)
    if args.chunk_candidates < 1:
        raise SystemExit(f"--chunk-candidates must be >= 1, got {args.chunk_candidates}")
    if args.only and not args.cache:
        raise SystemExit("--only generates into a cache: give --cache")
    videos = generate(
        captions,
        seeds,
        args.frames,
        args.steps,
        args.cache,
        args.first_chunk,
        args.chunk_candidates,
        args.only,
    )
    if args.only:
        return
    gen_minutes = {
        label: sum(
            float(videos[f"seconds|{label}|{c}|{s}"])
            for c, s in itertools.product(captions, seeds)
            if f"seconds|{label}|{c}|{s}" in videos
        )
        / 60
        for label in GENERATORS
    }
    classifier, info = hub.load("fidelity-classifier")
    prompts = list(itertools.product(captions, seeds))
    rows: dict[str, list[dict]] = {WORLD: [], **{g: [] for g in GENERATORS}}
    gate: dict[str, dict] = {}
    firsts: dict[str, list[np.ndarray]] = {WORLD: [], **{g: [] for g in GENERATORS}}
    for caption, seed in prompts:
        world = vw.clip_for_caption(caption, seed=seed).render(args.frames, 16)
        rows[WORLD].append(video_row(world, caption, classifier))
        firsts[WORLD].append(world[:FIDELITY_BLOCK])
        for label in GENERATORS:
            v = videos[f"{label}|{caption}|{seed}"]
            rows[label].append(video_row(v, caption, classifier))
            firsts[label].append(v[:FIDELITY_BLOCK])
    caps = [c for c, _ in prompts]
    for label, chunks in firsts.items():
        gate[label] = prompt_gate(chunks, caps, classifier)
    results: dict = {
        "setup": {
            "captions": captions,
            "seeds": seeds,
            "frames": args.frames,
            "stage": "base (16 px)",
            "first_chunk": args.first_chunk,
            "chunk_candidates": args.chunk_candidates,
            "block": FIDELITY_BLOCK,
            "classifier": {"name": "fidelity-classifier", "metrics": info.extra.get("metrics")},
            "device": describe_device("cpu", threads=1),
            "threads": 1,
            "generation_minutes": {k: round(v, 1) for k, v in gen_minutes.items()},
        },
        "gate": {"shape": SHAPE_GATE, "speed": SPEED_GATE, "visible": VISIBLE_GATE, **gate},
        "rows": rows,
        "summary": {},
        "paired": {},
    }
    for label, rs in rows.items():
        s = {k: _mean(rs, k) for k in [*COLUMNS, "mean_step_px"]}
        for speed in vw.SPEEDS:
            sel = [r for (c, _), r in zip(prompts, rs, strict=True) if speed in c]
            s[f"mean_step_px_{speed}"] = _mean(sel, "mean_step_px")
        n_vis = sum(r["n_visible"] for r in rs)
        s["shape_pooled"] = sum(r["n_correct"] for r in rs) / n_vis if n_vis else float("nan")
        s["n_visible"] = n_vis
        answers = {k: sum(r["answers"][k] for r in rs) for k in classifier.config.shapes}
        total = max(sum(answers.values()), 1)
        s["answers"] = {k: v / total for k, v in answers.items()}
        n_vis_b = np.sum([r["block_n_visible"] for r in rs], axis=0)
        n_ok_b = np.sum([r["block_n_correct"] for r in rs], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            s["block_shape"] = np.where(n_vis_b > 0, n_ok_b / n_vis_b, np.nan).tolist()
        s["block_n_visible"] = n_vis_b.tolist()
        s["block_visible"] = np.mean([r["block_visible"] for r in rs], axis=0).tolist()
        results["summary"][label] = s

    def paired(a: list[dict], b: list[dict], ka: str, kb: str) -> dict | None:
        """None with fewer than 2 pairs where both values are finite."""
        x, y = np.array([r[ka] for r in a], float), np.array([r[kb] for r in b], float)
        if (np.isfinite(x) & np.isfinite(y)).sum() < 2:
            return None
        return asdict(paired_difference(x, y))

    for key in ("shape_all", "shape_early", "shape_late", "visible", "any_object", "speed_blocks"):
        results["paired"][f"CAM + APM - naive: {key}"] = paired(
            rows["CAM + APM"], rows["naive"], key, key
        )
    for label in rows:
        results["paired"][f"{label}: last third - first third, shape"] = paired(
            rows[label], rows[label], "shape_late", "shape_early"
        )
    if args.against is not None:
        other = json.loads(args.against.read_text())
        theirs = other["setup"]
        if (theirs["captions"], theirs["seeds"], theirs["frames"]) != (
            captions,
            seeds,
            args.frames,
        ):
            raise SystemExit(f"--against {args.against} is not of the same prompts and length")
        k = theirs.get("chunk_candidates", 1)
        for label in GENERATORS:
            for key in ("shape_all", "shape_early", "shape_late", "visible"):
                results["paired"][f"{label}: this run - {k} per chunk, {key}"] = paired(
                    rows[label], other["rows"][label], key, key
                )
    if not args.no_text:
        results["text_embeddings"] = caption_separation()
    suffix = (
        ("_quick" if args.quick else "")
        + ("_first_chunk" if args.first_chunk else "")
        + (f"_chunks{args.chunk_candidates}" if args.chunk_candidates > 1 else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fidelity{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"fidelity{suffix}.md").write_text(markdown(results))
    plot(results, args.out / f"fidelity_time{suffix}.png")
    print(markdown(results))


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.6))
    b = r["setup"]["block"]
    for label, s in r["summary"].items():
        x = np.arange(len(s["block_shape"])) * b + b / 2
        style = {"color": "black", "linestyle": "--"} if label == WORLD else {}
        axes[0].plot(x, s["block_shape"], marker="o", ms=3, label=label, **style)
        axes[1].plot(x, s["block_visible"], marker="o", ms=3, label=label, **style)
    axes[0].axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (4 shapes)")
    axes[0].axhline(SHAPE_GATE, color="red", lw=0.8, ls=":", label=f"gate {SHAPE_GATE}")
    axes[0].set(
        title="prompted shape among visible frames (pooled)",
        xlabel="frame (block of 8)",
        ylabel="accuracy",
        ylim=(0, 1.02),
    )
    axes[1].set(title="object at least half in view", xlabel="frame (block of 8)", ylim=(0, 1.02))
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    n = len(r["setup"]["captions"]) * len(r["setup"]["seeds"])
    fig.suptitle(f"Prompt fidelity over time, base stage (16 px), mean of {n} videos", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x: float, d: int = 2) -> str:
    return "-" if x != x else f"{x:.{d}f}"


def markdown(r: dict) -> str:
    s = r["setup"]
    cm = s["classifier"]["metrics"] or {}
    lines = [
        "# StreamingT2V prompt fidelity",
        "",
        f"{len(s['captions'])} held-out captions x {len(s['seeds'])} unseen seeds "
        f"({', '.join(map(str, s['seeds']))}), {s['frames']} frames, {s['stage']}; "
        + (f"every first chunk by `{s['first_chunk']}`; " if s.get("first_chunk") else "")
        + (
            f"every later chunk the best of {s['chunk_candidates']} by its scorer; "
            if s.get("chunk_candidates", 1) > 1
            else ""
        )
        + "generation "
        + ", ".join(f"{k} {v} min" for k, v in s["generation_minutes"].items())
        + f" on {s['device']} (a core shared with other work). "
        "Read by `fidelity-classifier` (held-out world frames, at least half in view: shape "
        f"{_f(cm.get('shape_heldout_accuracy', float('nan')), 4)}, visibility "
        f"{_f(cm.get('visible_heldout_agreement', float('nan')), 3)}, speed "
        f"{_f(cm.get('speed_heldout_agreement', float('nan')), 3)} per video and "
        f"{_f(cm.get('speed_heldout_block_agreement', float('nan')), 3)} per block of 8, "
        f"motion {_f(cm.get('motion_heldout_agreement', float('nan')), 2)}). "
        "Thirds: frames 0-31 and 64-95 at 96 frames. Mean over videos (a video without "
        "visible frames has no shape accuracy and is left out of that column and its pairs).",
        "",
        "## Base prompt gate (first chunk, 8 frames from the text alone)",
        "",
        f"| videos | object visible | shape accuracy among visible (gate ≥ {SHAPE_GATE}) "
        f"| speed agreement (gate ≥ {SPEED_GATE}) | object visible, per prompted shape "
        f"(gate: each ≥ {VISIBLE_GATE}) | passed |",
        "|---|---|---|---|---|---|",
    ]
    for label in r["summary"]:
        g = r["gate"][label]
        per_shape = ", ".join(f"{k} {_f(v['visible'])}" for k, v in g["per_shape"].items())
        lines.append(
            f"| {label} | {_f(g['visible'])} | {_f(g['shape_accuracy'])} "
            f"({g['n_visible']} frames) | {_f(g['speed_agreement'])} "
            f"({g['n_speed_read']} of {g['n']} read) | {per_shape} | "
            f"{'yes' if g['passed'] else '**no**'} |"
        )
    lines += [
        "",
        "## Long videos",
        "",
        "| videos | "
        + " | ".join(COLUMNS.values())
        + " | prompted shape, pooled visible frames | mean motion, slowly / quickly (px/frame) |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for label, x in r["summary"].items():
        cells = " | ".join(_f(x[k]) for k in COLUMNS)
        lines.append(
            f"| {label} | {cells} | {_f(x['shape_pooled'])} ({x['n_visible']} frames) | "
            f"{_f(x['mean_step_px_slowly'])} / {_f(x['mean_step_px_quickly'])} |"
        )
    shapes = list(next(iter(r["summary"].values()))["answers"])
    lines += [
        "",
        "What the classifier answers on visible frames (share of frames):",
        "",
        "| videos | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for label, x in r["summary"].items():
        lines.append(f"| {label} | " + " | ".join(_f(x["answers"][k]) for k in shapes) + " |")
    lines += [
        "",
        "Accuracy per block of 8 frames (prompted shape among the visible frames of all "
        "videos, pooled; the count of visible frames below each generator's row):",
        "",
    ]
    nb = len(next(iter(r["summary"].values()))["block_shape"])
    b = s["block"]
    lines += [
        "| videos | " + " | ".join(f"{i * b}-{i * b + b - 1}" for i in range(nb)) + " |",
        "|---|" + "---|" * nb,
    ]
    for label, x in r["summary"].items():
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in x["block_shape"]) + " |")
        lines.append("| visible frames | " + " | ".join(map(str, x["block_n_visible"])) + " |")
    lines += [
        "",
        "## Paired differences, mean [95% CI] over videos; **bold** where the interval excludes 0",
        "",
        "| comparison | difference | pairs |",
        "|---|---|---|",
    ]
    for name, d in r["paired"].items():
        if d is None:
            lines.append(f"| {name} | - (fewer than 2 pairs) | - |")
            continue
        cell = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        lines.append(f"| {name} | {f'**{cell}**' if d['excludes_zero'] else cell} | {d['n']} |")
    if "text_embeddings" in r:
        lines += [
            "",
            "## Caption embeddings (text encoder, token states as cross-attention sees them)",
            "",
            "| captions differ only in | cosine, token states | cosine, pooled | pairs |",
            "|---|---|---|---|",
        ]
        for key, t in r["text_embeddings"].items():
            lines.append(f"| {key} | {t['tokens']:.3f} | {t['pooled']:.3f} | {t['pairs']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
