"""What the pipeline needs from a denoiser, an adapter for plain callables, and the
enhancer's randomized blending as functions over any denoiser's chunks.

The protocol is the ``diffusers`` 3-D UNet call plus two config fields::

    out = unet(sample, timestep, encoder_hidden_states=tokens)   # sample (B, C, F, H, W)
    out.sample                                                   # same shape, in the
                                                                 # scheduler's parametrisation
    unet.config.sample_size    # H (= W) of the samples, latent pixels with a VAE
    unet.config.in_channels    # C

Its first parameter or buffer (if any) gives the device and dtype the pipeline works in
(otherwise CPU, float32). Chunk
conditioning is read from ``unet.config`` too: ``cam`` / ``apm`` (then the call also
takes ``cond_frames=`` and ``anchor_embeds=``; see :class:`~longseq.streaming.StreamingUNet`)
or ``concat_cond`` (the naive baseline); a denoiser with none of them is tied to the
previous chunk training-free (its first ``F_cond`` frames replaced at every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Denoiser(Protocol):
    """A video denoiser the pipeline can drive (``diffusers.UNet3DConditionModel`` is one)."""

    config: Any  # .sample_size (int), .in_channels (int)

    def __call__(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kw: Any
    ) -> Any: ...


@dataclass
class DenoiserOutput:
    sample: torch.Tensor


class CallableDenoiser(torch.nn.Module):
    """A plain function ``fn(sample, t, encoder_hidden_states, **kw) -> tensor`` (or an
    object with ``.sample``) as a :class:`Denoiser`. Its device and dtype are those
    given; ``config`` entries (``cam=True``, ``concat_cond=True``) choose how chunks are
    conditioned."""

    def __init__(
        self,
        fn: Callable[..., Any],
        sample_size: int,
        in_channels: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **config: Any,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        for key, v in (("sample_size", sample_size), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        self.fn = fn
        self.config = SimpleNamespace(sample_size=sample_size, in_channels=in_channels, **config)
        self.register_buffer("_where", torch.empty(0, device=device, dtype=dtype))

    def forward(
        self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kw: Any
    ) -> DenoiserOutput:
        out = self.fn(sample, timestep, encoder_hidden_states, **kw)
        out = out if isinstance(out, torch.Tensor) else out.sample
        if out.shape != sample.shape:
            raise ValueError(
                f"the denoiser returned shape {tuple(out.shape)} for a sample of shape "
                f"{tuple(sample.shape)}"
            )
        return DenoiserOutput(out)


def as_denoiser(
    fn: Callable[..., Any],
    sample_size: int,
    in_channels: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **config: Any,
) -> CallableDenoiser:
    """Wrap a plain callable as a :class:`Denoiser` for ``StreamingT2VPipeline``."""
    return CallableDenoiser(fn, sample_size, in_channels, device, dtype, **config)


def check_denoiser(unet: Any, name: str = "unet") -> None:
    """A one-line ``TypeError`` unless ``unet`` follows the :class:`Denoiser` protocol."""
    cfg = getattr(unet, "config", None)
    missing = [k for k in ("sample_size", "in_channels") if not hasattr(cfg, k)]
    if not callable(unet) or missing:
        what = "is not callable" if not callable(unet) else f"has no config.{missing[0]}"
        raise TypeError(
            f"{name} {what}: give a diffusers 3-D UNet (or any module with that call and "
            "config.sample_size / config.in_channels), or wrap a function with "
            "longseq.streaming.as_denoiser(fn, sample_size=..., in_channels=...)"
        )


def randomized_blending(
    chunks: Sequence[torch.Tensor],
    starts: Sequence[int],
    rng: np.random.Generator,
    fixed_cut: bool = False,
) -> list[torch.Tensor]:
    """One step of randomized blending over overlapping chunks (B, C, L, H, W) that start
    at frames ``starts``: for each pair of neighbours a cut ``f_thr`` drawn uniformly from
    {0..overlap} gives the overlap's first ``f_thr`` frames from the left chunk and the
    rest from the right one, written into both. Call it after every denoising step, with
    noise shared on the overlaps. ``fixed_cut`` cuts every overlap in its middle instead
    (the ablation)."""
    xs = list(chunks)
    if len(xs) != len(starts):
        raise ValueError(f"{len(xs)} chunks for {len(starts)} starts")
    for i in range(len(xs) - 1):
        length = xs[i].shape[2]
        o = starts[i] + length - starts[i + 1]  # overlap length
        if not 0 <= o <= min(length, xs[i + 1].shape[2]):
            raise ValueError(f"chunks {i} and {i + 1} do not overlap as their starts say")
        cut = o // 2 if fixed_cut else int(rng.integers(0, o + 1))
        left, right = xs[i][:, :, length - o :], xs[i + 1][:, :, :o]
        merged = torch.cat([left[:, :, :cut], right[:, :, cut:]], 2)
        xs[i] = torch.cat([xs[i][:, :, : length - o], merged], 2)
        xs[i + 1] = torch.cat([merged, xs[i + 1][:, :, o:]], 2)
    return xs


def join_chunks(
    chunks: Sequence[torch.Tensor], starts: Sequence[int]
) -> tuple[torch.Tensor, list[int]]:
    """Overlapping chunks (B, C, L, H, W) -> the whole video, each overlap split at its
    middle; also the joins (first frame taken from the right chunk)."""
    length = chunks[0].shape[2]
    n = starts[-1] + chunks[-1].shape[2]
    out = chunks[0].new_empty(*chunks[0].shape[:2], n, *chunks[0].shape[3:])
    seams = []
    for i, (s, x) in enumerate(zip(starts, chunks, strict=True)):
        lo = s if i == 0 else (starts[i - 1] + length + s) // 2  # middle of the overlap
        out[:, :, lo : s + x.shape[2]] = x[:, :, lo - s :]
        if i:
            seams.append(int(lo))
    return out, seams


class ImageToVideoDenoiser(torch.nn.Module):
    """An image-to-video UNet in the SVD layout (``diffusers``'
    ``UNetSpatioTemporalConditionModel``) as a :class:`Denoiser` that continues a video
    training-free: every chunk is conditioned on the previous chunk's last frame, whose
    latent is concatenated to every frame's input on the channel axis, as SVD conditions
    on its input image.

    The adapter converts the layout ((B, C, F, H, W) in and out, SVD's (B, F, C, H, W)
    inside) and passes ``added_time_ids`` (``fps``, ``motion_bucket_id``,
    ``noise_aug_strength``, as ``diffusers``' SVD pipeline builds them). The pipeline's
    ``text_encoder`` gives SVD's ``encoder_hidden_states`` (the CLIP image embedding of
    the first image, e.g. ``lambda prompts: embeds``). SVD's image latents are the VAE's
    unscaled ones: ``image_latent_scale=1 / vae.config.scaling_factor`` converts the
    pipeline's scaled latents. The first chunk comes from ``init_frames`` (the image)."""

    def __init__(
        self,
        unet: Any,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        image_latent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        cfg = unet.config
        if not hasattr(cfg, "projection_class_embeddings_input_dim"):
            raise TypeError(
                f"{type(unet).__name__} is not an SVD-layout UNet "
                "(UNetSpatioTemporalConditionModel)"
            )
        c = cfg.out_channels
        if cfg.in_channels != 2 * c:
            raise ValueError(
                f"an SVD-layout UNet reads 2 x {c} channels (noisy + image), got {cfg.in_channels}"
            )
        self.unet = unet
        self.time_ids = (float(fps - 1), float(motion_bucket_id), float(noise_aug_strength))
        self.image_latent_scale = image_latent_scale
        self.config = SimpleNamespace(
            sample_size=cfg.sample_size, in_channels=c, concat_cond=True, image_to_video=True
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        cond_frames: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DenoiserOutput:
        if cond_frames is None:
            raise ValueError("an image-to-video model needs cond_frames (its image)")
        b, _, f = sample.shape[:3]
        image = cond_frames[:, :, -1:].to(sample) * self.image_latent_scale
        x = torch.cat([sample, image.expand(-1, -1, f, -1, -1)], 1).transpose(1, 2)
        ids = torch.tensor(self.time_ids, device=sample.device, dtype=sample.dtype)
        t = torch.as_tensor(timestep, device=sample.device)
        out = self.unet(x, t, encoder_hidden_states, ids.expand(b, -1)).sample
        return DenoiserOutput(out.transpose(1, 2))
