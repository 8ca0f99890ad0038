"""A captioned synthetic video world for text-to-video.

One object (circle, square or triangle, in one of four colours) moves over a
patterned background (striped, checkered or plain, in one of three colours).
It bounces off the walls, circles, or wanders (turning and changing speed),
slowly or quickly, and squares and triangles spin as they go. A caption says
all of it::

    "a red square bounces quickly over a striped gray background"

Videos are analytic: any frame renders at any resolution (2x supersampled),
for any length, deterministic by seed. Captions are split by a hash of the
caption, so held-out captions are combinations never seen in training.

    clip = sample_clip(seed=3)
    video = clip.render(n_frames=240, size=32)    # (T, H, W, 3) uint8
    clip.caption
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
BG_COLORS = {"gray": (120, 120, 120), "brown": (120, 80, 50), "teal": (30, 110, 110)}
PATTERNS = ("striped", "checkered", "plain")
MOTIONS = ("bounces", "circles", "wanders")
SPEEDS = {"slowly": 0.012, "quickly": 0.03}  # fraction of the frame per frame
ATTRIBUTES = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "motion": MOTIONS,
    "speed": tuple(SPEEDS),
    "bg_color": tuple(BG_COLORS),
    "pattern": PATTERNS,
}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
RADIUS = 0.16


def caption_of(attrs: dict[str, str]) -> str:
    return (
        f"a {attrs['color']} {attrs['shape']} {attrs['motion']} {attrs['speed']} "
        f"over a {attrs['pattern']} {attrs['bg_color']} background"
    )


def all_captions() -> list[dict[str, str]]:
    """Every attribute combination, in a fixed order."""
    keys = list(ATTRIBUTES)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*ATTRIBUTES.values())]


def caption_split(attrs: dict[str, str]) -> str:
    """'test' for a fixed ~15% of the combinations (by hash), else 'train'."""
    h = int(hashlib.sha256(caption_of(attrs).encode()).hexdigest()[:8], 16)
    return "test" if h % 100 < 15 else "train"


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names (words it does not know are ignored)."""
    words = text.lower().replace(",", " ").split()
    out: dict[str, str] = {}
    for key, values in ATTRIBUTES.items():
        if key == "bg_color":
            continue
        for v in values:
            if v in words:
                out[key] = v
    # colours: the first colour word is the object's, a background colour follows "over"
    if "over" in words:
        after = words[words.index("over") :]
        for v in BG_COLORS:
            if v in after:
                out["bg_color"] = v
        before = words[: words.index("over")]
        for v in COLORS:
            if v in before:
                out["color"] = v
    return out


@dataclass
class Clip:
    attrs: dict[str, str]
    seed: int

    @property
    def caption(self) -> str:
        return caption_of(self.attrs)

    def trajectory(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (T, 2) in [0, 1] frame units and spin angles (T,)."""
        rng = np.random.default_rng([self.seed, 7])
        speed = SPEEDS[self.attrs["speed"]]
        lo, hi = RADIUS, 1 - RADIUS
        pos = np.empty((n_frames, 2))
        p = rng.uniform(lo + 0.05, hi - 0.05, 2)
        heading = rng.uniform(0, 2 * np.pi)
        motion = self.attrs["motion"]
        if motion == "circles":
            r = rng.uniform(0.15, 0.25)
            centre = np.array([0.5, 0.5]) + rng.uniform(-0.05, 0.05, 2)
            w = speed / r * rng.choice([-1, 1])
            t = np.arange(n_frames)
            pos = centre + r * np.stack([np.cos(heading + w * t), np.sin(heading + w * t)], 1)
        else:
            v = speed * np.array([np.cos(heading), np.sin(heading)])
            turn_phase = rng.uniform(0, 2 * np.pi, 2)
            for t in range(n_frames):
                pos[t] = p
                if motion == "wanders":  # smooth turns and speed changes
                    heading += 0.12 * np.sin(0.07 * t + turn_phase[0])
                    s = speed * (1 + 0.6 * np.sin(0.05 * t + turn_phase[1]))
                    v = s * np.array([np.cos(heading), np.sin(heading)])
                p = p + v
                for k in range(2):  # reflect off the walls
                    if p[k] < lo or p[k] > hi:
                        p[k] = 2 * lo - p[k] if p[k] < lo else 2 * hi - p[k]
                        v[k] = -v[k]
                        if motion == "wanders":
                            heading = float(np.arctan2(v[1], v[0]))
        spin = 0.0 if self.attrs["shape"] == "circle" else rng.uniform(0.03, 0.08)
        angles = rng.uniform(0, 2 * np.pi) + spin * np.arange(n_frames)
        return pos, angles

    def render(self, n_frames: int, size: int, start: int = 0) -> np.ndarray:
        """Frames ``start .. start + n_frames - 1`` as (T, size, size, 3) uint8."""
        pos, angles = self.trajectory(start + n_frames)
        pos, angles = pos[start:], angles[start:]
        ss = 2 * size
        g = (np.arange(ss) + 0.5) / ss
        yy, xx = np.meshgrid(g, g, indexing="ij")
        bg = np.asarray(BG_COLORS[self.attrs["bg_color"]], np.float64)
        pattern = self.attrs["pattern"]
        if pattern == "striped":
            mask = (np.floor((xx + yy) * 6) % 2).astype(bool)
        elif pattern == "checkered":
            mask = ((np.floor(xx * 5) + np.floor(yy * 5)) % 2).astype(bool)
        else:
            mask = np.zeros_like(xx, dtype=bool)
        background = np.where(mask[..., None], bg * 0.55, bg)
        color = np.asarray(COLORS[self.attrs["color"]], np.float64)
        out = np.empty((n_frames, size, size, 3), np.uint8)
        for t in range(n_frames):
            dx, dy = xx - pos[t, 0], yy - pos[t, 1]
            c, s = np.cos(angles[t]), np.sin(angles[t])
            u, v = (c * dx + s * dy) / RADIUS, (-s * dx + c * dy) / RADIUS
            if self.attrs["shape"] == "circle":
                inside = u**2 + v**2 <= 1
            elif self.attrs["shape"] == "square":
                inside = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
            else:
                inside = np.ones_like(u, dtype=bool)
                for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
                    inside &= np.cos(a) * u + np.sin(a) * v <= 0.6
            img = np.where(inside[..., None], color, background)
            img = img.reshape(size, 2, size, 2, 3).mean((1, 3))
            out[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        return out


def sample_clip(seed: int, split: str = "train") -> Clip:
    """A clip whose caption belongs to ``split`` ('train' or 'test' captions; 'val' draws
    from the training captions with a disjoint seed stream)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], seed])
    want = "test" if split == "test" else "train"
    pool = [a for a in all_captions() if caption_split(a) == want]
    attrs = pool[int(rng.integers(len(pool)))]
    return Clip(attrs=attrs, seed=int(rng.integers(2**31)))


def clip_for_caption(caption: str, seed: int = 0) -> Clip:
    """A clip of the world that a caption describes (every attribute must be named)."""
    attrs = parse_caption(caption)
    missing = [k for k in ATTRIBUTES if k not in attrs]
    if missing:
        raise ValueError(f"caption {caption!r} does not name: {', '.join(missing)}")
    return Clip(attrs=attrs, seed=seed)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., T, H, W, 3) uint8 -> (..., 3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1
    return x.movedim(-1, -4)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, T, H, W) in [-1, 1] -> (..., T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.movedim(-4, -1).cpu().numpy()


def clip_batch(
    rng: np.random.Generator,
    batch: int,
    n_frames: int,
    size: int,
    max_start: int = 0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Random training clips: frames (B, T, H, W, 3), each video's first frame
    (B, H, W, 3) and the captions. Clips start at a random frame in [0, max_start]."""
    clips = [sample_clip(int(rng.integers(2**31)), split) for _ in range(batch)]
    starts = rng.integers(0, max_start + 1, batch)
    frames = np.stack(
        [c.render(n_frames, size, int(s)) for c, s in zip(clips, starts, strict=True)]
    )
    first = np.stack([c.render(1, size)[0] for c in clips])
    return frames, first, [c.caption for c in clips]
