"""A user's own images for classification: a folder with one subfolder per class.

    data/
      cat/   img001.png  img002.jpg ...
      dog/   a.png ...

Class names are the subfolder names, sorted (class k is the k-th name). Image files
(``IMAGE_SUFFIXES``) are read with Pillow, converted to RGB and resized to ``size`` x
``size`` (bilinear, the aspect ratio is not kept); other files and hidden entries are
left alone. A fraction of each class is held out for validation, chosen by a fixed seed,
so every run on the same folder sees the same split.

    data = load_image_folder("data", size=32)
    data["classes"]            # ["cat", "dog"]
    images, labels = data["train"]   # uint8 (n, 3, 32, 32), int64 (n,)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan_image_folder(root: str | Path) -> tuple[list[str], list[list[Path]]]:
    """The class names and, per class, its image files (sorted), checking the layout."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder (give a folder with one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise ValueError(
            f"{root} has no class subfolders (expected {root}/<class name>/<image files>)"
        )
    if len(classes) < 2:
        raise ValueError(
            f"{root} has one class only ({classes[0]!r}); a classifier needs at least two "
            "class subfolders"
        )
    files = []
    for name in classes:
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise ValueError(
                f"class folder {root / name} has no image files ({', '.join(IMAGE_SUFFIXES)})"
            )
        files.append(found)
    return classes, files


def read_image(path: str | Path, size: int) -> torch.Tensor:
    """One image file as uint8 (3, size, size), RGB, resized (bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        why = "not an image file Pillow knows" if isinstance(e, UnidentifiedImageError) else e
        raise ValueError(f"cannot read image {path} ({why})") from None
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def split_files(
    files: list[list[Path]], val_fraction: float, seed: int = 0
) -> dict[str, list[tuple[Path, int]]]:
    """Hold out ``val_fraction`` of each class for validation (at least one image of a
    class with two or more, and at least one left for training), drawn with ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[Path, int]]] = {"train": [], "val": []}
    for label, paths in enumerate(files):
        order = rng.permutation(len(paths))
        n_val = min(max(1, round(val_fraction * len(paths))), len(paths) - 1)
        for rank, i in enumerate(order):
            out["val" if rank < n_val else "train"].append((paths[i], label))
    if not out["val"]:
        raise ValueError("too few images for a validation split: give each class two or more")
    return out


def load_image_folder(
    root: str | Path,
    size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """{"classes": names, "train": (images, labels), "val": (images, labels)}: uint8
    images (n, 3, size, size) and int64 labels. ``progress`` is called with 1 per image
    read. Raises ValueError, naming the folder or file, for a bad layout or an
    unreadable image."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    classes, files = scan_image_folder(root)
    out: dict = {"classes": classes}
    for split, items in split_files(files, val_fraction, seed).items():
        images = []
        for path, _ in items:
            images.append(read_image(path, size))
            if progress is not None:
                progress(1)
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        out[split] = (torch.stack(images), labels)
    return out


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files among ``paths``: a file as given, a folder searched (subfolders
    too, sorted) for files with an image suffix. ValueError for a path that does not
    exist or when no image is found."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p} does not exist")
    if not files:
        shown = ", ".join(str(p) for p in paths)
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {shown}")
    return files
