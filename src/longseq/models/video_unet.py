"""A small spatio-temporal UNet for pixel-space text-to-video diffusion, with the
StreamingT2V memory modules.

The call follows ``diffusers``' 3-D UNets, so a pipeline can drive either::

    out = unet(sample, timestep, encoder_hidden_states=text_tokens).sample

``sample`` is (B, C, F, H, W). Each level has factorised residual blocks (a 3x3
spatial conv, then a 3-tap temporal conv) and, at the coarse levels, a
transformer block: spatial self-attention, temporal self-attention (sinusoidal
frame positions), cross-attention to the text tokens, MLP.

Two optional modules make the model autoregressive (StreamingT2V); their parts
(``longseq.models.video_memory``) are the ones ``longseq.streaming.memory`` attaches to a
``diffusers`` UNet (same classes, same weights' names), here on this UNet's own encoder:

- **CAM** (short-term memory, ``cam=True``), as the authors build it: a trainable
  copy of the UNet encoder reads the *noisy* sample of the chunk's first ``F_cond``
  frames plus a frame-encoder embedding of the clean ``cond_frames`` (the last
  frames of the previous chunk) whose last layer is zero-initialised; at every skip
  connection, temporal attention from the chunk's frames to those ``F_cond`` CAM
  features adds them through a zero-initialised output projection, so a fresh CAM
  leaves the base model unchanged.
- **APM** (long-term memory, ``apm=True``): the anchor frame's image embedding
  becomes 16 tokens (an MLP); each cross-attention layer ``l`` has its own token
  mixer, a linear map over the token axis of [anchor tokens; text tokens] back to
  the text's length followed by a LayerNorm, and reads
  ``text + SiLU(alpha_l) * mixed_l`` with ``alpha_l`` initialised to 0.

``concat_cond=True`` is the naive baseline instead: the last conditioning frame is
concatenated to the noisy input on the channel axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.models.config import ConfigDict
from longseq.models.video_memory import (
    APMMixer,
    Attention,
    CAMInjection,
    anchor_tokens,
    cond_frame_embedding,
    sinusoid,
)


@dataclass
class VideoUNetConfig(ConfigDict):
    sample_size: int = 16
    in_channels: int = 3
    out_channels: int = 3
    channels: list[int] = field(default_factory=lambda: [32, 48, 64])
    attn_levels: list[bool] = field(default_factory=lambda: [False, True, True])
    heads: int = 4
    ctx_dim: int = 384  # text-encoder hidden size
    n_text_tokens: int = 16
    concat_cond: bool = False
    cam: bool = False
    apm: bool = False
    image_dim: int = 64  # anchor image-embedding size
    n_anchor_tokens: int = 16
    joint_attention: bool = False  # one space-time attention instead of spatial + temporal
    text_pool: bool = False  # the mean text token also enters every residual block's time embedding


@dataclass
class UNetOutput:
    sample: torch.Tensor


def _to_frames(x: torch.Tensor) -> torch.Tensor:  # (B,C,F,H,W) -> (B*F, H*W, C)
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * f, h * w, c)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1))
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0))
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class STBlock(nn.Module):
    """Spatial self-attention, temporal self-attention, cross-attention (to the text, or
    to the APM mix of text and anchor), MLP."""

    def __init__(self, dim: int, heads: int, cfg: VideoUNetConfig):
        super().__init__()
        self.joint = cfg.joint_attention
        self.norm_s, self.norm_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_x, self.norm_m = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.spatial = Attention(dim, heads)
        self.temporal = Attention(dim, heads)
        self.cross = Attention(dim, heads, kv_dim=cfg.ctx_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.apm = (
            APMMixer(cfg.n_anchor_tokens, cfg.n_text_tokens, cfg.ctx_dim) if cfg.apm else None
        )

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, anchor: torch.Tensor | None
    ) -> torch.Tensor:
        b, c, f, h, w = x.shape
        ctx = text if anchor is None or self.apm is None else self.apm(text, anchor)
        t = _to_frames(x)
        t = t + self.spatial(self.norm_s(t))
        pos = sinusoid(torch.arange(f, device=x.device), c)
        if self.joint:  # every position of every frame sees the whole chunk
            t = t.view(b, f * h * w, c)
            tn = self.norm_t(t) + pos.repeat_interleave(h * w, 0)
            t = (t + self.temporal(tn)).view(b * f, h * w, c)
        else:
            t = t.view(b, f, h, w, c).permute(0, 2, 3, 1, 4).reshape(b * h * w, f, c)
            t = t + self.temporal(self.norm_t(t) + pos)
            t = t.view(b, h, w, f, c).permute(0, 3, 1, 2, 4).reshape(b * f, h * w, c)
        t = t + self.cross(self.norm_x(t), ctx.repeat_interleave(f, 0))
        t = t + self.mlp(self.norm_m(t))
        return t.view(b, f, h, w, c).permute(0, 4, 1, 2, 3)


class Level(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, attn: bool, cfg: VideoUNetConfig):
        super().__init__()
        self.res = ResBlock(cin, cout, tdim)
        self.attn = STBlock(cout, cfg.heads, cfg) if attn else None

    def forward(self, x, temb, text, anchor):
        x = self.res(x, temb)
        return self.attn(x, text, anchor) if self.attn is not None else x


class Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv3d(c, c, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class Encoder(nn.Module):
    """conv_in + the down path; returns the skip features of every level."""

    def __init__(self, cfg: VideoUNetConfig, tdim: int, in_channels: int):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv3d(in_channels, ch[0], (1, 3, 3), padding=(0, 1, 1))
        self.levels = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], tdim, cfg.attn_levels[i], cfg) for i in range(len(ch))
        )
        self.downs = nn.ModuleList(Down(ch[i]) for i in range(len(ch) - 1))

    def forward(self, x, temb, text, anchor, extra: torch.Tensor | None = None):
        h = self.conv_in(x)
        if extra is not None:
            h = h + extra
        skips = []
        for i, level in enumerate(self.levels):
            h = level(h, temb, text, anchor)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return skips


class VideoUNet(nn.Module):
    def __init__(self, config: VideoUNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        if not (len(ch) == len(cfg.attn_levels) and all(c % 8 == 0 for c in ch)):
            raise ValueError("channels must be multiples of 8, one attn_levels flag per level")
        if cfg.concat_cond and cfg.cam:
            raise ValueError("concat_cond (naive baseline) and cam are alternatives")
        tdim = 4 * ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        if cfg.text_pool:
            self.text_pool = nn.Sequential(
                nn.Linear(cfg.ctx_dim, tdim), nn.SiLU(), nn.Linear(tdim, tdim)
            )
        in_ch = cfg.in_channels + (3 if cfg.concat_cond else 0)
        self.encoder = Encoder(cfg, tdim, in_ch)
        self.mid = Level(ch[-1], ch[-1], tdim, True, cfg)
        self.up_levels = nn.ModuleList(
            Level(2 * ch[i], ch[i], tdim, cfg.attn_levels[i], cfg) for i in range(len(ch))
        )
        self.ups = nn.ModuleList(Up(ch[i], ch[i - 1]) for i in range(1, len(ch)))
        self.norm_out = nn.GroupNorm(8, ch[0])
        self.conv_out = nn.Conv3d(ch[0], cfg.out_channels, (1, 3, 3), padding=(0, 1, 1))
        if cfg.cam:
            # the clean conditioning frames enter the CAM encoder through a zero-initialised
            # embedding added to its input features (ControlNet style)
            self.cam_frame_encoder = cond_frame_embedding(cfg.in_channels, ch[0])
            self.cam_encoder = Encoder(cfg, tdim, cfg.in_channels)
            self.cam_inject = nn.ModuleList(CAMInjection(c, cfg.heads) for c in ch)
        if cfg.apm:
            self.apm_tokens = anchor_tokens(cfg.image_dim, cfg.n_anchor_tokens, cfg.ctx_dim)

    # --- StreamingT2V stage-2 helpers -------------------------------------------------
    def init_cam_from_base(self) -> None:
        """Start the CAM encoder as a copy of the UNet encoder (the paper's trainable copy)."""
        if not self.config.cam:
            raise ValueError("this model has no CAM")
        self.cam_encoder.load_state_dict(self.encoder.state_dict())

    def memory_parameters(self) -> list[nn.Parameter]:
        """The CAM and APM parameters (trained on top of a frozen base model)."""
        return [
            p for n, p in self.named_parameters() if n.startswith(("cam_", "apm_")) or ".apm." in n
        ]

    # ----------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        cond_frames: torch.Tensor | None = None,
        anchor_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """``sample`` (B, C, F, H, W); ``encoder_hidden_states`` (B, N, ctx_dim) text tokens;
        ``cond_frames`` (B, C, F_cond, H, W) clean frames of the previous chunk (CAM, or
        the naive model's last frame); ``anchor_embeds`` (B, image_dim) for APM."""
        cfg = self.config
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_mlp(sinusoid(t, cfg.channels[0]))
        text = encoder_hidden_states
        if cfg.text_pool:  # mean over the tokens that are not padding (zero rows)
            real = (text.abs().sum(-1, keepdim=True) > 0).to(text.dtype)
            pooled = (text * real).sum(1) / real.sum(1).clamp(min=1)
            temb = temb + self.text_pool(pooled)
        anchor = None
        if cfg.apm and anchor_embeds is not None:
            anchor = self.apm_tokens(anchor_embeds).view(b, cfg.n_anchor_tokens, cfg.ctx_dim)
        x = sample
        if cfg.concat_cond:
            if cond_frames is None:
                raise ValueError("the naive model needs cond_frames (the previous chunk)")
            last = cond_frames[:, :, -1:].expand(-1, -1, sample.shape[2], -1, -1)
            x = torch.cat([sample, last], 1)
        skips = self.encoder(x, temb, text, anchor)
        if cfg.cam and cond_frames is not None:
            fc = cond_frames.shape[2]
            if fc > sample.shape[2]:
                raise ValueError(f"{fc} conditioning frames for a {sample.shape[2]}-frame chunk")
            cam = self.cam_encoder(
                sample[:, :, :fc], temb, text, anchor, extra=self.cam_frame_encoder(cond_frames)
            )
            skips = [inj(s, c) for inj, s, c in zip(self.cam_inject, skips, cam, strict=True)]
        h = self.mid(skips[-1], temb, text, anchor)
        for i in reversed(range(len(cfg.channels))):
            h = self.up_levels[i](torch.cat([h, skips[i]], 1), temb, text, anchor)
            if i > 0:
                h = self.ups[i - 1](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return UNetOutput(out) if return_dict else (out,)
