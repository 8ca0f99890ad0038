"""Vision Mamba (Vim) with the ShuffleMamba layer-wise shuffle.

Patchify (a strided conv), a class token, learned position embeddings, a stack of
bidirectional Mamba blocks, a final RMSNorm and a linear head on the class token. The
class token sits in the middle of the patch sequence (``cls_position="middle"``, as in
Vim) or before it (``"first"``, index 0, as in the ShuffleMamba authors' code). A
bidirectional block scans the normalized sequence forwards with one Mamba mixer and the
flipped sequence with a second one (separate parameters) and adds both, through
drop-path (stochastic depth, rate ``drop_path * l / (depth - 1)`` for block l), to the
residual.

The mixer is the project's Mamba-2 mixer (:class:`longseq.models.mamba2.Mamba2Mixer`):
the paper's Vim uses Mamba-1 blocks, so parameter counts of the presets differ from
the paper's; the regularizer does not depend on the mixer.

    model = Vim(img_size=32, patch_size=4, dim=96, depth=12, num_classes=8,
                shuffle_p_max=0.5)            # linear schedule, training only
    model = Vim(img_size=32, patch_size=4, dim=96, depth=12, num_classes=8,
                cls_position="first", drop_path=0.1, shuffle_p_max=0.5,
                shuffle_schedule="constant")  # the authors' ShuffleMamba set-up
    model = vim_base(num_classes=1000)        # paper-size presets: vim_middle/base/large
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from longseq.models.config import ConfigDict
from longseq.models.mamba2 import Mamba2Config, Mamba2Mixer, RMSNorm
from longseq.models.shuffle import DropPath, LayerwiseShuffle, drop_path_rates

CLS_POSITIONS = ("first", "middle")


@dataclass
class VimConfig(ConfigDict):
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768
    depth: int = 24
    num_classes: int = 1000
    d_state: int = 16  # paper: 16
    expand: int = 2  # paper: 2
    headdim: int = 64
    d_conv: int = 4
    chunk_size: int = 64
    shuffle_p_max: float = 0.0  # paper: 0.5 for Base
    shuffle_schedule: str = "linear"  # "linear" | "constant" | "uniform" (models/shuffle.py)
    cls_position: str = "middle"  # Vim: middle; the ShuffleMamba authors' code: "first"
    drop_path: float = 0.0  # last block's rate (linear rule); authors' Base run.sh: 0.5

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.depth < 1 or self.dim < 1 or self.num_classes < 1:
            raise ValueError("depth, dim and num_classes must be >= 1")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(
                f"cls_position must be one of {CLS_POSITIONS}, got {self.cls_position!r}"
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def mixer_config(self) -> Mamba2Config:
        return Mamba2Config(
            d_model=self.dim,
            n_layer=1,
            d_state=self.d_state,
            expand=self.expand,
            headdim=self.headdim,
            d_conv=self.d_conv,
            chunk_size=self.chunk_size,
        )


class BiMambaBlock(nn.Module):
    """x + drop_path(fwd(norm(x)) + flip(bwd(flip(norm(x))))) over the token axis (dim 1)."""

    def __init__(self, cfg: VimConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        mcfg = cfg.mixer_config()
        self.norm = RMSNorm(cfg.dim)
        self.fwd = Mamba2Mixer(mcfg)
        self.bwd = Mamba2Mixer(mcfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.drop_path(self.fwd(h) + self.bwd(h.flip(1)).flip(1))


class Vim(nn.Module):
    def __init__(self, cfg: VimConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else VimConfig(**kwargs)
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        # index of the class token in the token sequence
        self.cls_pos = 0 if cfg.cls_position == "first" else cfg.num_patches // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dim))
        self.blocks = LayerwiseShuffle(
            [BiMambaBlock(cfg, rate) for rate in drop_path_rates(cfg.depth, cfg.drop_path)],
            p_max=cfg.shuffle_p_max,
            schedule=cfg.shuffle_schedule,
        )
        self.norm_f = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.head.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) -> (b, num_patches + 1, dim), the class token at ``self.cls_pos``."""
        cfg = self.config
        if images.dim() != 4 or images.shape[1:] != (cfg.in_chans, cfg.img_size, cfg.img_size):
            raise ValueError(
                f"expected images of shape (batch, {cfg.in_chans}, {cfg.img_size}, "
                f"{cfg.img_size}), got {tuple(images.shape)}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, : self.cls_pos], cls, x[:, self.cls_pos :]], dim=1)
        return x + self.pos_embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.tokens(images))
        return self.head(self.norm_f(x[:, self.cls_pos]))


def vim_middle(**kw) -> Vim:
    """Paper's Middle size: d=576, depth 32."""
    return Vim(VimConfig(**{"dim": 576, "depth": 32, **kw}))


def vim_base(**kw) -> Vim:
    """Paper's Base size: d=768, depth 24 (ShuffleMamba-B uses p_max=0.5)."""
    return Vim(VimConfig(**{"dim": 768, "depth": 24, **kw}))


def vim_large(**kw) -> Vim:
    """Paper's Large size: d=1024, depth 48."""
    return Vim(VimConfig(**{"dim": 1024, "depth": 48, **kw}))
