"""A synthetic video world with exact ground-truth motion.

Textured sprites (disc, square, triangle, ellipse) move over a textured,
panning background by translation, rotation and scaling, and occlude each
other by a fixed depth order. Textures are analytic (random sinusoids plus
bright dots), so any frame can be rendered at any resolution and the position
of every surface point is known exactly at every time.

Coordinates are pixel coordinates in the TAP-Vid convention: ``(x, y)`` with
the centre of pixel ``[i, j]`` at ``(j + 0.5, i + 0.5)``. A point is occluded
at time ``t`` when another surface covers it there or it has left the frame.

    world = sample_world(seed=3, size=64, n_frames=4)
    video = world.render()                       # (T, H, W, 3) uint8
    tracks, occluded = world.track(points_xy)    # (N, T, 2), (N, T)
    flow, occ = world.dense_flow(t=1)            # frame 0 -> frame t

Deterministic by seed; the splits use disjoint seed streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SHAPES = ("disc", "square", "triangle", "ellipse")
BACKGROUND = -1  # object id of the background surface


@dataclass
class Texture:
    """Colour field on the plane: ``base + sum_k amp_k sin(freq_k . u + phase_k)`` plus
    bright Gaussian dots, in [0, 255]. ``u`` is in units of the world size."""

    base: np.ndarray  # (3,)
    freqs: np.ndarray  # (K, 2)
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K, 3)
    dots: np.ndarray  # (D, 2) dot centres
    dot_colors: np.ndarray  # (D, 3)
    dot_radius: float

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Colours (..., 3) at points ``u`` (..., 2)."""
        arg = u @ self.freqs.T + self.phases  # (..., K)
        col = self.base + np.sin(arg) @ self.amps
        if len(self.dots):
            d2 = ((u[..., None, :] - self.dots) ** 2).sum(-1)  # (..., D)
            w = np.exp(-d2 / (2 * self.dot_radius**2))
            col = col * (1 - w.sum(-1, keepdims=True).clip(0, 1)) + w @ self.dot_colors
        return np.clip(col, 0, 255)


def random_texture(rng: np.random.Generator, extent: float, unit: float = 1.0) -> Texture:
    """A texture whose dots are spread over ``[-extent, extent]^2``; one texture unit
    spans ``unit`` world units (sprites use their radius), so detail has the same
    size on screen for every surface."""
    k = int(rng.integers(3, 7))
    angle = rng.uniform(0, 2 * np.pi, k)
    mag = rng.uniform(12.0, 60.0, k) * unit
    n_dots = int(rng.uniform(15, 40) * (extent * unit) ** 2)
    return Texture(
        base=rng.uniform(40, 215, 3),
        freqs=np.stack([np.cos(angle), np.sin(angle)], 1) * mag[:, None],
        phases=rng.uniform(0, 2 * np.pi, k),
        amps=rng.uniform(-70, 70, (k, 3)) / np.sqrt(k),
        dots=rng.uniform(-extent, extent, (n_dots, 2)),
        # a quarter of the dots are near-white: bright spots that move with their surface
        dot_colors=np.where(
            rng.uniform(size=(n_dots, 1)) < 0.25,
            rng.uniform(225, 255, (n_dots, 3)),
            rng.uniform(0, 255, (n_dots, 3)),
        ),
        dot_radius=float(rng.uniform(0.012, 0.025)) / unit,
    )


@dataclass
class Sprite:
    shape: str
    texture: Texture
    center: np.ndarray  # (2,) at t=0, world units (fraction of the frame size)
    velocity: np.ndarray  # (2,) per frame
    angle: float
    spin: float  # radians per frame
    radius: float
    growth: float  # scale factor per frame

    def pose(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        center = self.center + t[..., None] * self.velocity
        return center, self.angle + self.spin * t, self.radius * self.growth**t

    def inside(self, u: np.ndarray) -> np.ndarray:
        """Mask of the unit shape at local coordinates ``u`` (..., 2)."""
        x, y = u[..., 0], u[..., 1]
        if self.shape == "disc":
            return x**2 + y**2 <= 1
        if self.shape == "square":
            return (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
        if self.shape == "ellipse":
            return x**2 + (y / 0.55) ** 2 <= 1
        m = np.ones(x.shape, dtype=bool)  # triangle: three half-planes
        for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3):
            m &= np.cos(a) * x + np.sin(a) * y <= 0.5
        return m


def _rot(angle: np.ndarray, v: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle)[..., None], np.sin(angle)[..., None]
    x, y = v[..., :1], v[..., 1:]
    return np.concatenate([c * x - s * y, s * x + c * y], -1)


@dataclass
class World:
    """One clip: a background texture panning at ``pan`` per frame and sprites
    listed back to front. ``size`` is (H, W) in pixels; world units are fractions
    of ``max(H, W)``."""

    size: tuple[int, int]
    n_frames: int
    background: Texture
    pan: np.ndarray
    sprites: list[Sprite] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return float(max(self.size))

    # --- geometry -----------------------------------------------------------------
    def _local(self, obj: int, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        """World point(s) ``p`` (..., 2) at time(s) ``t`` -> the object's own coordinates."""
        if obj == BACKGROUND:
            return p - t[..., None] * self.pan
        center, angle, radius = self.sprites[obj].pose(t)
        return _rot(-angle, p - center) / radius[..., None]

    def _world(self, obj: int, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        if obj == BACKGROUND:
            return u + t[..., None] * self.pan
        center, angle, radius = self.sprites[obj].pose(t)
        return center + _rot(angle, u * radius[..., None])

    def top_object(self, p: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Id of the front-most surface at world points ``p`` (..., 2) at time ``t``."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), p.shape[:-1])
        top = np.full(p.shape[:-1], BACKGROUND, dtype=np.int64)
        for k, sprite in enumerate(self.sprites):
            top[sprite.inside(self._local(k, p, t))] = k
        return top

    def track(self, points_xy: np.ndarray, t0: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Follow pixel points of frame ``t0`` through every frame.

        Returns ``tracks`` (N, T, 2) in pixels and ``occluded`` (N, T) bool; the
        points sit on the surface visible at ``t0``."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2) / self.scale
        n, T = len(pts), self.n_frames
        obj = self.top_object(pts, float(t0))
        tracks = np.zeros((n, T, 2))
        times = np.arange(T, dtype=np.float64)
        for o in np.unique(obj):
            sel = obj == o
            u = self._local(int(o), pts[sel], np.full(sel.sum(), float(t0)))
            tracks[sel] = self._world(int(o), u[:, None, :], times[None, :].repeat(sel.sum(), 0))
        visible_obj = self.top_object(tracks, times[None, :].repeat(n, 0))
        occluded = visible_obj != obj[:, None]
        tracks_px = tracks * self.scale
        h, w = self.size
        outside = (
            (tracks_px[..., 0] < 0)
            | (tracks_px[..., 0] >= w)
            | (tracks_px[..., 1] < 0)
            | (tracks_px[..., 1] >= h)
        )
        return tracks_px.astype(np.float32), occluded | outside

    def pixel_centers(self) -> np.ndarray:
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        return np.stack([xx, yy], -1)

    def dense_flow(self, t: int, t0: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow (H, W, 2) from frame ``t0`` to frame ``t`` and its occlusion mask."""
        grid = self.pixel_centers()
        tracks, occ = self.track(grid.reshape(-1, 2), t0)
        h, w = self.size
        flow = tracks[:, t] - tracks[:, t0]
        return flow.reshape(h, w, 2), occ[:, t].reshape(h, w)

    # --- rendering ----------------------------------------------------------------
    def render_frame(self, t: int, supersample: int = 1) -> np.ndarray:
        """Frame ``t`` as (H, W, 3) uint8, box-filtered over ``supersample``^2 samples."""
        h, w = self.size
        s = supersample
        yy, xx = np.mgrid[0 : h * s, 0 : w * s].astype(np.float64) + 0.5
        p = np.stack([xx, yy], -1) / (s * self.scale)
        tt = np.full(p.shape[:-1], float(t))
        img = self.background(self._local(BACKGROUND, p, tt))
        for k, sprite in enumerate(self.sprites):
            u = self._local(k, p, tt)
            m = sprite.inside(u)
            img[m] = sprite.texture(u[m])
        img = img.reshape(h, s, w, s, 3).mean((1, 3))
        return np.round(img).clip(0, 255).astype(np.uint8)

    def render(self) -> np.ndarray:
        """The clip, (T, H, W, 3) uint8."""
        return np.stack([self.render_frame(t) for t in range(self.n_frames)])

    def sample_points(
        self, n: int, rng: np.random.Generator, on_sprites: float = 0.5
    ) -> np.ndarray:
        """``n`` query points (pixel xy) at frame 0; about ``on_sprites`` of them on sprites."""
        grid = self.pixel_centers().reshape(-1, 2)
        top = self.top_object(grid / self.scale, 0.0)
        jitter = rng.uniform(-0.5, 0.5, (n, 2))
        on = np.flatnonzero(top != BACKGROUND)
        n_on = min(int(round(n * on_sprites)), len(on)) if len(on) else 0
        idx = np.concatenate(
            [rng.choice(on, n_on), rng.choice(len(grid), n - n_on)]
            if n_on
            else [rng.choice(len(grid), n)]
        )
        pts = grid[idx] + jitter
        # keep the jittered point on the surface its pixel centre shows
        keep = self.top_object(pts / self.scale, 0.0) == top[idx]
        pts[~keep] = grid[idx][~keep]
        return pts.astype(np.float32)


def sample_world(
    seed: int,
    size: int | tuple[int, int] = 64,
    n_frames: int = 4,
    n_sprites: tuple[int, int] = (2, 4),
    max_speed: float = 0.1,
    split: str = "train",
) -> World:
    """A random clip. ``max_speed`` is the largest sprite translation per frame as a
    fraction of the frame size; the background pans at up to a third of it."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r} (known: {sorted(SPLIT_SEEDS)})")
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if min(hw) < 8:
        raise ValueError(f"frame size must be at least 8 pixels, got {hw}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], seed])
    aspect = np.array([hw[1], hw[0]]) / max(hw)  # extent of the frame in world units
    sprites = []
    for _ in range(int(rng.integers(n_sprites[0], n_sprites[1] + 1))):
        radius = float(rng.uniform(0.12, 0.22))
        sprites.append(
            Sprite(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                texture=random_texture(rng, 1.2, unit=radius),
                center=rng.uniform(0.2, 0.8, 2) * aspect,
                velocity=rng.uniform(-max_speed, max_speed, 2),
                angle=float(rng.uniform(0, 2 * np.pi)),
                spin=float(rng.uniform(-0.12, 0.12)),
                radius=radius,
                growth=float(rng.uniform(0.96, 1.04)),
            )
        )
    return World(
        size=hw,
        n_frames=n_frames,
        background=random_texture(rng, 1.5),
        pan=rng.uniform(-max_speed / 3, max_speed / 3, 2),
        sprites=sprites,
    )


def crop_resize(frames: np.ndarray, box: tuple[float, float, float], out: int) -> np.ndarray:
    """Square crop ``box = (x0, y0, side)`` (pixels) of frames (..., H, W, 3) resized to
    ``out`` x ``out`` by area averaging (crop bounds rounded to whole pixels)."""
    x0, y0, side = (int(round(v)) for v in box)
    crop = frames[..., y0 : y0 + side, x0 : x0 + side, :]
    lead = crop.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(crop)).reshape(-1, side, side, 3)
    x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(out, out), mode="area")
    x = x.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
    return x.reshape(*lead, out, out, 3)


def training_pairs(
    n: int,
    seed: int,
    image_size: int = 32,
    render_size: int = 64,
    split: str = "train",
    max_gap: int = 2,
    native: bool = False,
) -> np.ndarray:
    """``n`` frame pairs (n, 2, image_size, image_size, 3) uint8 for the video model.

    Each clip is rendered at ``render_size``; a random square window (side between
    ``image_size`` and ``render_size``) of frames (0, t), t in {1, ..., max_gap}, is
    resized to ``image_size``: the model sees the zoom levels that KL-tracing queries
    it at. ``native`` keeps every window at ``image_size`` (no resizing: the zoom that
    matches the render's own pixels)."""
    if max_gap < 1:
        raise ValueError(f"max_gap must be >= 1, got {max_gap}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], 7, seed])
    out = np.zeros((n, 2, image_size, image_size, 3), dtype=np.uint8)
    for i in range(n):
        world = sample_world(
            int(rng.integers(2**31)), render_size, n_frames=max_gap + 1, split=split
        )
        t = int(rng.integers(1, max_gap + 1))
        frames = np.stack([world.render_frame(0), world.render_frame(t)])
        side = int(rng.integers(image_size, render_size + 1))
        if native:
            side = image_size
        x0, y0 = rng.integers(0, render_size - side + 1, 2)
        out[i] = crop_resize(frames, (x0, y0, side), image_size)
    return out
