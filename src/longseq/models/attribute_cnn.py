"""A small CNN that reads the video world's caption attributes from frames, for measuring
prompt fidelity independently of the generators and of APM's frame encoder.

It sees brightness only (BT.601 luma, so the object's colour does not matter) at a
small size (16 px, the base stage's), and classifies the shape of an object that is
in view. Motion and speed are not read from one frame: they come from the object's
track (:func:`longseq.streaming.metrics.object_track`), with the thresholds and the
small linear motion head stored here, fitted by ``scripts/train_fidelity_classifier.py``
on the world's training clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from longseq.models.config import ConfigDict

LUMA = (0.299, 0.587, 0.114)  # BT.601
N_TRACK_FEATURES = 5  # see longseq.streaming.metrics.track_features


@dataclass
class AttributeCNNConfig(ConfigDict):
    size: int = 16  # frames are read at size x size (the base stage's resolution)
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle", "cross"])
    motions: list[str] = field(default_factory=lambda: ["bounces", "circles", "wanders"])
    # fitted by the training script on training clips (see the checkpoint's JSON):
    visible_pixels: float = 8.0  # object pixels at `size` for "at least half in view"
    speed_split: float = 0.027  # frame widths per frame between "slowly" and "quickly"


class AttributeCNN(nn.Module):
    def __init__(self, config: AttributeCNNConfig):
        super().__init__()
        self.config = cfg = config
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(cfg.channels):
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.SiLU()]
            if i < len(cfg.channels) - 1:
                layers += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.SiLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.shape_head = nn.Linear(cin, len(cfg.shapes))
        # motion from track features: standardised, then linear
        self.motion_head = nn.Linear(N_TRACK_FEATURES, len(cfg.motions))
        self.register_buffer("track_mean", torch.zeros(N_TRACK_FEATURES))
        self.register_buffer("track_std", torch.ones(N_TRACK_FEATURES))

    @staticmethod
    def luma(frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 1, H, W) luma in [-1, 1]."""
        x = torch.as_tensor(np.asarray(frames, np.float32) @ np.array(LUMA, np.float32))
        return (x / 127.5 - 1.0).unsqueeze(1)

    def forward(self, luma: torch.Tensor) -> torch.Tensor:
        """(B, 1, size, size) luma in [-1, 1] -> shape logits (B, n_shapes)."""
        return self.shape_head(self.features(luma).mean((2, 3)))

    def motion_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N_TRACK_FEATURES) track features -> motion logits (B, n_motions)."""
        return self.motion_head((features - self.track_mean) / self.track_std)
