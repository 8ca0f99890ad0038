"""Image and video file I/O shared by the methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_image(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, ...) as (H, W, 3) uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise ImportError("reading images needs Pillow: pip install 'longseq[plot]'") from e
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image file Pillow can read") from e


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 RGB to ``path`` (format from the suffix)."""
    from PIL import Image

    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return Path(path)
