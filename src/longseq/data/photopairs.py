"""Frame pairs built from real photographs, with exact ground-truth motion.

The photographs are files that ship inside installed packages (nothing is downloaded):

* ``"train"`` and ``"val"``: scikit-image's bundled photos (``skimage/data``,
  ``pip install scikit-image``), split by name (:data:`VAL_PHOTOS` held out);
* ``"test"``: photos of *other* packages (:data:`TEST_PHOTOS`: matplotlib's sample data,
  scikit-learn's sample images), never used for training or for choosing settings.

Motion types (:data:`MOTIONS`), each rendered by sampling the photo through the exact
mapping (bicubic, pixel ``[i, j]`` has its centre at ``(j + 0.5, i + 0.5)``):

* ``"translate"``: the camera moves by a sub-pixel translation of up to 4 px;
* ``"rotate-scale"``: a small rotation (up to 6 degrees) and scaling (0.92-1.08) about
  the frame centre, plus up to 2 px of translation;
* ``"patch"``: a square patch cut from another photo moves (up to 5 px, sub-pixel) over
  a static background; background points it covers in frame 1 are occluded.

Points that leave the frame are occluded, as in TAP-Vid. :func:`photo_set` returns the
same layout as the synthetic world's ``SyntheticSet``, so every KL-tracing benchmark
runs on it unchanged.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MOTIONS = ("translate", "rotate-scale", "patch")

# (package, path inside it): photos of packages other than scikit-image, the test split
TEST_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
)
# scikit-image's bundled photographs (RGB or grey; diagrams and tiny images left out)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
VAL_PHOTOS = ("coffee.png", "gravel.png", "rocket.jpg", "moon.png")


def _package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the real-photo pairs need the package {package!r} installed")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {rel}")
    return path


def photo_paths(split: str) -> list[Path]:
    """The photo files of ``split`` ("train", "val" or "test")."""
    if split == "test":
        return [_package_file(pkg, rel) for pkg, rel in TEST_PHOTOS]
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    names = [n for n in SKIMAGE_PHOTOS if (n in VAL_PHOTOS) == (split == "val")]
    return [_package_file("skimage", f"data/{n}") for n in names]


def load_photos(split: str, short_side: int = 192) -> list[np.ndarray]:
    """The photos of ``split`` as (H, W, 3) float32 RGB in [0, 255], area-resized so
    their short side is ``short_side`` pixels (frames of 64 px then hold a good part of
    a scene, as a video frame would)."""
    from longseq.media import read_image

    out = []
    for path in photo_paths(split):
        img = torch.from_numpy(read_image(path)).float().permute(2, 0, 1)[None]
        h, w = img.shape[-2:]
        f = short_side / min(h, w)
        img = F.interpolate(img, size=(round(h * f), round(w * f)), mode="area")
        out.append(img[0].permute(1, 2, 0).numpy())
    return out


def sample_photo(photo: np.ndarray, src_xy: np.ndarray) -> np.ndarray:
    """Bicubic samples of ``photo`` (H, W, 3) at photo coordinates ``src_xy`` (h, w, 2)
    (pixel centres at +0.5); (h, w, 3) float32, clamped to [0, 255]."""
    h, w = photo.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)
    grid = torch.from_numpy(np.asarray(src_xy, dtype=np.float32))
    grid = grid / torch.tensor([w / 2, h / 2]) - 1  # align_corners=False convention
    out = F.grid_sample(img[None], grid[None], mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 255).numpy()


def _pixel_centres(size: int) -> np.ndarray:
    c = np.arange(size) + 0.5
    return np.stack(np.meshgrid(c, c), -1)  # (size, size, 2) as (x, y)


@dataclass
class PhotoPair:
    """Two frames and ground truth: points (N, 2) xy in frame 0 go to ``targets``
    (N, 2) in frame 1, ``occluded`` (N,) there."""

    frames: np.ndarray  # (2, S, S, 3) uint8
    points: np.ndarray
    targets: np.ndarray
    occluded: np.ndarray
    motion: str


def photo_pair(
    photos: list[np.ndarray],
    motion: str,
    rng: np.random.Generator,
    size: int = 64,
    n_points: int = 16,
) -> PhotoPair:
    """One frame pair of ``motion`` cut from a random photo of ``photos`` (the patch of
    ``"patch"`` from another one)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    pix = _pixel_centres(size)
    centre = np.array([size / 2, size / 2])
    k = int(rng.integers(len(photos)))
    bg = photos[k]
    margin = size // 2 + 8
    h, w = bg.shape[:2]
    origin = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)])
    origin = origin.round() - centre  # frame 0 is an exact crop: no resampling blur
    frame0 = sample_photo(bg, pix + origin)
    pts = rng.uniform(4, size - 4, (n_points, 2))
    if motion in ("translate", "rotate-scale"):
        if motion == "translate":
            a, t = np.eye(2), rng.uniform(-4, 4, 2)
        else:
            ang = np.deg2rad(rng.uniform(-6, 6))
            s = rng.uniform(0.92, 1.08)
            a = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            t = rng.uniform(-2, 2, 2)
        # frame-0 point q goes to p = A (q - c) + c + t; frame 1 at p shows q
        inv = np.linalg.inv(a)
        src = (pix - centre - t) @ inv.T + centre
        frame1 = sample_photo(bg, src + origin)
        targets = (pts - centre) @ a.T + centre + t
        occluded = ((targets < 0) | (targets >= size)).any(1)
    else:
        fg = photos[(k + 1 + int(rng.integers(len(photos) - 1))) % len(photos)]
        side = rng.uniform(16, 26)
        p0 = rng.uniform(6, size - 6 - side, 2)  # top-left corner in frame 0
        d = rng.uniform(-5, 5, 2)
        fh, fw = fg.shape[:2]
        fo = np.array([rng.uniform(8, fw - side - 8), rng.uniform(8, fh - side - 8)])

        def composite(corner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            inside = ((pix >= corner) & (pix < corner + side)).all(-1)
            patch = sample_photo(fg, pix - corner + fo)
            return np.where(inside[..., None], patch, frame0_bg), inside

        frame0_bg = frame0
        frame0, _ = composite(p0)
        frame1, covered = composite(p0 + d)
        n_on = n_points // 2
        pts[:n_on] = p0 + rng.uniform(1, side - 1, (n_on, 2))
        off = []
        while len(off) < n_points - n_on:  # background points outside the frame-0 patch
            q = rng.uniform(4, size - 4, 2)
            if not ((q >= p0 - 1) & (q < p0 + side + 1)).all():
                off.append(q)
        pts[n_on:] = off
        on = np.arange(n_points) < n_on
        targets = np.where(on[:, None], pts + d, pts)
        hit = ((pts >= p0 + d) & (pts < p0 + d + side)).all(1)
        occluded = np.where(on, ((targets < 0) | (targets >= size)).any(1), hit)
    frames = np.stack([frame0, frame1]).round().clip(0, 255).astype(np.uint8)
    return PhotoPair(frames, pts, targets, occluded.astype(bool), motion)


@dataclass
class PhotoSet:
    """Frame pairs in the layout of the world's ``SyntheticSet`` (the KL-tracing
    benchmarks take either), with each pair's motion type."""

    videos: np.ndarray  # (B, 2, H, W, 3) uint8
    query_points: np.ndarray  # (B, N, 3) as (t, y, x), all at frame 0
    tracks: np.ndarray  # (B, N, 2, 2) xy
    occluded: np.ndarray  # (B, N, 2)
    motions: list[str]


def photo_set(
    n_pairs: int,
    split: str,
    motions: tuple[str, ...] = MOTIONS,
    size: int = 64,
    n_points: int = 16,
    seed: int = 0,
    photos: list[np.ndarray] | None = None,
) -> PhotoSet:
    """``n_pairs`` frame pairs of ``split``'s photos, the motion types taken in turn, as a
    :class:`PhotoSet` (videos of two frames, queries at frame 0)."""
    bad = set(motions) - set(MOTIONS)
    if bad or not motions:
        raise ValueError(f"motions must be among {MOTIONS}, got {motions}")
    photos = photos if photos is not None else load_photos(split)
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
    pairs = [
        photo_pair(photos, motions[i % len(motions)], rng, size, n_points) for i in range(n_pairs)
    ]
    n = n_points
    data = PhotoSet(
        videos=np.stack([p.frames for p in pairs]),
        query_points=np.stack(
            [np.concatenate([np.zeros((n, 1)), p.points[:, ::-1]], 1) for p in pairs]
        ),
        tracks=np.stack([np.stack([p.points, p.targets], 1) for p in pairs]),
        occluded=np.stack([np.stack([np.zeros(n, bool), p.occluded], 1) for p in pairs]),
        motions=[p.motion for p in pairs],
    )
    return data


def training_photo_pair(photos: list[np.ndarray], rng: np.random.Generator, size: int = 32):
    """A frame pair (2, size, size, 3) uint8 for training a frame-pair model on real
    texture: an affine camera motion (rotation up to 4 degrees, scale 0.94-1.06,
    translation up to 4 px) of one photo, 0-2 square layers cut from other photos
    moving independently (up to 4 px) in front of it, a brightness change of frame 1
    (x0.9-1.1), and sensor noise (sigma 0-3 grey levels)."""
    pix = _pixel_centres(size)
    centre = np.array([size / 2, size / 2])
    k = int(rng.integers(len(photos)))
    bg = photos[k]
    h, w = bg.shape[:2]
    margin = size // 2 + 6
    origin = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)])
    origin = origin.round() - centre
    ang, s = np.deg2rad(rng.uniform(-4, 4)), rng.uniform(0.94, 1.06)
    a = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    t = rng.uniform(-4, 4, 2)
    frames = [
        sample_photo(bg, pix + origin),
        sample_photo(bg, (pix - centre - t) @ np.linalg.inv(a).T + centre + origin),
    ]
    for _ in range(int(rng.integers(3))):  # foreground layers, front-most last
        fg = photos[(k + 1 + int(rng.integers(len(photos) - 1))) % len(photos)]
        side = rng.uniform(size / 4, size / 2)
        corner = rng.uniform(-side / 2, size - side / 2, 2)
        d = rng.uniform(-4, 4, 2)
        fh, fw = fg.shape[:2]
        fo = np.array([rng.uniform(4, fw - side - 4), rng.uniform(4, fh - side - 4)])
        for f, c in ((0, corner), (1, corner + d)):
            inside = ((pix >= c) & (pix < c + side)).all(-1)
            frames[f] = np.where(inside[..., None], sample_photo(fg, pix - c + fo), frames[f])
    frames[1] = frames[1] * rng.uniform(0.9, 1.1)
    out = np.stack(frames) + rng.normal(0, rng.uniform(0, 3), (2, size, size, 3))
    return out.round().clip(0, 255).astype(np.uint8)


def training_photo_pairs(n: int, split: str = "train", size: int = 32, seed: int = 0):
    """``n`` pairs of :func:`training_photo_pair` from ``split``'s photos, (n, 2, S, S, 3)."""
    photos = load_photos(split)
    rng = np.random.default_rng([seed, 7, {"train": 0, "val": 1, "test": 2}[split]])
    return np.stack([training_photo_pair(photos, rng, size) for _ in range(n)])
