"""A captioned synthetic video world for text-to-video that needs memory.

One object (circle, square, triangle or cross) moves over a patterned
background. It bounces, circles, or wanders (turning and changing speed),
slowly or quickly, and all but circles spin as they go. The caption names the
shape, the motion and the speed only::

    "a triangle wanders quickly"

The object's colour and the background's colour and pattern (plain, striped,
checkered) are drawn per clip and never named, so a generator that continues a
video can keep them only by remembering earlier frames. The object moves in an
arena wider than the frame: it leaves through the left or right edge, stays out
of view for longer than a short memory holds (``HIDDEN`` frames, at either
speed), and comes back. Object colours are bright and background
tones dark (``LUMA_SPLIT`` separates them by at least 70 levels of luma), so
the object never blends into the background, even in grayscale.

Videos are analytic: any frame renders at any resolution (2x supersampled), for
any length, deterministic by seed. Captions are split by a hash of the caption,
so held-out captions are combinations never seen in training.

    clip = sample_clip(seed=3)
    video = clip.render(n_frames=240, size=32)    # (T, H, W, 3) uint8
    clip.caption, clip.attrs["color"], clip.visibility(240)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("bounces", "circles", "wanders")
SPEEDS = {"slowly": 0.015, "quickly": 0.04}  # fraction of the frame per frame
# appearance: drawn per clip, never in the caption
COLORS = {
    "yellow": (240, 215, 40),
    "cyan": (50, 215, 230),
    "pink": (245, 120, 215),
    "orange": (250, 140, 30),
    "white": (235, 235, 235),
    "lime": (130, 235, 90),
}
BG_COLORS = {
    "navy": (35, 45, 120),
    "maroon": (120, 35, 45),
    "forest": (35, 100, 50),
    "purple": (95, 40, 115),
}
PATTERNS = ("plain", "striped", "checkered")
PATTERN_SHADE = 0.55  # the darker tone of a pattern, as a fraction of the background colour
CAPTION_ATTRIBUTES = {"shape": SHAPES, "motion": MOTIONS, "speed": tuple(SPEEDS)}
APPEARANCE = {"color": tuple(COLORS), "bg_color": tuple(BG_COLORS), "pattern": PATTERNS}
ATTRIBUTES = {**CAPTION_ATTRIBUTES, **APPEARANCE}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
HELD_OUT = (
    "a circle wanders quickly",
    "a square circles slowly",
    "a triangle bounces quickly",
    "a cross wanders slowly",
)
RADIUS = 0.2  # object size, fraction of the frame
HIDDEN = (10.0, 16.0)  # frames fully out of view per exit (drawn per clip)
LUMA_SPLIT = 115.0  # object pixels are brighter than this (BT.601 luma), background darker


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (...,) of RGB values (..., 3) in [0, 255]."""
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def caption_of(attrs: dict[str, str]) -> str:
    return f"a {attrs['shape']} {attrs['motion']} {attrs['speed']}"


def all_captions() -> list[dict[str, str]]:
    """Every caption (shape, motion, speed combination), in a fixed order."""
    keys = list(CAPTION_ATTRIBUTES)
    return [
        dict(zip(keys, vals, strict=True))
        for vals in itertools.product(*CAPTION_ATTRIBUTES.values())
    ]


def caption_split(attrs: dict[str, str]) -> str:
    """'test' for the held-out captions (one per shape, each combination of words seen in
    training otherwise), else 'train'."""
    return "test" if caption_of(attrs) in HELD_OUT else "train"


def parse_caption(text: str) -> dict[str, str]:
    """The caption attributes (shape, motion, speed) a text names; other words are
    ignored."""
    words = text.lower().replace(",", " ").replace(".", " ").split()
    out: dict[str, str] = {}
    for key, values in CAPTION_ATTRIBUTES.items():
        for v in values:
            if v in words:
                out[key] = v
    return out


@dataclass
class Clip:
    """One video of the world: ``attrs`` holds the caption attributes and the drawn
    appearance (``color``, ``bg_color``, ``pattern``); ``seed`` fixes the trajectory."""

    attrs: dict[str, str]
    seed: int

    @property
    def caption(self) -> str:
        return caption_of(self.attrs)

    def trajectory(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (T, 2) in frame units (x leaves [0, 1] when the object is out of view)
        and spin angles (T,). Each exit keeps the object fully out of view for about
        ``HIDDEN`` frames (drawn per clip), whatever the speed."""
        rng = np.random.default_rng([self.seed, 7])
        speed = SPEEDS[self.attrs["speed"]]
        hidden = rng.uniform(*HIDDEN)
        heading = rng.uniform(0, 2 * np.pi)
        motion = self.attrs["motion"]
        t = np.arange(n_frames)
        if motion == "circles":
            # an elliptical orbit whose outer arc (about `hidden` frames long) is out of view
            rx, ry = rng.uniform(0.4, 0.48), rng.uniform(0.18, 0.26)
            r_mean = np.sqrt((rx**2 + ry**2) / 2)
            phi = min(hidden * speed / (2 * r_mean), 1.2)  # half-angle of the hidden arc
            side = rng.choice([-1.0, 1.0])
            cx = 0.5 + side * (0.5 + RADIUS - rx * np.cos(phi))
            centre = np.array([cx, 0.5 + rng.uniform(-0.04, 0.04)])
            w = speed / r_mean * rng.choice([-1, 1])
            heading = (np.pi if side > 0 else 0.0) + rng.uniform(-0.8, 0.8)  # start in view
            pos = centre + np.stack([rx * np.cos(heading + w * t), ry * np.sin(heading + w * t)], 1)
        else:
            # sideways at a constant |vx|, so every exit lasts 2 * margin / |vx| = `hidden`
            vx = speed * np.cos(rng.uniform(0, 0.6)) * rng.choice([-1.0, 1.0])
            margin = hidden * abs(vx) / 2  # the arena reaches this far beyond full exit
            lo, hi = -(RADIUS + margin), 1 + RADIUS + margin
            x = np.empty(n_frames)
            p = rng.uniform(0.3, 0.7)
            for k in range(n_frames):
                x[k] = p
                p += vx
                if p < lo or p > hi:  # reflect off the arena's side walls
                    p = 2 * lo - p if p < lo else 2 * hi - p
                    vx = -vx
            y_lo, y_hi = RADIUS, 1 - RADIUS
            if motion == "bounces":  # straight lines, reflected at the top and bottom
                vy = speed * rng.uniform(0.3, 0.8) * rng.choice([-1.0, 1.0])
                y = rng.uniform(y_lo, y_hi) + vy * t
                span = y_hi - y_lo
                y = y_lo + span - np.abs((y - y_lo) % (2 * span) - span)
            else:  # wanders: two slow waves up and down, so it turns and changes speed
                w = rng.uniform(0.02, 0.06, 2) * speed / 0.015
                amp = rng.uniform(0.4, 1.0, 2)
                wave = amp[0] * np.sin(w[0] * t + heading) + amp[1] * np.sin(w[1] * t)
                y = 0.5 + (y_hi - y_lo) / 2 * wave / amp.sum()
            pos = np.stack([x, y], 1)
        spin = 0.0 if self.attrs["shape"] == "circle" else rng.uniform(0.03, 0.08)
        angles = rng.uniform(0, 2 * np.pi) + spin * t
        return pos, angles

    def visibility(self, n_frames: int, start: int = 0) -> np.ndarray:
        """Fraction (T,) of the object's extent inside the frame, along x (0: out of view)."""
        pos, _ = self.trajectory(start + n_frames)
        x = pos[start:, 0]
        return np.clip((np.minimum(x + RADIUS, 1) - np.maximum(x - RADIUS, 0)) / (2 * RADIUS), 0, 1)

    def background(self, size: int) -> np.ndarray:
        """The background alone at the 2x supersampled resolution: (2 * size, 2 * size, 3)
        float64 (``render_background`` gives the frame)."""
        ss = 2 * size
        g = (np.arange(ss) + 0.5) / ss
        yy, xx = np.meshgrid(g, g, indexing="ij")
        pattern = self.attrs["pattern"]
        if pattern == "striped":
            mask = (np.floor((xx + yy) * 3) % 2).astype(bool)
        elif pattern == "checkered":
            mask = ((np.floor(xx * 4) + np.floor(yy * 4)) % 2).astype(bool)
        else:
            mask = np.zeros_like(xx, dtype=bool)
        bg = np.asarray(BG_COLORS[self.attrs["bg_color"]], np.float64)
        return np.where(mask[..., None], bg * PATTERN_SHADE, bg)

    def render_background(self, size: int) -> np.ndarray:
        """The background alone as a (size, size, 3) uint8 frame, rendered as frames are."""
        img = self.background(size).reshape(size, 2, size, 2, 3).mean((1, 3))
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    def render(self, n_frames: int, size: int, start: int = 0) -> np.ndarray:
        """Frames ``start .. start + n_frames - 1`` as (T, size, size, 3) uint8."""
        pos, angles = self.trajectory(start + n_frames)
        pos, angles = pos[start:], angles[start:]
        ss = 2 * size
        g = (np.arange(ss) + 0.5) / ss
        yy, xx = np.meshgrid(g, g, indexing="ij")
        background = self.background(size)
        color = np.asarray(COLORS[self.attrs["color"]], np.float64)
        shape = self.attrs["shape"]
        out = np.empty((n_frames, size, size, 3), np.uint8)
        for t in range(n_frames):
            dx, dy = xx - pos[t, 0], yy - pos[t, 1]
            c, s = np.cos(angles[t]), np.sin(angles[t])
            u, v = (c * dx + s * dy) / RADIUS, (-s * dx + c * dy) / RADIUS
            if shape == "circle":
                inside = u**2 + v**2 <= 1
            elif shape == "square":
                inside = (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
            elif shape == "cross":
                inside = ((np.abs(u) <= 0.95) & (np.abs(v) <= 0.32)) | (
                    (np.abs(v) <= 0.95) & (np.abs(u) <= 0.32)
                )
            else:
                inside = np.ones_like(u, dtype=bool)
                for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
                    inside &= np.cos(a) * u + np.sin(a) * v <= 0.55
            img = np.where(inside[..., None], color, background)
            img = img.reshape(size, 2, size, 2, 3).mean((1, 3))
            out[t] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        return out


def _appearance(rng: np.random.Generator) -> dict[str, str]:
    return {k: str(v[int(rng.integers(len(v)))]) for k, v in APPEARANCE.items()}


def sample_clip(seed: int, split: str = "train") -> Clip:
    """A clip whose caption belongs to ``split`` ('train' or 'test' captions; 'val' draws
    from the training captions with a disjoint seed stream); appearance drawn uniformly."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], seed])
    want = "test" if split == "test" else "train"
    pool = [a for a in all_captions() if caption_split(a) == want]
    attrs = pool[int(rng.integers(len(pool)))] | _appearance(rng)
    return Clip(attrs=attrs, seed=int(rng.integers(2**31)))


def clip_for_caption(caption: str, seed: int = 0, **appearance: str) -> Clip:
    """A clip of the world that a caption describes (shape, motion and speed must be
    named); the appearance is drawn from ``seed`` unless given (``color=``, ...)."""
    attrs = parse_caption(caption)
    missing = [k for k in CAPTION_ATTRIBUTES if k not in attrs]
    if missing:
        raise ValueError(f"caption {caption!r} does not name: {', '.join(missing)}")
    for k, v in appearance.items():
        if k not in APPEARANCE or v not in APPEARANCE[k]:
            raise ValueError(f"unknown appearance {k}={v!r} (known: {APPEARANCE})")
    rng = np.random.default_rng([3, seed])
    return Clip(attrs=attrs | _appearance(rng) | appearance, seed=seed)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(..., T, H, W, 3) uint8 -> (..., 3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1
    return x.movedim(-1, -4)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, T, H, W) in [-1, 1] -> (..., T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.movedim(-4, -1).cpu().numpy()


def reappearing_start(clip: Clip, n_frames: int, hidden_before: int, max_start: int, rng) -> int:
    """A start frame in [0, max_start] whose window of ``n_frames`` has the object out of
    view at frame ``hidden_before - 1`` and back in view by its last frame (a
    re-appearance after the window's first ``hidden_before`` frames), or a random start
    when the clip has none."""
    vis = clip.visibility(max_start + n_frames)
    ok = [
        s
        for s in range(max_start + 1)
        if vis[s + hidden_before - 1] == 0 and vis[s + n_frames - 1] > 0.3
    ]
    return int(rng.choice(ok)) if ok else int(rng.integers(0, max_start + 1))


def clip_batch(
    rng: np.random.Generator,
    batch: int,
    n_frames: int,
    size: int,
    max_start: int = 0,
    split: str = "train",
    reappear: float = 0.0,
    hidden_before: int = 1,
    visibility: bool = False,
    masks: bool = False,
) -> tuple[np.ndarray, ...]:
    """Random training clips: frames (B, T, H, W, 3), each video's first frame
    (B, H, W, 3) and the captions. Clips start at a random frame in [0, max_start]; a
    ``reappear`` fraction of them starts where the object is out of view at frame
    ``hidden_before - 1`` of the window and back in view at its end. With
    ``visibility``, also the share (B, T) of the object in view per frame
    (:meth:`Clip.visibility`); with ``masks`` (after it), the object's pixels (B, T, H, W)
    bool: those that differ from the clip's background."""
    clips = [sample_clip(int(rng.integers(2**31)), split) for _ in range(batch)]
    starts = [
        reappearing_start(c, n_frames, hidden_before, max_start, rng)
        if rng.uniform() < reappear
        else int(rng.integers(0, max_start + 1))
        for c in clips
    ]
    frames = np.stack([c.render(n_frames, size, s) for c, s in zip(clips, starts, strict=True)])
    first = np.stack([c.render(1, size)[0] for c in clips])
    out = (frames, first, [c.caption for c in clips])
    if visibility:
        vis = np.stack([c.visibility(n_frames, s) for c, s in zip(clips, starts, strict=True)])
        out += (vis,)
    if masks:
        bg = np.stack([c.render_background(size) for c in clips])[:, None].astype(np.int16)
        out += (np.abs(frames.astype(np.int16) - bg).max(-1) > 0,)
    return out
