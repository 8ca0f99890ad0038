"""A plain Vision Transformer, the same-size baseline for the Vim experiments.

Patchify, class token first, learned position embeddings, pre-norm blocks of
multi-head self-attention and a 4x MLP (each residual branch through drop-path, rate
``drop_path * l / (depth - 1)`` for block l), final LayerNorm, linear head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.models.config import ConfigDict
from longseq.models.shuffle import DropPath, LayerwiseShuffle, drop_path_rates


@dataclass
class ViTConfig(ConfigDict):
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    shuffle_p_max: float = 0.0
    shuffle_schedule: str = "linear"
    drop_path: float = 0.0  # rate of the last block (linear rule, as timm)


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.drop_path(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ViTConfig(**kwargs)
        self.config = cfg
        n = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.dim))
        self.blocks = LayerwiseShuffle(
            [
                ViTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, rate)
                for rate in drop_path_rates(cfg.depth, cfg.drop_path)
            ],
            p_max=cfg.shuffle_p_max,
            schedule=cfg.shuffle_schedule,
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)[:, 0]))
