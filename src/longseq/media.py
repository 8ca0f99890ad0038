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


VIDEO_SUFFIXES = (".gif", ".mp4")
_VIDEO_EXTRA = "pip install 'longseq[video]'"
# GIF frame delays are whole centiseconds and Pillow folds a frame identical to the one
# before it into that frame's delay; the frame rate is kept in the file's comment so that
# read_video can unfold such runs back into frames.
_GIF_FPS_TAG = "longseq-fps="


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames must hold at least one non-empty frame, got shape {frames.shape}")
    return frames


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    return int(scale)


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of the two axes before the last (H and W)."""
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _require_pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"GIF video I/O needs Pillow: {_VIDEO_EXTRA}") from e
    return Image


def require_cv2():
    """The OpenCV module, or an ImportError with the install hint (optical flow, resizing)."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "OpenCV is required: install opencv-python-headless (pip install 'longseq[flow]')"
        ) from err
    return cv2


def _require_imageio():
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401  (the FFMPEG plugin's backend)
    except ImportError as e:
        raise ImportError(f"MP4 video I/O needs imageio and imageio-ffmpeg: {_VIDEO_EXTRA}") from e
    return iio


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"unsupported video suffix {path.suffix!r} for {path}; "
            f"supported: {', '.join(VIDEO_SUFFIXES)}"
        )
    return suffix


def check_video_output(path: str | Path, fps: float = 8) -> None:
    """Raise now, before any frames are made, what :func:`write_video` would raise for
    ``path`` and ``fps``: an unsupported suffix or fps (ValueError) or a missing library
    (ImportError naming the extra)."""
    suffix = _suffix(Path(path))
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    if suffix == ".gif":
        _require_pillow()
    else:
        _require_imageio()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8, scale: int = 1) -> Path:
    """Write (T, H, W, 3) uint8 RGB ``frames`` as a ``.gif`` or ``.mp4`` video.

    ``scale`` upscales every frame by an integer factor (nearest neighbour), for tiny
    videos. GIFs (Pillow) loop forever with a delay of 1000 / ``fps`` ms per frame; they
    hold at most 256 colours per frame. MP4s (imageio + imageio-ffmpeg) are H.264 yuv420p
    at high quality; an odd width or height is padded by repeating the last column or row,
    since yuv420p needs even sizes. Parent directories are created. Returns the path.
    """
    path = Path(path)
    suffix = _suffix(path)
    frames = _check_frames(frames)
    scale = _check_scale(scale)
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    frames = _upscale(frames, scale)
    if suffix == ".gif":
        Image = _require_pillow()
        path.parent.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path,
            save_all=True,
            append_images=images[1:],
            duration=1000.0 / fps,
            loop=0,
            comment=f"{_GIF_FPS_TAG}{fps!r}",
        )
        return path
    iio = _require_imageio()
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    with iio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=9,  # crf 5: visually lossless, still playable everywhere
        macro_block_size=1,  # sizes are even already; no resampling by imageio
        ffmpeg_log_level="error",
    ) as writer:
        for f in frames:
            writer.append_data(f)
    return path


def _read_gif(path: Path) -> np.ndarray:
    Image = _require_pillow()
    from PIL import ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB"), dtype=np.uint8).copy())
                durations.append(frame.info.get("duration", 0))
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not a GIF file Pillow can read") from e
    if isinstance(comment, bytes):
        comment = comment.decode("latin-1")
    if comment.startswith(_GIF_FPS_TAG):
        # unfold frames Pillow merged into one longer delay when writing
        period = 1000.0 / float(comment[len(_GIF_FPS_TAG) :])
        repeats = [max(1, round(d / period)) for d in durations]
        frames = [f for f, r in zip(frames, repeats, strict=True) for _ in range(r)]
    return np.stack(frames)


def _read_mp4(path: Path) -> np.ndarray:
    iio = _require_imageio()
    with iio.get_reader(path, format="FFMPEG", mode="I") as reader:
        frames = [np.asarray(f, dtype=np.uint8)[..., :3] for f in reader]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)


def read_video(path: str | Path) -> np.ndarray:
    """A ``.gif`` or ``.mp4`` video as (T, H, W, 3) uint8 RGB (every frame)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    return _read_gif(path) if suffix == ".gif" else _read_mp4(path)


def frame_strip(frames: np.ndarray, n: int = 8, scale: int = 1) -> np.ndarray:
    """``n`` evenly spaced frames (first and last included) side by side: (H, n * W, 3).

    Upscaled by the integer ``scale`` (nearest neighbour). Fewer than ``n`` frames in the
    video give one panel per frame.
    """
    frames = _check_frames(frames)
    scale = _check_scale(scale)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    t = frames.shape[0]
    idx = np.unique(np.round(np.linspace(0, t - 1, min(int(n), t))).astype(np.int64))
    return _upscale(np.concatenate(list(frames[idx]), axis=1), scale)


def resize_video(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames resized to ``size = (h, w)`` with OpenCV: area averaging
    when shrinking, bilinear otherwise."""
    cv2 = require_cv2()
    h, w = size
    shrink = h < video.shape[1] or w < video.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame, (w, h), interpolation=interp) for frame in video])


def labelled_rows(rows: list[tuple[str, np.ndarray]], label_width: int = 150) -> np.ndarray:
    """Stack (H_i, W_i, 3) uint8 images top to bottom, each with its label written in a
    ``label_width`` column on its left (rows narrower than the widest are padded black):
    the frame strips of several videos, named."""
    _require_pillow()
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("no rows to stack")
    width = max(np.asarray(img).shape[1] for _, img in rows)
    out = []
    for label, img in rows:
        img = np.asarray(img, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"row {label!r} must be an (H, W, 3) image, got {img.shape}")
        canvas = Image.new("RGB", (label_width + width, img.shape[0]), (0, 0, 0))
        canvas.paste(Image.fromarray(img), (label_width, 0))
        draw = ImageDraw.Draw(canvas)
        lines = label.split("\n")
        y = max(2, (img.shape[0] - 11 * len(lines)) // 2)
        for line in lines:
            draw.text((4, y), line, fill=(255, 255, 255))
            y += 11
        out.append(np.asarray(canvas))
    return np.concatenate(out, 0)
