"""StreamingT2V: long text-to-video by autoregressive chunks, and the enhancer with
randomized blending, as a pipeline in the ``diffusers`` style.

The pipeline drives any denoiser with the ``diffusers`` 3-D UNet call
``unet(sample, t, encoder_hidden_states=...).sample`` on (B, C, F, H, W) samples (the
:class:`~longseq.streaming.Denoiser` protocol) and any ``diffusers`` scheduler
(``set_timesteps``/``scale_model_input``/``step``/``add_noise``).
How a chunk is tied to the previous one depends on the denoiser:

- ``cam``: a :class:`~longseq.models.video_unet.VideoUNet` with CAM, or a
  ``diffusers`` UNet with CAM attached (:class:`~longseq.streaming.StreamingUNet`), gets
  the last ``F_cond`` frames as ``cond_frames`` (and, with APM, the anchor embedding);
- ``concat``: the naive baseline, a model with ``concat_cond`` (last frame
  concatenated to its input), or an SVD-layout image-to-video UNet
  (:class:`~longseq.streaming.ImageToVideoDenoiser`);
- ``replace``: any plain text-to-video UNet (e.g. ``diffusers.UNet3DConditionModel``):
  the first ``F_cond`` frames of the chunk are overwritten at every step by the
  conditioning frames noised to that step (training-free).

Every chunk has ``F`` frames; the first ``F_cond`` overlap the conditioning frames
and are dropped, so each chunk adds ``F - F_cond`` frames. Only those frames, the
anchor and the model are kept: memory does not grow with the video's length.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longseq.data.videoworld import to_tensor, to_uint8
from longseq.streaming.denoiser import check_denoiser, join_chunks, randomized_blending
from longseq.utils import progress_bar

BLENDINGS = ("random", "shared", "independent")


@dataclass
class StreamingOutput:
    frames: np.ndarray  # (T, H, W, 3) uint8
    seams: list[int] = field(default_factory=list)  # first frame of each chunk after the first


def _conditioning(unet: Any) -> str:
    cfg = getattr(unet, "config", None)
    if getattr(cfg, "cam", False):
        return "cam"
    if getattr(cfg, "concat_cond", False):
        return "concat"
    return "replace"


def _param(module: Any) -> torch.Tensor:
    """A tensor on the module's device, of its dtype (CPU float32 for a plain callable)."""
    for get in ("parameters", "buffers"):
        for t in getattr(module, get, lambda: ())():
            return t
    return torch.empty(0)


def _sample_shape(unet: Any, frames: int, batch: int = 1) -> tuple[int, ...]:
    cfg = unet.config
    size = cfg.sample_size
    size = size if isinstance(size, int) else size[0]
    return (batch, cfg.in_channels, frames, size, size)


def _check_interval(interval: Any) -> tuple[float, float] | None:
    """``guidance_interval``: None, or (lo, hi) with 0 <= lo < hi <= 1."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval must be a pair (lo, hi) of fractions of the noise schedule, "
            f"got {interval!r}"
        ) from None
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance_interval needs 0 <= lo < hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


def chunk_starts(n_frames: int, chunk: int, overlap: int) -> list[int]:
    """Start frames of overlapping chunks covering ``n_frames`` (the last one flush with
    the end, so its overlap may be larger)."""
    if not 0 <= overlap < chunk:
        raise ValueError(f"overlap must be in [0, chunk), got {overlap} for chunk {chunk}")
    if n_frames <= chunk:
        return [0]
    starts = list(range(0, n_frames - chunk + 1, chunk - overlap))
    if starts[-1] + chunk < n_frames:
        starts.append(n_frames - chunk)
    return starts


#: the role of each shipped checkpoint that is not a video generator
ROLES = {"streaming-enhancer": "enhancer", "streaming-frame-encoder": "frame encoder"}


def _check_enhancer(name: str, enhancer: Any, config: dict, unet: Any) -> None:
    """An enhancer is a plain text-to-video UNet (no chunk conditioning, no anchor) at a
    higher resolution than the generator's frames."""
    role = ROLES.get(name)
    if config.get("architecture") != "video_unet" or role == "frame encoder":
        raise ValueError(f"the enhancer {name!r} is not a video UNet")
    if _conditioning(enhancer) != "replace" or getattr(enhancer.config, "apm", False):
        raise ValueError(
            f"the enhancer {name!r} is a chunk-conditioned video generator, not an "
            "enhancer (shipped enhancer: streaming-enhancer)"
        )
    size = lambda m: _sample_shape(m, 1)[-1]  # noqa: E731
    if size(enhancer) <= size(unet):
        raise ValueError(
            f"the enhancer {name!r} works at {size(enhancer)} px, not above the generator's "
            f"{size(unet)} px, so it cannot refine its frames"
        )


def encode_frames(vae: Any, x: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, F, H, W) in [-1, 1] -> latents (B, C, F, h, w), per frame through a
    ``diffusers.AutoencoderKL`` (the distribution's mode, times its scaling factor)."""
    b, _, f = x.shape[:3]
    flat = x.transpose(1, 2).flatten(0, 1).to(_param(vae))
    lat = torch.cat([vae.encode(z).latent_dist.mode() for z in flat.split(16)])
    lat = lat * vae.config.scaling_factor
    return lat.unflatten(0, (b, f)).transpose(1, 2).to(x)


class StreamingT2VPipeline:
    """``pipe(prompt, num_frames=240).frames`` -> (T, H, W, 3) uint8.

    ``text_encoder(prompts) -> (B, N, D)`` token states (``longseq.streaming.TextEncoder``
    or any callable); ``image_encoder.embed(images) -> (B, d)`` gives the APM anchor
    embedding; ``first_unet`` makes the first chunk (default: ``unet``; the naive model
    needs one); ``first_chunk_scorer(candidates, prompt) -> scores`` picks the first
    chunk among ``first_chunk_candidates`` samples (:class:`CaptionCritic` for the world's
    models); ``enhancer`` is a text-to-video UNet at a higher resolution used by
    :meth:`enhance`. With a ``vae`` (``diffusers.AutoencoderKL``, applied per frame) the
    UNets work on latents, as real text-to-video models do; without one, on pixels.
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        text_encoder: Callable[[list[str]], torch.Tensor],
        image_encoder: Any = None,
        first_unet: Any = None,
        enhancer: Any = None,
        vae: Any = None,
        chunk_frames: int = 16,
        cond_frames: int = 8,
        enhancer_chunk_frames: int = 24,
        enhancer_overlap: int = 8,
        first_chunk_scorer: Callable[[np.ndarray, str], Any] | None = None,
    ) -> None:
        check_denoiser(unet)
        if first_chunk_scorer is not None and not callable(first_chunk_scorer):
            raise TypeError(
                "first_chunk_scorer must be a callable (candidates, prompt) -> scores, "
                f"got {type(first_chunk_scorer).__name__}"
            )
        self.first_chunk_scorer = first_chunk_scorer
        for name, m in (("first_unet", first_unet), ("enhancer", enhancer)):
            if m is not None:
                check_denoiser(m, name)
        if not 0 < cond_frames < chunk_frames:
            raise ValueError(
                f"need 0 < cond_frames < chunk_frames, got {cond_frames} and {chunk_frames}"
            )
        self.unet, self.scheduler, self.text_encoder = unet, scheduler, text_encoder
        self.image_encoder, self.enhancer, self.vae = image_encoder, enhancer, vae
        self._temporal_vae = (
            vae is not None and "num_frames" in inspect.signature(vae.decode).parameters
        )
        self.first_unet = first_unet or unet
        self.mode = _conditioning(unet)
        self.image_to_video = bool(getattr(self.first_unet.config, "image_to_video", False))
        if _conditioning(self.first_unet) == "concat" and not self.image_to_video:
            raise ValueError(
                "the naive (concat) model cannot make the first chunk: pass first_unet"
            )
        self.chunk_frames, self.cond_frames = chunk_frames, cond_frames
        self.enhancer_chunk_frames, self.enhancer_overlap = enhancer_chunk_frames, enhancer_overlap
        self.apm = bool(getattr(unet.config, "apm", False))
        # sampling defaults; a shipped checkpoint stores the values it was tuned with
        self.defaults: dict[str, float] = {
            "num_inference_steps": 25,
            "guidance_scale": 7.5,  # joint over text and anchor (the authors' setting)
            "anchor_guidance_scale": None,  # a number: the anchor's own scale
            # (lo, hi): guide only where t / num_train_timesteps is in [lo, hi], else scale 1
            "guidance_interval": None,
            "enhancer_guidance_scale": 7.5,
            "strength": 0.6,
            # hold a chunk's conditioning frames at their noised originals while sampling
            # (lower seam jumps for every memory model measured); False: the model re-makes
            # them freely; None: held only where the model has no memory ("replace" mode)
            "hold_cond": True,
            # first chunks sampled, the best kept by first_chunk_scorer (1: no choice)
            "first_chunk_candidates": 1,
            # later chunks sampled per chunk, the best kept by the same scorer
            "chunk_candidates": 1,
        }
        if self.apm and image_encoder is None:
            raise ValueError("this model has APM: pass image_encoder for the anchor frame")

    @classmethod
    def from_pretrained(
        cls,
        name: str | Path = "streaming-t2v",
        enhancer: str | Path | None = "streaming-enhancer",
        device: str | torch.device = "cpu",
        memory: str | Path | bool | None = None,
        first_chunk: str | Path | None = None,
    ) -> StreamingT2VPipeline:
        """The shipped models, checkpoint directories written by ``hub.save_pretrained``, or
        a ``diffusers`` text-to-video folder (``TextToVideoSDPipeline`` layout: ``unet/``,
        ``text_encoder/``, ``tokenizer/``, ``scheduler/``, optional ``vae/``) with or
        without trained CAM/APM in its ``streaming/`` subfolder. For such a folder
        ``enhancer`` is another diffusers folder whose UNet refines the video (sharing the
        generator's VAE and text encoder); the shipped enhancer belongs to the shipped
        world models and is not used with one. ``memory`` picks the trained CAM/APM or
        naive weights of a diffusers folder: a folder the training script wrote (several
        can be trained on one base), None for ``streaming/`` when present, False for the
        base alone (chunks conditioned training-free, "replace" mode). ``first_chunk``
        names a longseq checkpoint that makes the first chunk instead of the generator's
        own base (``streaming-first``: a base trained for it); the scorer and the number
        of candidates its config names come with it."""
        from diffusers import DDIMScheduler

        from longseq import hub
        from longseq.streaming.folder import is_diffusers_folder, load_folder
        from longseq.streaming.text import TextEncoder

        if not isinstance(name, str | Path):
            raise TypeError(f"name must be a model name or folder, got {type(name).__name__}")
        if name not in hub.registry() and is_diffusers_folder(name):
            if first_chunk is not None:
                raise ValueError(
                    "first_chunk applies to longseq checkpoints; a diffusers folder makes its "
                    "first chunk with its own UNet"
                )
            enhancer = None if enhancer == "streaming-enhancer" else enhancer
            return cls(**load_folder(name, enhancer, device, memory))
        if memory not in (None, False):
            raise ValueError(
                f"memory applies to a diffusers folder; {name!r} is a longseq checkpoint, "
                "whose memory modules are inside it"
            )
        folder = Path(name)
        if (
            name not in hub.registry()
            and folder.is_dir()
            and not (folder / "config.json").is_file()
        ):
            raise hub.CheckpointError(
                f"{folder} is neither a longseq checkpoint (config.json, model.safetensors) "
                "nor a diffusers text-to-video folder (unet/, text_encoder/, tokenizer/, "
                "scheduler/, optional vae/)"
            )
        unet, info = hub.load(name, device)
        meta = info.extra.get("streaming")
        if meta is None or info.config.get("architecture") != "video_unet":
            raise hub.CheckpointError(f"checkpoint {name!r} is not a StreamingT2V video model")
        if ROLES.get(name, "generator") != "generator":
            raise ValueError(
                f"{name!r} is the {ROLES[name]}, not a video generator; give it as "
                f"{'enhancer' if ROLES[name] == 'enhancer' else 'the frame encoder'} "
                "(generators: streaming-t2v, streaming-cam, streaming-naive-apm, "
                "streaming-naive)"
            )
        first = scorer = None
        first_meta: dict = {}
        first_name = first_chunk or meta.get("first_chunk")
        if first_name is None and _conditioning(unet) == "concat":
            first_name = "streaming-t2v"  # the shared base makes the naive models' first chunk
        if first_name is not None:
            first, first_info = hub.load(first_name, device)
            first_meta = first_info.extra.get("streaming") or {}
            arch = first_info.config.get("architecture")
            if arch != "video_unet" or not first_meta or _conditioning(first) == "concat":
                raise ValueError(
                    f"first_chunk {first_name!r} is not a text-to-video model that can make a "
                    "first chunk from the text alone"
                )
        scorer_name = first_meta.get("first_chunk_scorer") or meta.get("first_chunk_scorer")
        if scorer_name:
            from longseq.streaming.critic import CaptionCritic

            scorer = CaptionCritic.from_pretrained(scorer_name, device)
        image_encoder = None
        if unet.config.apm:
            enc_name = meta.get("image_encoder", "streaming-frame-encoder")
            image_encoder, enc_info = hub.load(enc_name, device)
            if enc_info.config.get("architecture") != "frame_encoder":
                raise ValueError(f"the frame encoder {enc_name!r} is not a frame encoder")
        enh, enh_meta = None, {}
        if enhancer:
            enh, enh_info = hub.load(enhancer, device)
            enh_meta = enh_info.extra.get("streaming", {})
            _check_enhancer(enhancer, enh, enh_info.config, unet)
        sched = DDIMScheduler.from_config(meta["scheduler"])
        text = TextEncoder(max_tokens=meta["max_text_tokens"], device=str(device))
        pipe = cls(
            unet,
            sched,
            text,
            image_encoder=image_encoder,
            first_unet=first,
            enhancer=enh,
            chunk_frames=meta["chunk_frames"],
            cond_frames=meta["cond_frames"],
            enhancer_chunk_frames=enh_meta.get("chunk_frames", 24),
            enhancer_overlap=enh_meta.get("overlap", 8),
            first_chunk_scorer=scorer,
        )
        pipe.defaults.update(meta.get("sampling", {}))
        if "first_chunk_candidates" in first_meta.get("sampling", {}):
            pipe.defaults["first_chunk_candidates"] = first_meta["sampling"][
                "first_chunk_candidates"
            ]
        return pipe

    # ------------------------------------------------------------------ latents
    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """UNet samples (B, C, F, h, w) -> pixels (B, 3, F, H, W) in [-1, 1]."""
        if self.vae is None:
            return x
        b, _, f = x.shape[:3]
        flat = x.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor
        flat = flat.to(_param(self.vae))
        if self._temporal_vae:  # SVD's AutoencoderKLTemporalDecoder: a video at a time
            img = torch.cat([self.vae.decode(z, num_frames=f).sample for z in flat.split(f)])
        else:
            img = torch.cat([self.vae.decode(z).sample for z in flat.split(16)])
        return img.unflatten(0, (b, f)).transpose(1, 2).to(x).clamp(-1, 1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, F, H, W) in [-1, 1] -> UNet samples (B, C, F, h, w)."""
        return x if self.vae is None else encode_frames(self.vae, x)

    def _pixel_size(self, unet: Any) -> int:
        size = _sample_shape(unet, 1)[-1]
        if self.vae is None:
            return size
        return size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ denoising
    def _eps(
        self,
        unet: Any,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        null: torch.Tensor,
        w_text: float,
        cond: torch.Tensor | None = None,
        anchor: torch.Tensor | None = None,
        w_anchor: float | None = None,
    ) -> torch.Tensor:
        """Classifier-free guidance over text and anchor, all branches in one batch.

        Joint (``w_anchor=None``, the authors' setting): ``e(0,0) + w_text (e(c,a) -
        e(0,0))``, one scale over text and anchor together. Separate scales:
        ``e(0,0) + w_text (e(c,0) - e(0,0)) + w_anchor (e(c,a) - e(c,0))``. The missing
        anchor is the zero embedding (as dropped in training); without an anchor both
        are plain text guidance. The output is in the model's parametrisation."""
        b = x.shape[0]
        apm = bool(getattr(unet.config, "apm", False))
        use_anchor = apm and anchor is not None
        separate = use_anchor and w_anchor is not None
        zero = full = None  # the anchor embedding of each branch, for a model with APM
        if apm:
            zero = torch.zeros(b, unet.config.image_dim, device=x.device, dtype=x.dtype)
            full = anchor.to(x).expand(b, -1) if use_anchor else zero
        # (text, anchor) of each branch; scales of 1 are the last branch alone: one pass
        branches = (
            [(null, zero), (text, zero), (text, full)] if separate else [(null, zero), (text, full)]
        )
        if w_text == 1.0 and (not separate or w_anchor == 1.0):
            branches = branches[-1:]
        n = len(branches)
        kw: dict[str, Any] = {}
        if _conditioning(unet) in ("cam", "concat") and cond is not None:
            kw["cond_frames"] = cond.repeat(n, *[1] * (cond.ndim - 1))
        if apm:
            kw["anchor_embeds"] = torch.cat([a for _, a in branches])
        ctx = torch.cat([c.expand(b, -1, -1) for c, _ in branches])
        e = unet(x.repeat(n, 1, 1, 1, 1), t, encoder_hidden_states=ctx, **kw).sample.chunk(n)
        if n == 1:
            return e[0]
        eps = e[0] + w_text * (e[1] - e[0])
        if separate:
            eps = eps + w_anchor * (e[2] - e[1])
        return eps

    @torch.no_grad()
    def _chunk(
        self,
        unet: Any,
        text: torch.Tensor,
        null: torch.Tensor,
        gen: torch.Generator,
        steps: int,
        w_text: float,
        w_anchor: float | None,
        cond: torch.Tensor | None,
        anchor: torch.Tensor | None,
        hold: bool | None = None,
        interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        p = _param(unet)
        shape = _sample_shape(unet, self.chunk_frames)
        self.scheduler.set_timesteps(steps)
        x = torch.randn(shape, generator=gen).to(p) * self.scheduler.init_noise_sigma
        if hold is None:
            hold = _conditioning(unet) == "replace"
        replace = cond is not None and hold
        if replace:
            fixed_noise = torch.randn(cond.shape, generator=gen).to(p)
        for t in self.scheduler.timesteps:
            if replace:
                x[:, :, : cond.shape[2]] = self.scheduler.add_noise(cond, fixed_noise, t.reshape(1))
            x_in = self.scheduler.scale_model_input(x, t)  # identity for DDIM, not for Euler
            w, wa = w_text, w_anchor
            if interval is not None:
                frac = float(t) / self.scheduler.config.num_train_timesteps
                if not interval[0] <= frac <= interval[1]:
                    w, wa = 1.0, None if w_anchor is None else 1.0
            eps = self._eps(unet, x_in, t, text, null, w, cond, anchor, wa)
            x = self.scheduler.step(eps, t, x).prev_sample
        # pixels are bounded, latents are not: only decoded pixels are clamped
        return x if self.vae is not None else x.clamp(-1, 1)

    def _settings(
        self,
        prompt: str,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        anchor_guidance_scale: float | None,
        hold_cond: bool | None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> tuple[int, float, float | None, bool | None, tuple[float, float] | None]:
        """The sampling arguments, unset ones from :attr:`defaults`, checked."""
        d = self.defaults
        interval = d.get("guidance_interval") if guidance_interval is None else guidance_interval
        interval = _check_interval(interval)
        steps = d["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        w = d["guidance_scale"] if guidance_scale is None else guidance_scale
        wa = d["anchor_guidance_scale"] if anchor_guidance_scale is None else anchor_guidance_scale
        hold = d.get("hold_cond") if hold_cond is None else hold_cond
        if hold is not None and not isinstance(hold, bool):
            raise ValueError(f"hold_cond must be True, False or None, got {hold!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
        for key, v in (("guidance_scale", w), ("anchor_guidance_scale", wa)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {v}")
        return int(steps), float(w), None if wa is None else float(wa), hold, interval

    def _candidates(self, k: int | None, key: str, made: bool = True) -> int:
        """The number of candidates ``key`` (``first_chunk_candidates`` or
        ``chunk_candidates``), unset from :attr:`defaults`, checked; ``made``: the
        candidates will be sampled, so more than one needs the scorer."""
        k = self.defaults.get(key, 1) if k is None else k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {k!r}")
        if k > 1 and self.first_chunk_scorer is None and made:
            raise ValueError(
                f"{key}={k} needs a first_chunk_scorer to choose among them "
                "(e.g. longseq.streaming.CaptionCritic for the world's models)"
            )
        return int(k)

    def _best(self, frames: list[np.ndarray], prompt: str) -> int:
        """The index of the candidate chunk ((F, H, W, 3) uint8 each) the scorer rates
        highest."""
        k = len(frames)
        scores = np.asarray(self.first_chunk_scorer(np.stack(frames), prompt), dtype=float)
        if scores.shape != (k,) or not np.isfinite(scores).all():
            raise ValueError(
                f"first_chunk_scorer must return {k} finite scores, one per candidate, "
                f"got {scores.tolist() if scores.size <= 8 else scores.shape}"
            )
        return int(np.argmax(scores))

    def _first_chunk(
        self, prompt: str, k: int, text, null, gen, steps: int, w: float, interval
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The first chunk from the text alone: its samples (1, C, F, h, w) and frames
        (F, H, W, 3) uint8; with ``k`` > 1 the best of ``k`` by the scorer."""
        samples, frames = [], []
        for _ in range(k):
            x = self._chunk(
                self.first_unet, text, null, gen, steps, w, None, None, None, None, interval
            )
            samples.append(x)
            frames.append(to_uint8(self._decode(x)[0]))
        best = 0 if k == 1 else self._best(frames, prompt)
        return samples[best], frames[best]

    def _anchor(self, frame: torch.Tensor) -> torch.Tensor:
        """APM anchor embedding of one decoded frame (1, 3, H, W) in [-1, 1]."""
        return self.image_encoder.embed(frame.to(_param(self.image_encoder))).to(_param(self.unet))

    def _frames_in(self, frames: np.ndarray, name: str) -> torch.Tensor:
        """(T, H, W, 3) uint8 frames at the generator's resolution -> samples (1, C, T, h, w)."""
        frames = np.asarray(frames)
        size = self._pixel_size(self.unet)
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"{name} must be (T, {size}, {size}, 3) uint8 frames at the model's "
                f"resolution, got {frames.shape} {frames.dtype}"
            )
        return self._encode(to_tensor(frames)[None].to(_param(self.unet)))

    @torch.no_grad()
    def continue_chunk(
        self,
        prompt: str,
        cond_frames: np.ndarray,
        anchor_frame: np.ndarray | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        anchor_guidance_scale: float | None = None,
        seed: int = 0,
        hold_cond: bool | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """One chunk (F, H, W, 3) uint8 continuing the ``F_cond`` given frames: its first
        ``F_cond`` frames re-make them, the rest are new. ``anchor_frame`` (H, W, 3) is the
        APM anchor (default: the first conditioning frame). ``hold_cond`` and
        ``guidance_interval`` as in :meth:`stream`."""
        steps, w, wa, hold, interval = self._settings(
            prompt,
            num_inference_steps,
            guidance_scale,
            anchor_guidance_scale,
            hold_cond,
            guidance_interval,
        )
        cond = self._frames_in(cond_frames, "cond_frames")
        if cond.shape[2] != self.cond_frames:
            raise ValueError(f"need {self.cond_frames} conditioning frames, got {cond.shape[2]}")
        anchor = None
        if self.apm:
            a = cond_frames[0] if anchor_frame is None else anchor_frame
            anchor = self._anchor(
                self._decode(self._frames_in(np.asarray(a)[None], "anchor"))[:, :, 0]
            )
        p = _param(self.unet)
        gen = torch.Generator().manual_seed(seed)
        text, null = self.text_encoder([prompt]).to(p), self.text_encoder([""]).to(p)
        x = self._chunk(self.unet, text, null, gen, steps, w, wa, cond, anchor, hold, interval)
        return to_uint8(self._decode(x)[0])

    def stream(
        self,
        prompt: str,
        num_frames: int,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        anchor_guidance_scale: float | None = None,
        use_anchor: bool = True,
        seed: int = 0,
        progress: bool = True,
        init_frames: np.ndarray | None = None,
        hold_cond: bool | None = None,
        guidance_interval: tuple[float, float] | None = None,
        first_chunk_candidates: int | None = None,
        chunk_candidates: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield the video chunk by chunk as (n, H, W, 3) uint8 arrays: the first chunk's
        ``F`` frames, then ``F - F_cond`` new frames per chunk, until ``num_frames``.

        ``guidance_scale`` is the joint text-and-anchor scale; ``anchor_guidance_scale``
        given separates the anchor's scale from the text's. ``use_anchor=False`` drops
        the APM anchor (the "without APM" ablation). ``init_frames`` (at least ``F_cond``
        frames at the model's resolution) replace the generated first chunk: the video
        continues them, their first frame is the anchor, and they are yielded first.
        ``hold_cond=True`` (the default, ``defaults["hold_cond"]``) holds each chunk's
        conditioning frames at their noised originals at every sampling step (the
        training-free "replace" conditioning), on top of CAM or the naive model's
        concatenation, as the memory models were trained; False lets the model re-make
        them freely (with a model without memory: independent chunks); a default of None:
        the model's way (held only without memory). ``guidance_interval=(lo, hi)`` guides only the
        steps whose timestep is in that fraction of the training schedule (t /
        ``num_train_timesteps`` in [lo, hi]) and samples the others at scale 1 (the
        conditional output, one model pass): guidance at the noisiest steps shrinks what
        the unconditional model draws bigger (Kynkäänniemi et al. 2024 limit guidance
        to an interval). ``first_chunk_candidates=K`` samples K first chunks and keeps
        the one ``first_chunk_scorer`` scores highest (K = 1: the first sample, no
        scorer needed). ``chunk_candidates=K`` does the same for every later chunk: K
        continuations of the same conditioning frames, each scored as a chunk (its
        ``F_cond`` conditioning frames as yielded, then its new frames), the best kept; it
        costs K times the sampling. Unset sampling arguments take :attr:`defaults`."""
        steps, w, wa, hold, interval = self._settings(
            prompt,
            num_inference_steps,
            guidance_scale,
            anchor_guidance_scale,
            hold_cond,
            guidance_interval,
        )
        if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        k = self._candidates(first_chunk_candidates, "first_chunk_candidates", init_frames is None)
        p = _param(self.unet)
        gen = torch.Generator().manual_seed(seed)
        text = self.text_encoder([prompt]).to(p)
        null = self.text_encoder([""]).to(p)
        f, fc = self.chunk_frames, self.cond_frames
        if init_frames is not None:
            x = self._frames_in(init_frames, "init_frames")
            if x.shape[2] < fc:
                raise ValueError(f"init_frames needs at least {fc} frames, got {x.shape[2]}")
            first_frames = np.asarray(init_frames)[:num_frames]
        elif self.image_to_video:
            raise ValueError(
                "an image-to-video model continues frames: pass init_frames (the first image)"
            )
        n_first = len(first_frames) if init_frames is not None else f
        kc = self._candidates(chunk_candidates, "chunk_candidates", n_first < num_frames)
        n_chunks = 1 + max(0, math.ceil((num_frames - n_first) / (f - fc)))
        done = 0
        with progress_bar("chunks", n_chunks, enabled=progress) as advance:
            if init_frames is None:
                x, first_frames = self._first_chunk(prompt, k, text, null, gen, steps, w, interval)
                first_frames = first_frames[:num_frames]
            anchor = None
            if self.apm and use_anchor:
                anchor = self._anchor(self._decode(x[:, :, :1])[:, :, 0])
            done += len(first_frames)
            advance()
            yield first_frames
            last = first_frames[-fc:]  # the conditioning frames as yielded, for the scorer
            while done < num_frames:
                cond = x[:, :, -fc:]
                samples, news = [], []
                for _ in range(kc):
                    samples.append(
                        self._chunk(
                            self.unet, text, null, gen, steps, w, wa, cond, anchor, hold, interval
                        )
                    )
                    news.append(to_uint8(self._decode(samples[-1][:, :, fc:])[0]))
                best = (
                    0 if kc == 1 else self._best([np.concatenate([last, n]) for n in news], prompt)
                )
                x = samples[best]
                last = np.concatenate([last, news[best]])[-fc:]
                new = news[best][: num_frames - done]
                done += len(new)
                advance()
                yield new

    def __call__(self, prompt: str, num_frames: int = 240, **kwargs: Any) -> StreamingOutput:
        """Generate the whole video (see :meth:`stream` for the arguments)."""
        chunks = list(self.stream(prompt, num_frames, **kwargs))
        seams = list(np.cumsum([len(c) for c in chunks])[:-1])
        return StreamingOutput(np.concatenate(chunks), [int(s) for s in seams])

    # ------------------------------------------------------------------ enhancer
    @torch.no_grad()
    def enhance(
        self,
        frames: np.ndarray,
        prompt: str,
        strength: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        blending: str = "random",
        chunk_frames: int | None = None,
        overlap: int | None = None,
        seed: int = 0,
        progress: bool = True,
        chunk_batch: int = 8,
    ) -> StreamingOutput:
        """Refine a long video with the enhancer by SDEdit (noise to ``strength`` of the
        schedule, then denoise) in overlapping chunks.

        ``blending``: ``"random"`` — overlapping frames share their noise and, at every
        step, a random cut ``f_thr`` in {0..overlap} takes the overlap's first ``f_thr``
        frames from the left chunk and the rest from the right one; ``"shared"`` — shared
        noise only; ``"independent"`` — each chunk its own noise (the two ablations join
        the chunks at the middle of each overlap). ``seams`` of the output are those
        joins (the middle of each overlap). ``chunk_batch`` chunks go through the
        enhancer at once."""
        d = self.defaults
        strength = d["strength"] if strength is None else strength
        num_inference_steps = int(num_inference_steps or d["num_inference_steps"])
        if guidance_scale is None:
            guidance_scale = d["enhancer_guidance_scale"]
        if self.enhancer is None:
            raise ValueError("this pipeline has no enhancer model")
        if blending not in BLENDINGS:
            raise ValueError(f"blending must be one of {BLENDINGS}, got {blending!r}")
        if chunk_batch < 1:
            raise ValueError(f"chunk_batch must be >= 1, got {chunk_batch}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        unet = self.enhancer
        le = chunk_frames or self.enhancer_chunk_frames
        ov = self.enhancer_overlap if overlap is None else overlap
        p = _param(unet)
        size = self._pixel_size(unet)
        video = to_tensor(frames).to(p)[None]  # (1, 3, T, h, w)
        n = video.shape[2]
        video = F.interpolate(video, size=(n, size, size), mode="trilinear", align_corners=False)
        video = self._encode(video)
        starts = chunk_starts(n, le, ov)
        le = min(le, n)
        gen = torch.Generator().manual_seed(seed)
        text = self.text_encoder([prompt]).to(p)
        null = self.text_encoder([""]).to(p)
        sched = self.scheduler
        sched.set_timesteps(num_inference_steps)
        k = max(1, min(num_inference_steps, round(num_inference_steps * strength)))
        timesteps = sched.timesteps[num_inference_steps - k :]
        if blending == "independent":
            noise = [torch.randn(video[:, :, :le].shape, generator=gen).to(p) for _ in starts]
        else:
            full = torch.randn(video.shape, generator=gen).to(p)
            noise = [full[:, :, s : s + le] for s in starts]
        t0 = timesteps[0].reshape(1)
        xs = [
            sched.add_noise(video[:, :, s : s + le], z, t0)
            for s, z in zip(starts, noise, strict=True)
        ]
        rng = np.random.default_rng(seed)
        with progress_bar("enhancing", len(timesteps), enabled=progress) as advance:
            for t in timesteps:
                x = torch.cat(xs)
                x_in = sched.scale_model_input(x, t)
                eps = torch.cat(
                    [
                        self._eps(unet, xb, t, text, null, guidance_scale)
                        for xb in x_in.split(chunk_batch)
                    ]
                )
                x = sched.step(eps, t, x).prev_sample
                xs = list(x.split(1))
                if blending == "random":
                    xs = randomized_blending(xs, starts, rng)
                advance()
        out, seams = join_chunks(xs, starts)
        return StreamingOutput(to_uint8(self._decode(out)[0].clamp(-1, 1)), seams)
