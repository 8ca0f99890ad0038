"""StreamingT2V's CAM and APM attached to a ``diffusers`` text-to-video UNet
(``UNet3DConditionModel``, the ModelScope layout), from the parts every UNet in longseq
shares (``longseq.models.video_memory``: ``CAMInjection``, ``cond_frame_embedding``,
``anchor_tokens``, ``APMMixer``; the project's own ``VideoUNet`` builds its CAM and APM
from them too, with the same weights' names).

:func:`attach_memory`: :class:`CAM` is a trainable copy of the UNet's encoder
(``conv_in``, ``transformer_in``, down blocks, mid block) that reads the chunk's noisy
first ``F_cond`` frames plus the conditioning frames' embedding; its features enter the
UNet's skips through ``CAMInjection`` as ``down_block_additional_residuals`` /
``mid_block_additional_residual`` (the ControlNet hooks of
``UNet3DConditionModel.forward``). :class:`APM` puts one ``APMMixer`` in every
cross-attention layer through ``diffusers`` attention processors; the anchor tokens
travel appended to ``encoder_hidden_states``. :class:`StreamingUNet` holds the UNet, CAM
and APM and takes the pipeline's call ``(sample, t, encoder_hidden_states, cond_frames=,
anchor_embeds=)``. Fresh CAM and APM leave the UNet's output exactly unchanged.
:class:`ConcatUNet` is the naive baseline on the same UNet.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from longseq.models.video_memory import (
    APMMixer,
    CAMInjection,
    anchor_tokens,
    cond_frame_embedding,
)

MEMORY_DIR = "streaming"  # the memory weights' folder beside a diffusers model's parts
MEMORY_WEIGHTS = "memory.safetensors"
MEMORY_CONFIG = "config.json"


def _heads(dim: int) -> int:
    """Heads of 64 channels where the width allows, else one."""
    return dim // 64 if dim % 64 == 0 else 1


def _skip_channels(cfg: Any) -> list[int]:
    """Channels of a UNet3DConditionModel's skips, in the order of its forward."""
    ch = list(cfg.block_out_channels)
    layers = cfg.layers_per_block
    out = [ch[0]]
    for i, c in enumerate(ch):
        out += [c] * (layers if isinstance(layers, int) else layers[i])
        if i < len(ch) - 1:
            out.append(c)  # the downsampler's output
    return out


def _plain_processors(module: nn.Module) -> None:
    from diffusers.models.attention_processor import Attention as DAttention
    from diffusers.models.attention_processor import AttnProcessor2_0

    for m in module.modules():
        if isinstance(m, DAttention):
            m.set_processor(AttnProcessor2_0())


def _frames_first(x: torch.Tensor) -> torch.Tensor:  # (B,C,F,H,W) -> (B*F, C, H, W)
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1)


def _channels_first(x: torch.Tensor, b: int) -> torch.Tensor:  # (B*F,C,H,W) -> (B,C,F,H,W)
    return x.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)


def _encode(
    parts: Any,
    sample: torch.Tensor,
    emb: torch.Tensor,
    ctx: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The encoder half of ``UNet3DConditionModel.forward`` on ``parts`` (the UNet or its
    CAM copy): sample (B, C, F, H, W) -> the skips and the mid block's output, (B*F, ...)."""
    f = sample.shape[2]
    emb = emb.repeat_interleave(f, 0)
    ctx = ctx.repeat_interleave(f, 0)
    x = parts.conv_in(_frames_first(sample))
    if extra is not None:
        x = x + _frames_first(extra)
    x = parts.transformer_in(x, num_frames=f, return_dict=False)[0]
    skips = [x]
    for block in parts.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=ctx, num_frames=f)
        else:
            x, res = block(hidden_states=x, temb=emb, num_frames=f)
        skips += list(res)
    mid = parts.mid_block(x, emb, encoder_hidden_states=ctx, num_frames=f)
    return skips, mid


class CAM(nn.Module):
    """Conditional attention module for a ``UNet3DConditionModel``: a trainable copy of its
    encoder, initialised from it, reads the noisy first ``F_cond`` frames of the chunk plus
    the embedding of the clean conditioning frames; at every skip and after the mid block,
    temporal attention from the UNet's own features to the copy's adds a residual."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        cfg = unet.config
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.transformer_in = copy.deepcopy(unet.transformer_in)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)
        _plain_processors(self)  # the copy reads the text alone
        self.requires_grad_(True)  # trainable, whether or not the base is frozen
        c0 = cfg.block_out_channels[0]
        self.frame_embedding = cond_frame_embedding(cfg.in_channels, c0)
        self.inject = nn.ModuleList(CAMInjection(c, _heads(c)) for c in _skip_channels(cfg))
        c = cfg.block_out_channels[-1]
        self.inject_mid = CAMInjection(c, _heads(c))

    def forward(
        self,
        unet: nn.Module,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        cond_frames: torch.Tensor,
        text: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The residuals for ``unet(sample, ...)``: its skips and its mid block's output.
        ``encoder_hidden_states`` is what the UNet reads (with APM, the anchor tokens
        appended); ``text`` what the copy reads."""
        b, _, f = sample.shape[:3]
        fc = cond_frames.shape[2]
        if fc > f:
            raise ValueError(f"{fc} conditioning frames for a {f}-frame chunk")
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = unet.time_embedding(unet.time_proj(t).to(sample.dtype))
        skips, mid = _encode(unet, sample, emb, encoder_hidden_states)
        extra = self.frame_embedding(cond_frames.to(sample.dtype))
        cam_skips, cam_mid = _encode(self, sample[:, :, :fc], emb, text, extra)
        down = tuple(
            _frames_first(inj.residual(_channels_first(s, b), _channels_first(c, b)))
            for inj, s, c in zip(self.inject, skips, cam_skips, strict=True)
        )
        mid_res = self.inject_mid.residual(_channels_first(mid, b), _channels_first(cam_mid, b))
        return down, _frames_first(mid_res)


class APMProcessor:
    """A cross-attention processor that reads ``text + SiLU(alpha) * mix([anchor; text])``
    instead of the text: the anchor tokens are the last ``n_anchor`` of its context. A
    context of the text alone is read as it is (the UNet without APM)."""

    def __init__(self, mixer: APMMixer, n_anchor: int):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.mixer, self.n_anchor, self.inner = mixer, n_anchor, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        ctx = encoder_hidden_states
        if ctx is not None and ctx.shape[1] == self.mixer.mix.in_features:
            text, anchor = ctx[:, : -self.n_anchor], ctx[:, -self.n_anchor :]
            ctx = self.mixer(text, anchor)
        # without anchor tokens (the UNet called on its own): plain cross-attention
        return self.inner(attn, hidden_states, ctx, attention_mask, **kw)


def _cross_attentions(unet: nn.Module) -> dict[str, nn.Module]:
    from diffusers.models.attention_processor import Attention as DAttention

    return {
        n: m for n, m in unet.named_modules() if isinstance(m, DAttention) and m.is_cross_attention
    }


class APM(nn.Module):
    """Appearance preservation module for a ``UNet3DConditionModel``: the anchor's image
    embedding becomes ``n_anchor_tokens`` tokens, and every cross-attention layer gets its
    own :class:`APMMixer` (through :meth:`attach`, as attention processors)."""

    def __init__(
        self, unet: nn.Module, image_dim: int, n_text_tokens: int, n_anchor_tokens: int = 16
    ):
        super().__init__()
        ctx = unet.config.cross_attention_dim
        self.n_anchor = n_anchor_tokens
        self.tokens = anchor_tokens(image_dim, n_anchor_tokens, ctx)
        layers = list(_cross_attentions(unet))
        if not layers:
            raise ValueError("this UNet has no cross-attention layer for APM to mix into")
        self.layer_names = layers
        self.mixers = nn.ModuleList(APMMixer(n_anchor_tokens, n_text_tokens, ctx) for _ in layers)

    def attach(self, unet: nn.Module) -> None:
        for name, mixer in zip(self.layer_names, self.mixers, strict=True):
            unet.get_submodule(name).set_processor(APMProcessor(mixer, self.n_anchor))

    def anchor(self, anchor_embeds: torch.Tensor) -> torch.Tensor:
        """(B, image_dim) -> anchor tokens (B, n_anchor_tokens, ctx_dim)."""
        return self.tokens(anchor_embeds).unflatten(1, (self.n_anchor, -1))


class StreamingUNet(nn.Module):
    """A ``UNet3DConditionModel`` with StreamingT2V's CAM and/or APM attached, called as
    the pipeline calls a memory model: ``(sample, t, encoder_hidden_states, cond_frames=,
    anchor_embeds=)``. Build it with :func:`attach_memory`; :meth:`memory_parameters` are
    what training updates, :meth:`save_memory` / :func:`load_memory` write and read them."""

    def __init__(self, unet: nn.Module, cam: CAM | None, apm: APM | None, settings: dict):
        super().__init__()
        self.unet, self.cam, self.apm, self.settings = unet, cam, apm, dict(settings)
        cfg = unet.config
        self.config = SimpleNamespace(
            sample_size=cfg.sample_size,
            in_channels=cfg.in_channels,
            cam=cam is not None,
            apm=apm is not None,
            image_dim=settings.get("image_dim", 0),
        )
        if apm is not None:
            apm.attach(unet)

    def memory_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.cam, self.apm) if m is not None for p in m.parameters()]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        cond_frames: torch.Tensor | None = None,
        anchor_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        text = ctx = encoder_hidden_states
        if self.apm is not None:  # no anchor: the zero embedding, as dropped in training
            b = sample.shape[0]
            if anchor_embeds is None:
                anchor_embeds = sample.new_zeros(b, self.config.image_dim)
            n_text = self.apm.mixers[0].mix.out_features
            if text.shape[1] != n_text:
                raise ValueError(
                    f"APM mixes {n_text} text tokens, the prompt states have {text.shape[1]}: "
                    "attach it with n_text_tokens= the text encoder's length"
                )
            tokens = self.apm.anchor(anchor_embeds.to(sample.dtype)).expand(b, -1, -1)
            ctx = torch.cat([text.expand(b, -1, -1), tokens], 1)
        kw: dict[str, Any] = {}
        if self.cam is not None and cond_frames is not None:
            down, mid = self.cam(self.unet, sample, timestep, ctx, cond_frames, text)
            kw = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return self.unet(sample, timestep, encoder_hidden_states=ctx, return_dict=return_dict, **kw)

    def save_memory(self, path: str | Path) -> Path:
        """Write CAM/APM weights and settings to ``path`` (a ``streaming/`` folder)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        state = {k: v for k, v in state.items() if not k.startswith("unet.")}
        save_file(state, path / MEMORY_WEIGHTS)
        cfg = dict(self.settings, cam=self.cam is not None, apm=self.apm is not None)
        (path / MEMORY_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        return path


class ConcatUNet(nn.Module):
    """The naive baseline on a ``UNet3DConditionModel``: the last conditioning frame is
    concatenated to every frame's input on the channel axis (``conv_in`` widened, the new
    input channels zero-initialised, so a fresh one computes the UNet). Training
    fine-tunes the whole UNet; :meth:`save_memory` writes it to ``folder/unet``."""

    def __init__(self, unet: nn.Module, settings: dict | None = None):
        super().__init__()
        cfg = unet.config
        c = cfg.out_channels
        if cfg.in_channels == c:  # widen a plain UNet's input
            old = unet.conv_in
            new = nn.Conv2d(2 * c, old.out_channels, old.kernel_size, padding=old.padding)
            new = new.to(old.weight)
            with torch.no_grad():
                new.weight.zero_()
                new.weight[:, :c] = old.weight
                new.bias.copy_(old.bias)
            unet.conv_in = new
            unet.register_to_config(in_channels=2 * c)
        elif cfg.in_channels != 2 * c:
            raise ValueError(f"a naive UNet has 2 x {c} input channels, this one {cfg.in_channels}")
        self.unet, self.settings = unet, dict(settings or {}, concat_cond=True)
        self.config = SimpleNamespace(sample_size=cfg.sample_size, in_channels=c, concat_cond=True)

    def memory_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        cond_frames: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        if cond_frames is None:
            raise ValueError("the naive model needs cond_frames (the previous chunk)")
        last = cond_frames[:, :, -1:].expand(-1, -1, sample.shape[2], -1, -1).to(sample)
        x = torch.cat([sample, last], 1)
        return self.unet(
            x, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=return_dict
        )

    def save_memory(self, path: str | Path) -> Path:
        path = Path(path)
        self.unet.save_pretrained(path / "unet")
        (path / MEMORY_CONFIG).write_text(json.dumps(self.settings, indent=2) + "\n")
        return path


def attach_memory(
    unet: nn.Module,
    cam: bool = True,
    apm: bool = True,
    image_dim: int = 64,
    n_text_tokens: int = 77,
    n_anchor_tokens: int = 16,
    **settings: Any,
) -> StreamingUNet:
    """Fresh CAM (a copy of ``unet``'s encoder) and APM (``image_dim``-wide anchor
    embeddings, mixed with ``n_text_tokens`` text tokens) on a ``UNet3DConditionModel``.
    Other ``settings`` (``chunk_frames``, ``cond_frames``, ``image_encoder``...) are stored
    with the weights."""
    for key in ("conv_in", "transformer_in", "down_blocks", "mid_block", "time_embedding"):
        if not hasattr(unet, key):
            raise TypeError(
                f"CAM and APM attach to a diffusers UNet3DConditionModel; this "
                f"{type(unet).__name__} has no {key}"
            )
    if not (cam or apm):
        raise ValueError("attach at least one of cam and apm")
    settings = dict(
        settings, image_dim=image_dim, n_text_tokens=n_text_tokens, n_anchor_tokens=n_anchor_tokens
    )
    p = next(unet.parameters())
    c = CAM(unet).to(p) if cam else None
    a = APM(unet, image_dim, n_text_tokens, n_anchor_tokens).to(p) if apm else None
    return StreamingUNet(unet, c, a, settings)


def load_memory(unet: nn.Module, path: str | Path) -> StreamingUNet | ConcatUNet:
    """CAM/APM saved by :meth:`StreamingUNet.save_memory`, attached to ``unet`` (or the
    naive baseline saved by :meth:`ConcatUNet.save_memory`, which replaces it)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / MEMORY_CONFIG).is_file():
        raise FileNotFoundError(f"{path} has no {MEMORY_CONFIG} (the CAM/APM settings)")
    cfg = json.loads((path / MEMORY_CONFIG).read_text())
    if cfg.get("concat_cond"):  # the naive baseline: a whole fine-tuned UNet
        import diffusers

        from longseq.streaming.folder import quiet_load

        if not (path / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no unet/config.json (the naive model's UNet)")
        naive = quiet_load(diffusers.UNet3DConditionModel.from_pretrained, path / "unet")
        return ConcatUNet(naive.to(next(unet.parameters())), cfg)
    if not (path / MEMORY_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} has no {MEMORY_WEIGHTS} (the CAM/APM weights)")
    model = attach_memory(unet, **cfg)
    state = load_file(path / MEMORY_WEIGHTS)
    mem = {k: v for k, v in model.state_dict().items() if not k.startswith("unet.")}
    if set(state) != set(mem):
        diff = sorted(set(state) ^ set(mem))[:3]
        raise ValueError(f"{path}: the CAM/APM weights do not fit this UNet ({diff}...)")
    model.load_state_dict(state, strict=False)
    return model
