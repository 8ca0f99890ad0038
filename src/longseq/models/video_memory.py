"""StreamingT2V's two memories as components, shared by every UNet in longseq: the
project's own ``VideoUNet`` builds its CAM and APM from them, and
``longseq.streaming.memory`` attaches them to a ``diffusers`` ``UNet3DConditionModel``.

- :class:`CAMInjection` — temporal attention from a skip connection's frames to the CAM
  features of the ``F_cond`` conditioning frames, the output projection zero-initialised;
- :func:`cond_frame_embedding` — the clean conditioning frames embedded into the CAM
  encoder's first features, last layer zero-initialised (ControlNet style);
- :func:`anchor_tokens` — the anchor frame's image embedding expanded to tokens;
- :class:`APMMixer` — one cross-attention layer's mix of anchor and text tokens, added
  to the text through ``SiLU(alpha)``, ``alpha`` starting at 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (..., dim) of positions or timesteps ``pos``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=pos.device) / half)
    arg = pos.float()[..., None] * freqs
    return torch.cat([arg.sin(), arg.cos()], -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim)
        if zero_out:
            nn.init.zeros_(self.o.weight)
            nn.init.zeros_(self.o.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, d))


def _to_pixels(x: torch.Tensor) -> torch.Tensor:  # (B,C,F,H,W) -> (B*H*W, F, C)
    b, c, f, h, w = x.shape
    return x.permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)


class CAMInjection(nn.Module):
    """Temporal attention from the chunk's frames to the conditioning frames at one skip,
    output projection zero-initialised."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, zero_out=True)

    def residual(self, skip: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """What CAM adds to ``skip`` (B, C, F, H, W), reading ``cond`` (B, C, F_cond, H, W)."""
        b, c, f, h, w = skip.shape
        q, kv = _to_pixels(skip), _to_pixels(cond)
        q = self.norm_q(q) + sinusoid(torch.arange(f, device=skip.device), c)
        kv = self.norm_kv(kv) + sinusoid(torch.arange(kv.shape[1], device=skip.device), c)
        return self.attn(q, kv).view(b, h, w, f, c).permute(0, 4, 3, 1, 2)

    def forward(self, skip: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return skip + self.residual(skip, cond)


def cond_frame_embedding(in_channels: int, channels: int) -> nn.Sequential:
    """Clean conditioning frames (B, C, F, H, W) -> features (B, channels, F, H, W), per
    frame, the last layer zero-initialised."""
    net = nn.Sequential(
        nn.Conv3d(in_channels, channels, (1, 3, 3), padding=(0, 1, 1)),
        nn.SiLU(),
        nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1)),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def anchor_tokens(image_dim: int, n_tokens: int, ctx_dim: int) -> nn.Sequential:
    """The anchor's image embedding (B, image_dim) -> (B, n_tokens * ctx_dim), an MLP."""
    return nn.Sequential(
        nn.Linear(image_dim, 2 * image_dim),
        nn.SiLU(),
        nn.Linear(2 * image_dim, n_tokens * ctx_dim),
    )


class APMMixer(nn.Module):
    """One cross-attention layer's APM: [anchor tokens; text tokens] mixed over the token
    axis back to the text's length, LayerNorm, added to the text through SiLU(alpha)."""

    def __init__(self, n_anchor: int, n_text: int, ctx_dim: int):
        super().__init__()
        self.mix = nn.Linear(n_anchor + n_text, n_text)
        self.norm = nn.LayerNorm(ctx_dim)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, text: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([anchor, text], 1).transpose(1, 2)  # (B, D, Na + Nt)
        mixed = self.norm(self.mix(tokens).transpose(1, 2))
        return text + F.silu(self.alpha) * mixed
