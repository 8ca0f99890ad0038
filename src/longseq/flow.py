"""Classical dense optical flow (OpenCV DIS and Farneback) and flow-based point tracking,
shared by KL-tracing (its baselines) and StreamingT2V (its video metrics).

Flow fields are (H, W, 2) float32 ``(dx, dy)``: the content at array index (row i, col j)
of ``frame0`` is found at (i + dy, j + dx) in ``frame1``. OpenCV is imported lazily, so
this module imports without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from longseq.media import require_cv2

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Farneback parameters chosen for small (32-128 px) frames: three pyramid levels at
# scale 0.5 keep the coarsest level >= 8 px for 32 px inputs; an 11 px averaging window is
# large enough to be robust to noise yet small relative to the frame; a 5-pixel
# neighbourhood with sigma 1.1 is OpenCV's recommended polynomial expansion setting.
FARNEBACK_PARAMS: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 11,
    "iterations": 5,
    "poly_n": 5,
    "poly_sigma": 1.1,
    "flags": 0,
}

DIS_PRESETS = ("ultrafast", "fast", "medium")


def _to_gray(cv2: Any, frame: np.ndarray, name: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"{name} must be (H, W, 3) RGB or (H, W) gray, got shape {frame.shape}")


def _gray_pair(cv2: Any, frame0: np.ndarray, frame1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g0, g1 = _to_gray(cv2, frame0, "frame0"), _to_gray(cv2, frame1, "frame1")
    if g0.shape != g1.shape:
        raise ValueError(f"frame sizes differ: {g0.shape} vs {g1.shape}")
    return g0, g1


def farneback_flow(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """Forward Farneback flow (H, W, 2) float32 (dx, dy) from frame0 to frame1.

    Frames are (H, W, 3) uint8 RGB (or (H, W) gray); parameters are ``FARNEBACK_PARAMS``.
    """
    cv2 = require_cv2()
    g0, g1 = _gray_pair(cv2, frame0, frame1)
    flow = cv2.calcOpticalFlowFarneback(g0, g1, None, **FARNEBACK_PARAMS)
    return flow.astype(np.float32, copy=False)


def dis_flow(frame0: np.ndarray, frame1: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Forward DIS flow (Kroeger et al. 2016) (H, W, 2) float32 (dx, dy), frame0 -> frame1.

    ``preset`` is one of "ultrafast", "fast", "medium" (OpenCV's DIS presets).
    """
    if preset not in DIS_PRESETS:
        raise ValueError(f"preset must be one of {DIS_PRESETS}, got {preset!r}")
    cv2 = require_cv2()
    g0, g1 = _gray_pair(cv2, frame0, frame1)
    code = {
        "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }[preset]
    flow = cv2.DISOpticalFlow_create(code).calc(g0, g1, None)
    return flow.astype(np.float32, copy=False)


def _opponent_channels(frame: np.ndarray) -> list[np.ndarray]:
    """Luma and two opponent-colour channels (red-green, yellow-blue) of an RGB uint8
    frame, each as (H, W) uint8 on a fixed scale, so that both frames of a pair map alike."""
    f = frame.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    channels = (
        0.299 * r + 0.587 * g + 0.114 * b,
        (r - g) / 2 + 128,
        (r + g - 2 * b) / 4 + 128,
    )
    return [np.clip(np.round(c), 0, 255).astype(np.uint8) for c in channels]


def photometric_error(frame0: np.ndarray, frame1: np.ndarray, flow: np.ndarray) -> float:
    """Mean absolute RGB difference (levels, 0-255) between ``frame0`` and ``frame1``
    sampled bilinearly at x + flow(x) (coordinates clamped to the border)."""
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    points = np.stack([xx + flow[..., 0], yy + flow[..., 1]], axis=-1).reshape(-1, 2)
    warped = bilinear_sample(frame1, points).reshape(np.shape(frame0))
    return float(np.mean(np.abs(warped - np.asarray(frame0, np.float64))))


def color_dis_flow(frame0: np.ndarray, frame1: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Forward DIS flow (H, W, 2) float32 (dx, dy) that also sees motion between colours of
    equal luma.

    OpenCV's DIS takes one 8-bit channel. This runs it on luma and on two opponent-colour
    channels, (R - G) / 2 + 128 and (R + G - 2B) / 4 + 128, and keeps, for the pair, the
    flow with the lowest :func:`photometric_error` on all three RGB channels (luma's on
    ties). A red object on a gray background of the same luma is invisible to luma flow
    but not to the red-green channel. Frames are (H, W, 3) uint8 RGB; (H, W) gray frames
    get :func:`dis_flow`.
    """
    if preset not in DIS_PRESETS:
        raise ValueError(f"preset must be one of {DIS_PRESETS}, got {preset!r}")
    cv2 = require_cv2()
    _gray_pair(cv2, frame0, frame1)  # checks dtype, shape and sizes
    if np.ndim(frame0) == 2:
        return dis_flow(frame0, frame1, preset)
    best, best_error = None, np.inf
    for c0, c1 in zip(_opponent_channels(frame0), _opponent_channels(frame1), strict=True):
        if c0.min() == c0.max() and c1.min() == c1.max():
            continue  # a flat channel sees no motion
        flow = dis_flow(c0, c1, preset)
        error = photometric_error(frame0, frame1, flow)
        if error < best_error:
            best, best_error = flow, error
    if best is None:
        return np.zeros((*np.shape(frame0)[:2], 2), np.float32)
    return best


def bilinear_sample(field: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``field`` (H, W, C) at (N, 2) array-index coordinates (x=col, y=row).

    Integer coordinates hit ``field[y, x]`` exactly; coordinates outside the array are
    clamped to the border. Returns (N, C) float64 ((N,) for a 2-D field).
    """
    field = np.asarray(field)
    squeeze = field.ndim == 2
    if squeeze:
        field = field[..., None]
    if field.ndim != 3:
        raise ValueError(f"field must be (H, W, C) or (H, W), got shape {field.shape}")
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points_xy must be (N, 2), got shape {pts.shape}")
    h, w = field.shape[:2]
    x = np.clip(pts[:, 0], 0.0, w - 1)
    y = np.clip(pts[:, 1], 0.0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    f = field.astype(np.float64, copy=False)
    top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
    bottom = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
    out = top * (1 - fy) + bottom * fy
    return out[:, 0] if squeeze else out


def track_with_flow(
    flow_fn: FlowFn,
    frame0: np.ndarray,
    frame1: np.ndarray,
    points_xy: np.ndarray,
    fb_threshold: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Track points from frame0 to frame1 with a dense flow method and a forward-backward check.

    ``points_xy`` (N, 2) are pixel coordinates in which pixel (row i, col j) has its centre
    at (j + 0.5, i + 0.5), so the frame spans [0, W] x [0, H]. Each point moves by the
    forward flow sampled at it; it is flagged occluded when the backward flow at the target
    does not bring it back within ``fb_threshold`` px, or when the target leaves the frame.

    Returns:
        ``pred_xy`` (N, 2) float64 in the same convention, and ``occluded`` (N,) bool.
    """
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points_xy must be (N, 2), got shape {pts.shape}")
    forward = flow_fn(frame0, frame1)
    backward = flow_fn(frame1, frame0)
    h, w = np.asarray(frame0).shape[:2]
    for name, flow in (("forward", forward), ("backward", backward)):
        if flow.shape != (h, w, 2):
            raise ValueError(f"{name} flow must have shape {(h, w, 2)}, got {flow.shape}")

    target = pts + bilinear_sample(forward, pts - 0.5)
    round_trip = target + bilinear_sample(backward, target - 0.5)
    fb_error = np.linalg.norm(round_trip - pts, axis=1)
    outside = (target[:, 0] < 0) | (target[:, 0] > w) | (target[:, 1] < 0) | (target[:, 1] > h)
    occluded = (fb_error > fb_threshold) | outside
    return target, occluded


FLOW_METHODS: dict[str, FlowFn] = {"farneback": farneback_flow, "dis": dis_flow}
