"""StreamingT2V's shipped UNet against a diffusers ``UNet3DConditionModel`` of the same shape.

Why the shipped StreamingT2V models stay ``VideoUNet``s, measured. The shipped base
configuration (``BASE`` of ``scripts/train_streaming.py``: 16 px, channels 32/48/64,
attention at levels 2-3, 384-d text context of 16 tokens, 8-frame chunks) is built twice:

  VideoUNet   longseq.models.video_unet.VideoUNet (what the checkpoints are)
  UNet3D      diffusers.UNet3DConditionModel as close as the class allows: the same
              block_out_channels, one layer per block, plain blocks where VideoUNet has
              no attention, cross-attention dim 384, heads of 8 channels (VideoUNet: 4
              heads, 8-16 channels each; the same attention width either way)

each again with CAM + APM, the trained memory stages (``VideoUNet(cam=True,
apm=True)``; ``longseq.streaming.memory.attach_memory`` on the UNet3D), the base frozen
and only CAM/APM trained, as the recipe does; and the enhancer's configuration
(``ENHANCER``: 32 px, channels 24/32/48, attention at level 3, 12-frame chunks) both
ways. Measured on one CPU thread:

- parameters (all, and those the memory stage trains);
- CPU time (``time.process_time``) of a training step: forward, v-prediction-sized MSE
  loss, backward, gradient clipping, AdamW (batch 16, as the recipe), and of a sampling
  step (forward, no gradient, batch 2 as under guidance); the median of ``--steps``
  steps after ``--warmup``, the models taking turns step by step (so that they see the
  same machine load);
- the memory one training step adds (a fresh process per model: peak RSS over two
  steps less the RSS before them);
- what the recipe's training would take at the measured ratios (the stage times of
  ``docs/streaming.md``'s checkpoint table scaled by them).

    python benchmarks/streaming_unet.py [--steps 7] [--warmup 2]

Writes benchmarks/results/streaming_unet.json and streaming_unet.md (5-10 minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longseq.models.video_unet import VideoUNet, VideoUNetConfig
from longseq.streaming.memory import attach_memory
from longseq.utils import (
    describe_device,
    optimizer_step,
    process_memory_mib,
    seed_everything,
    timed,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TEXT_TOKENS, IMAGE_DIM = 16, 64  # the shipped text length and frame-encoder width
TRAIN_BATCH, SAMPLE_BATCH = 16, 2
#: the recipe's stage times, minutes of one core (docs/streaming.md, checkpoint table), and
#: which measured ratio scales each: a whole UNet trained (base) or CAM/APM on a frozen one
RECIPE_MINUTES = {
    "classifier": (1, None),
    "base": (38, "base"),
    "cam-apm": (65, "memory"),
    "cam": (58, "memory"),
    "naive": (61, "base"),
    "naive-apm": (61, "base"),
    "enhancer": (19, "enhancer"),
}
RECIPE_STEPS = {"classifier": 800, "enhancer": 800}  # the others 2,400
#: model -> (stage kind, architecture); each kind is timed as a VideoUNet / UNet3D pair
MODELS = {
    "VideoUNet": ("base", "VideoUNet"),
    "UNet3D": ("base", "UNet3D"),
    "VideoUNet + CAM + APM": ("memory", "VideoUNet"),
    "UNet3D + CAM + APM": ("memory", "UNet3D"),
    "VideoUNet enhancer": ("enhancer", "VideoUNet"),
    "UNet3D enhancer": ("enhancer", "UNet3D"),
}
PAIRS = {
    kind: tuple(n for n, (k, _) in MODELS.items() if k == kind)
    for kind in ("base", "memory", "enhancer")
}


def recipe() -> dict:
    """``BASE``, ``ENHANCER``, their chunk lengths and F_cond of
    ``scripts/train_streaming.py``."""
    spec = importlib.util.spec_from_file_location(
        "train_streaming", ROOT / "scripts/train_streaming.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {
        "base": dict(mod.BASE),
        "enhancer": dict(mod.ENHANCER),
        "chunk": mod.CHUNK,
        "enhancer_chunk": mod.ENH_CHUNK,
        "cond": mod.COND,
    }


def unet3d(base: dict, ctx_dim: int) -> torch.nn.Module:
    """A ``UNet3DConditionModel`` of ``base``'s shape (attention where it has attention)."""
    from longseq.streaming.folder import small_unet3d

    return small_unet3d(
        base["sample_size"], tuple(base["channels"]), tuple(base["attn_levels"]), ctx_dim
    )


def build(name: str, rc: dict) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The model ``name`` and the parameters its training stage updates."""
    torch.manual_seed(0)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    kind, arch = MODELS[name]
    shape = rc["enhancer" if kind == "enhancer" else "base"]
    cfg = VideoUNetConfig(**shape)
    if kind != "memory":  # a whole UNet trained
        model = VideoUNet(cfg) if arch == "VideoUNet" else unet3d(shape, cfg.ctx_dim)
        return model, list(model.parameters())
    if arch == "VideoUNet":  # CAM + APM as memory_model() in the recipe
        model = VideoUNet(VideoUNetConfig(**rc["base"], cam=True, apm=True, image_dim=IMAGE_DIM))
        model.init_cam_from_base()
        model.requires_grad_(False)
        params = model.memory_parameters()
        for p in params:
            p.requires_grad_(True)
        return model, params
    unet = unet3d(rc["base"], cfg.ctx_dim)  # CAM + APM as base_model() in the recipe
    unet.requires_grad_(False)
    model = attach_memory(unet, image_dim=IMAGE_DIM, n_text_tokens=TEXT_TOKENS)
    model.unet.eval()  # frozen: no dropout
    return model, model.memory_parameters()


class Bench:
    """One model with fixed inputs: ``train()`` and ``sample()`` run one step each."""

    def __init__(self, name: str, rc: dict):
        self.name = name
        self.model, self.params = build(name, rc)
        self.opt = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=0.01)
        kind = MODELS[name][0]
        self.memory = kind == "memory"
        gen = seed_everything(1)
        if kind == "enhancer":
            size, frames = rc["enhancer"]["sample_size"], rc["enhancer_chunk"]
        else:
            size, frames = rc["base"]["sample_size"], rc["chunk"]

        def inputs(b: int) -> dict:
            x = torch.randn(b, 3, frames, size, size, generator=gen)
            kw = dict(
                sample=x,
                timestep=torch.randint(0, 1000, (b,), generator=gen),
                encoder_hidden_states=torch.randn(b, TEXT_TOKENS, 384, generator=gen),
            )
            if self.memory:
                kw["cond_frames"] = torch.randn(b, 3, rc["cond"], size, size, generator=gen)
                kw["anchor_embeds"] = torch.randn(b, IMAGE_DIM, generator=gen)
            return kw

        self.train_in, self.sample_in = inputs(TRAIN_BATCH), inputs(SAMPLE_BATCH)
        self.target = torch.randn(self.train_in["sample"].shape, generator=gen)

    def train(self) -> None:
        self.model.train()
        if self.memory and hasattr(self.model, "unet"):
            self.model.unet.eval()
        loss = F.mse_loss(self.model(**self.train_in).sample, self.target)
        optimizer_step(self.opt, loss, self.model)

    @torch.no_grad()
    def sample(self) -> None:
        self.model.eval()
        self.model(**self.sample_in)


def count(params) -> int:
    return sum(p.numel() for p in params)


def measure_memory(name: str) -> None:
    """Child process: the memory two training steps of ``name`` add (MiB, peak RSS)."""
    torch.set_num_threads(1)
    bench = Bench(name, recipe())
    before = process_memory_mib()["rss"]
    bench.train()
    bench.train()
    peak = process_memory_mib()["peak"]
    print(json.dumps({"train_added_mib": peak - before, "before_mib": before}))


def time_models(benches: list[Bench], steps: int, warmup: int) -> dict[str, dict]:
    """Median CPU seconds of a training and a sampling step per model, taking turns."""
    out: dict[str, dict] = {b.name: {"train_s": [], "sample_s": []} for b in benches}
    for kind in ("train", "sample"):
        for _ in range(warmup):
            for b in benches:
                getattr(b, kind)()
        for i in range(steps):
            order = benches if i % 2 == 0 else benches[::-1]  # neither always goes first
            for b in order:
                out[b.name][f"{kind}_s"].append(timed(getattr(b, kind), clock=time.process_time))
            print(f"{kind} round {i + 1}/{steps} done", flush=True)
    return {
        n: {k: statistics.median(v) for k, v in d.items()} | {f"{k}_all": v for k, v in d.items()}
        for n, d in out.items()
    }


def retraining(models: dict[str, dict]) -> dict:
    """What the recipe's training would take with UNet3D models, two ways: each stage's
    time scaled by its training-step ratio (UNet3D / VideoUNet), and each stage's time
    plus its steps times the extra seconds a UNet3D step takes (the data making, the
    frame encoder's anchors and the rest of a step costing what they cost today)."""
    stages = {}
    for stage, (minutes, kind) in RECIPE_MINUTES.items():
        steps = RECIPE_STEPS.get(stage, 2400)
        ratio, extra_s = 1.0, 0.0
        if kind is not None:
            a, b = (models[n]["train_s"] for n in PAIRS[kind])
            ratio, extra_s = b / a, b - a
        stages[stage] = {
            "videounet_min": minutes,
            "steps": steps,
            "ratio": ratio,
            "extra_s_per_step": extra_s,
            "unet3d_min_scaled": minutes * ratio,
            "unet3d_min_added": minutes + steps * extra_s / 60,
        }
    total = {k: sum(s[k] for s in stages.values()) / 60 for k in next(iter(stages.values()))}
    return {
        "stages": stages,
        "videounet_hours": total["videounet_min"],
        "unet3d_hours_scaled": total["unet3d_min_scaled"],
        "unet3d_hours_added": total["unet3d_min_added"],
        "note": "stage minutes of one core from docs/streaming.md's checkpoint table; base, "
        "naive and naive-apm at the base pair's training step, cam-apm and cam at the CAM + "
        "APM pair's, the enhancer at the enhancer pair's, the frame encoder unchanged",
    }


def base_text(base: dict) -> str:
    levels = [str(i + 1) for i, a in enumerate(base["attn_levels"]) if a]
    return (
        f"{base['sample_size']} px, channels {'/'.join(map(str, base['channels']))}, "
        f"attention at level{'s' if len(levels) > 1 else ''} {', '.join(levels)}"
    )


def markdown(r: dict) -> str:
    m, rt = r["models"], r["retraining"]
    lines = [
        "# StreamingT2V: VideoUNet against diffusers UNet3DConditionModel\n",
        f"Shipped base configuration ({base_text(r['setup']['base'])}), "
        f"{r['setup']['chunk_frames']}-frame chunks (F_cond {r['setup']['cond_frames']}); "
        f"enhancer ({base_text(r['setup']['enhancer'])}), "
        f"{r['setup']['enhancer_chunk_frames']}-frame chunks; {TEXT_TOKENS} text tokens of 384. "
        f"{r['setup']['device']}; torch {r['setup']['torch']}, diffusers "
        f"{r['setup']['diffusers']}. CPU time (process_time), median of {r['setup']['steps']} "
        f"steps after {r['setup']['warmup']}, the models taking turns. Written by "
        "`benchmarks/streaming_unet.py`.\n",
        "| model | parameters | trained in its stage | train step, batch 16 (s) | "
        "sampling step, batch 2 (s) | memory a training step adds (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        d = m[name]
        mem = d.get("train_added_mib")
        lines.append(
            f"| {name} | {d['params']:,} | {d['trained_params']:,} | {d['train_s']:.3f} | "
            f"{d['sample_s']:.4f} | {'-' if mem is None else f'{mem:.0f}'} |"
        )
    lines += [
        "",
        "| ratio UNet3D / VideoUNet | parameters | trained | train step | sampling step | "
        "memory a training step adds |",
        "|---|---|---|---|---|---|",
    ]
    label = {"base": "base", "memory": "CAM + APM", "enhancer": "enhancer"}
    for kind, d in r["ratios"].items():
        mem = d.get("train_memory")
        lines.append(
            f"| {label[kind]} | {d['params']:.2f} | {d['trained_params']:.2f} | "
            f"{d['train']:.2f} | {d['sample']:.2f} | {'-' if mem is None else f'{mem:.2f}'} |"
        )
    lines += [
        "",
        f"Retraining the recipe (about {rt['videounet_hours']:.1f} hours of one core today) on "
        f"UNet3D models: about {rt['unet3d_hours_scaled']:.1f} hours with every stage's time "
        f"scaled by its training-step ratio, or {rt['unet3d_hours_added']:.1f} hours with "
        "the measured extra seconds of each step added to today's stage times. "
        f"{rt['note'][:1].upper()}{rt['note'][1:]}.\n",
        "What differs in the UNet3D (what the class fixes): "
        + "; ".join(r["setup"]["differences"])
        + ".\n",
        f"Total wall time {r['setup']['wall_s'] / 60:.1f} min; load average before and after "
        f"{r['setup']['load_before']:.2f} / {r['setup']['load_after']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


DIFFERENCES = [
    "each residual block is a 2-D ResNet block (two 3x3 convolutions) followed by four "
    "temporal 3x1x1 convolutions (VideoUNet: one 3x3 and one 3x1x1 convolution)",
    "the up path has two residual blocks per level (layers_per_block + 1) where VideoUNet "
    "has one, and skips also from conv_in and from each downsampler",
    "the mid block has two residual blocks around its attention (VideoUNet: one)",
    "a temporal transformer after conv_in (transformer_in, 8 heads of 8 channels) that "
    "VideoUNet has no counterpart of",
    "attention blocks: a spatial transformer (self-attention, cross-attention, GEGLU MLP, "
    "linear in/out projections and a GroupNorm) and a temporal transformer (two temporal "
    "self-attentions and a GEGLU MLP), against VideoUNet's one block of spatial, temporal "
    "and cross-attention with a GELU MLP",
    "heads of 8 channels (4, 6, 8 heads at 32, 48, 64 channels) against VideoUNet's 4 heads "
    "a layer; the attention width, and so its cost, is the same",
    "CAM copies the encoder and mid block and injects into all its skips and the mid "
    "block's output (VideoUNet: the encoder, one injection per level)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=7, help="timed steps per model and kind")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--out", type=Path, default=RESULTS / "streaming_unet")
    ap.add_argument("--measure-memory", choices=MODELS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    torch.set_num_threads(1)
    if args.measure_memory:
        measure_memory(args.measure_memory)
        return
    import diffusers

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rc = recipe()
    benches = [Bench(n, rc) for n in MODELS]
    models = {
        b.name: {"params": count(b.model.parameters()), "trained_params": count(b.params)}
        for b in benches
    }
    for name, t in time_models(benches, args.steps, args.warmup).items():
        models[name] |= t
    del benches
    if not args.no_memory:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for name in MODELS:
            cmd = [sys.executable, __file__, "--measure-memory", name]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            models[name] |= json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{name}: a training step adds {models[name]['train_added_mib']:.0f} MiB")
    ratios = {}
    for kind, (a, b) in PAIRS.items():
        ma, mb = models[a], models[b]
        ratios[kind] = {
            "params": mb["params"] / ma["params"],
            "trained_params": mb["trained_params"] / ma["trained_params"],
            "train": mb["train_s"] / ma["train_s"],
            "sample": mb["sample_s"] / ma["sample_s"],
        }
        if "train_added_mib" in ma and "train_added_mib" in mb:
            ratios[kind]["train_memory"] = mb["train_added_mib"] / ma["train_added_mib"]
    res = {
        "setup": {
            "base": rc["base"],
            "chunk_frames": rc["chunk"],
            "enhancer": rc["enhancer"],
            "enhancer_chunk_frames": rc["enhancer_chunk"],
            "cond_frames": rc["cond"],
            "text_tokens": TEXT_TOKENS,
            "ctx_dim": 384,
            "image_dim": IMAGE_DIM,
            "train_batch": TRAIN_BATCH,
            "sample_batch": SAMPLE_BATCH,
            "steps": args.steps,
            "warmup": args.warmup,
            "clock": "time.process_time (CPU seconds of this process)",
            "device": describe_device("cpu"),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "differences": DIFFERENCES,
            "load_before": load0,
            "load_after": os.getloadavg()[0],
            "wall_s": time.perf_counter() - t0,
        },
        "models": models,
        "ratios": ratios,
        "retraining": retraining(models),
    }
    write_results(args.out, res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
