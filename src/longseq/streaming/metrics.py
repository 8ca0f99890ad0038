"""Video metrics of StreamingT2V: scene cuts, motion-aware warp error (MAWE), flow
smoothness at chunk seams, and caption alignment.

Videos are (T, H, W, 3) uint8 RGB arrays. Optical flow defaults to DIS
(:func:`longseq.flow.dis_flow`); any ``flow_fn(frame0, frame1) -> (H, W, 2)``
forward flow in pixels ``(dx, dy)`` can be passed instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from longseq.flow import FlowFn, bilinear_sample, dis_flow

if TYPE_CHECKING:
    from longseq.models.frame_encoder import FrameEncoder

SCENE_DETECT_MIN_SIZE = 64  # smaller frames are upscaled (nearest) before scene detection


def _check_video(video: np.ndarray, min_frames: int = 2) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be (T, H, W, 3) RGB, got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"video must be uint8, got {video.dtype}")
    if video.shape[1] < 1 or video.shape[2] < 1:
        raise ValueError(f"video frames must be non-empty, got shape {video.shape}")
    if video.shape[0] < min_frames:
        raise ValueError(f"video needs at least {min_frames} frames, got {video.shape[0]}")
    return video


def _check_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float64)
    if flow.shape != (*shape, 2):
        raise ValueError(f"flow_fn must return an (H, W, 2) = {(*shape, 2)} flow, got {flow.shape}")
    return flow


def scene_cuts(video: np.ndarray, threshold: float = 3.0, min_scene_len: int = 15) -> int:
    """Number of scene cuts (boundaries between scenes, not scenes) that PySceneDetect's
    ``AdaptiveDetector`` finds in ``video``.

    ``threshold`` is the detector's adaptive threshold (a frame's content change relative
    to the mean change of its neighbours) and ``min_scene_len`` the fewest frames between
    cuts. Frames smaller than 64 px are upscaled (nearest neighbour) to at least 64 px so
    that the detector's defaults (edge kernel, content thresholds) behave. Needs the
    ``scenedetect`` package.
    """
    video = _check_video(video)
    if isinstance(min_scene_len, bool) or not isinstance(min_scene_len, (int, np.integer)):
        raise ValueError(
            f"min_scene_len must be an integer number of frames, got {min_scene_len!r}"
        )
    if min_scene_len < 0:
        raise ValueError(f"min_scene_len must be >= 0, got {min_scene_len}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    try:
        from scenedetect import AdaptiveDetector, FrameTimecode
    except ImportError as e:
        raise ImportError(
            "scene_cuts needs PySceneDetect: pip install 'longseq[video]' (scenedetect)"
        ) from e
    factor = math.ceil(SCENE_DETECT_MIN_SIZE / min(video.shape[1:3]))
    if factor > 1:
        video = video.repeat(factor, axis=1).repeat(factor, axis=2)
    bgr = np.ascontiguousarray(video[..., ::-1])
    detector = AdaptiveDetector(
        adaptive_threshold=float(threshold), min_scene_len=int(min_scene_len)
    )
    fps = 30.0  # only sets the timecodes' clock; min_scene_len counts frames
    cuts = []
    for t, frame in enumerate(bgr):
        cuts += detector.process_frame(FrameTimecode(t, fps=fps), frame)
    cuts += detector.post_process(FrameTimecode(len(bgr) - 1, fps=fps))
    return len({c.frame_num for c in cuts})


def _warp_back(frame1: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``frame1`` sampled at x + flow(x): frame t+1 warped back onto frame t (float64)."""
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    points = np.stack([xx + flow[..., 0], yy + flow[..., 1]], axis=-1).reshape(-1, 2)
    return bilinear_sample(frame1, points).reshape(h, w, -1)


def warp_errors(video: np.ndarray, flow_fn: FlowFn = dis_flow) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive pair (t, t+1): the warp error and the mean flow magnitude.

    With f = ``flow_fn(frame_t, frame_t+1)``, frame t+1 is warped back onto frame t by
    bilinearly sampling it at x + f(x) (coordinates outside the frame clamp to the border);
    the warp error is the mean squared difference from frame t in [0, 255] units. Returns
    ``(errors, magnitudes)``, each (T-1,) float64, magnitudes in pixels per frame.
    """
    video = _check_video(video)
    n = video.shape[0] - 1
    errors, magnitudes = np.empty(n), np.empty(n)
    for t in range(n):
        f0, f1 = video[t], video[t + 1]
        flow = _check_flow(flow_fn(f0, f1), f0.shape[:2])
        warped = _warp_back(f1, flow)
        errors[t] = np.mean((warped - f0.astype(np.float64)) ** 2)
        magnitudes[t] = np.mean(np.linalg.norm(flow, axis=-1))
    return errors, magnitudes


def mawe(video: np.ndarray, c: float = 1.0, flow_fn: FlowFn = dis_flow) -> dict[str, float]:
    """Motion-aware warp error (MAWE) of StreamingT2V; lower is better.

    ``mawe = warp_error / (c * flow_magnitude)`` with both terms averaged over the
    consecutive frame pairs (see :func:`warp_errors`). The warp error punishes
    inconsistency between frames; dividing by the amount of motion also punishes
    stillness, so a frozen video does not score well: a mean flow magnitude below 1e-6 px
    gives ``inf``. Returns ``{"warp_error", "flow_magnitude", "mawe"}``.
    """
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    errors, magnitudes = warp_errors(video, flow_fn=flow_fn)
    w, m = float(errors.mean()), float(magnitudes.mean())
    score = math.inf if m < 1e-6 else w / (c * m)
    return {"warp_error": w, "flow_magnitude": m, "mawe": score}


def seam_flow_std(
    video: np.ndarray, seams: list[int], window: int = 2, flow_fn: FlowFn = dis_flow
) -> float:
    """Mean over chunk seams of the standard deviation of the flow magnitude around each.

    A seam ``s`` is the first frame of a new chunk (0 < s < T); its window holds the mean
    flow magnitudes of the pairs (t, t+1) for t in [s-1-window, s-1+window], clipped to
    the valid pairs 0 .. T-2. A jump in motion at the seam raises the std; smooth motion
    keeps it low. Seams outside (0, T) are skipped; the flow of each pair is computed once.
    """
    video = _check_video(video)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    T = video.shape[0]
    valid = [int(s) for s in seams if 0 < int(s) < T]
    if not valid:
        raise ValueError(
            f"no valid seam in {list(seams)} for a video of {T} frames (need 0 < s < T)"
        )
    magnitude: dict[int, float] = {}

    def pair_magnitude(t: int) -> float:
        if t not in magnitude:
            flow = _check_flow(flow_fn(video[t], video[t + 1]), video.shape[1:3])
            magnitude[t] = float(np.mean(np.linalg.norm(flow, axis=-1)))
        return magnitude[t]

    stds = []
    for s in valid:
        lo, hi = max(0, s - 1 - window), min(T - 2, s - 1 + window)
        stds.append(float(np.std([pair_magnitude(t) for t in range(lo, hi + 1)])))
    return float(np.mean(stds))


def text_alignment(
    video: np.ndarray,
    caption: str,
    frame_encoder: FrameEncoder,
    every: int = 4,
    batch_size: int = 64,
) -> float:
    """How well the frames match a caption, by a frame encoder's attribute heads, in [0, 1].

    The caption is parsed with :func:`longseq.data.videoworld.parse_caption`; for frames
    0, ``every``, 2 * ``every``, ... the encoder's softmax probability of the class the
    caption names is averaged over those frames and over the attributes that both the
    caption names and the encoder knows (attribute and class name). Higher is better.
    Frames go through the encoder ``batch_size`` at a time, without gradients.
    """
    import torch

    from longseq.data.videoworld import parse_caption

    video = _check_video(video, min_frames=1)
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    named = parse_caption(caption)
    known = frame_encoder.config.attributes
    targets = {k: known[k].index(v) for k, v in named.items() if k in known and v in known[k]}
    if not targets:
        raise ValueError(
            f"caption {caption!r} names none of the encoder's attributes "
            f"({', '.join(f'{k}: {v}' for k, v in known.items())}); it names {named}"
        )
    param = next(frame_encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    frames = video[::every]
    sums = dict.fromkeys(targets, 0.0)
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            images = torch.as_tensor(
                frames[start : start + batch_size], dtype=torch.float32, device=device
            )
            logits = frame_encoder(images.permute(0, 3, 1, 2) / 127.5 - 1.0)
            for k, i in targets.items():
                sums[k] += logits[k].float().softmax(-1)[:, i].sum().item()
    return float(np.mean([total / len(frames) for total in sums.values()]))
