"""A small image encoder trained on the video world: the stand-in for CLIP's image
tower. Its embedding is the APM anchor feature; its attribute heads (shape,
colour, background, pattern) score how well frames match a caption."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.models.config import ConfigDict


@dataclass
class FrameEncoderConfig(ConfigDict):
    size: int = 32  # frames are resized to size x size
    in_channels: int = 3  # 3 for a frame; 6 reads two frames stacked (motion between them)
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    dim: int = 64
    attributes: dict[str, list[str]] = field(default_factory=dict)


class FrameEncoder(nn.Module):
    def __init__(self, config: FrameEncoderConfig):
        super().__init__()
        self.config = cfg = config
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, cfg.dim)
        self.heads = nn.ModuleDict(
            {k: nn.Linear(cfg.dim, len(v)) for k, v in cfg.attributes.items()}
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, dim) embedding."""
        if images.shape[-1] != self.config.size or images.shape[-2] != self.config.size:
            images = F.interpolate(images, size=(self.config.size,) * 2, mode="bilinear")
        return self.proj(self.features(images).mean((2, 3)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        z = F.silu(self.embed(images))
        return {k: head(z) for k, head in self.heads.items()}
