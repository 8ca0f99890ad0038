"""TAP-Vid point-tracking metrics, query sampling and dataset loading.

The metrics follow the TAP-Vid benchmark (Doersch et al. 2022, ``compute_tapvid_metrics``
in deepmind/tapnet): every quantity is computed per video (sums over queries and frames),
and a batch of videos is summarised by the plain mean of the per-video values.

Coordinate conventions (as in TAP-Vid): query points are ``(t, y, x)``, tracks are
``(x, y)`` in pixels, occlusion flags are ``True`` where the point is occluded.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longseq.media import require_cv2, resize_video

QUERY_MODES = ("first", "strided")


def _eval_mask(query_frame: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """(B, N, T) bool: frames evaluated for each query."""
    frames = np.arange(num_frames)
    qf = query_frame[..., None]
    if query_mode == "first":
        return frames > qf  # strictly after the query frame
    return frames != qf  # "strided": every frame but the query frame


def _check_shapes(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
) -> None:
    if gt_occluded.ndim not in (2, 3):
        raise ValueError(f"gt_occluded must be (N, T) or (B, N, T), got shape {gt_occluded.shape}")
    lead = gt_occluded.shape[:-1]  # (N,) or (B, N)
    if query_points.shape != (*lead, 3):
        raise ValueError(
            f"query_points must have shape {(*lead, 3)} (t, y, x) to match gt_occluded "
            f"{gt_occluded.shape}, got {query_points.shape}"
        )
    if gt_tracks.shape != (*gt_occluded.shape, 2):
        raise ValueError(
            f"gt_tracks must have shape {(*gt_occluded.shape, 2)} (x, y), got {gt_tracks.shape}"
        )
    if pred_occluded.shape != gt_occluded.shape:
        raise ValueError(
            f"pred_occluded shape {pred_occluded.shape} != gt_occluded shape {gt_occluded.shape}"
        )
    if pred_tracks.shape != gt_tracks.shape:
        raise ValueError(
            f"pred_tracks shape {pred_tracks.shape} != gt_tracks shape {gt_tracks.shape}"
        )


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str = "first",
    thresholds: Sequence[float] = (1, 2, 4, 8, 16),
) -> dict[str, float]:
    """TAP-Vid metrics for one video ``(N, ...)`` or a batch of videos ``(B, N, ...)``.

    Args:
        query_points: (N, 3) or (B, N, 3) as (t, y, x); t is rounded to a frame index.
        gt_occluded, pred_occluded: (N, T) or (B, N, T) bool, True = occluded.
        gt_tracks, pred_tracks: (N, T, 2) or (B, N, T, 2) as (x, y) pixels.
        query_mode: "first" evaluates frames strictly after the query frame,
            "strided" all frames except the query frame.
        thresholds: pixel thresholds d; a prediction is within d when its distance is < d.

    Returns:
        ``occlusion_accuracy``, ``pts_within_{d}``, ``jaccard_{d}``, ``average_jaccard``,
        ``average_pts_within_thresh`` (delta_avg) and ``epe`` (mean end-point error over
        evaluated frames where the ground truth is visible). Each is computed per video and
        then averaged over videos; a video with nothing to evaluate gives NaN, as in TAP-Vid.
    """
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
    query_points = np.asarray(query_points, dtype=np.float64)
    gt_occluded = np.asarray(gt_occluded).astype(bool)
    pred_occluded = np.asarray(pred_occluded).astype(bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    _check_shapes(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks)
    thresholds = tuple(thresholds)
    if not thresholds:
        raise ValueError("thresholds must not be empty")

    if gt_occluded.ndim == 2:  # single video -> batch of one
        query_points, gt_occluded, pred_occluded = (
            query_points[None],
            gt_occluded[None],
            pred_occluded[None],
        )
        gt_tracks, pred_tracks = gt_tracks[None], pred_tracks[None]

    num_frames = gt_occluded.shape[-1]
    query_frame = np.round(query_points[..., 0]).astype(np.int64)
    if query_frame.size and (query_frame.min() < 0 or query_frame.max() >= num_frames):
        raise ValueError(
            f"query frame indices must lie in [0, {num_frames - 1}], "
            f"got range [{query_frame.min()}, {query_frame.max()}]"
        )
    evaluated = _eval_mask(query_frame, num_frames, query_mode)
    visible = ~gt_occluded
    pred_visible = ~pred_occluded
    axes = (1, 2)  # per-video sums over queries and frames

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den

    per_video: dict[str, np.ndarray] = {}
    per_video["occlusion_accuracy"] = ratio(
        np.sum((pred_occluded == gt_occluded) & evaluated, axis=axes),
        np.sum(evaluated, axis=axes),
    )

    sq_dist = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)
    n_visible = np.sum(visible & evaluated, axis=axes)
    within_all, jaccard_all = [], []
    for d in thresholds:
        within = sq_dist < d**2
        correct = within & visible
        frac_within = ratio(np.sum(correct & evaluated, axis=axes), n_visible)
        true_pos = np.sum(correct & pred_visible & evaluated, axis=axes)
        # false positives: predicted visible but gt occluded or too far away
        false_pos = np.sum(pred_visible & (~visible | ~within) & evaluated, axis=axes)
        # TP + FN equals the number of visible gt points
        jaccard = ratio(true_pos, n_visible + false_pos)
        per_video[f"pts_within_{d}"] = frac_within
        per_video[f"jaccard_{d}"] = jaccard
        within_all.append(frac_within)
        jaccard_all.append(jaccard)
    per_video["average_jaccard"] = np.mean(np.stack(jaccard_all, axis=1), axis=1)
    per_video["average_pts_within_thresh"] = np.mean(np.stack(within_all, axis=1), axis=1)

    dist = np.sqrt(sq_dist)
    per_video["epe"] = ratio(np.sum(np.where(visible & evaluated, dist, 0.0), axis=axes), n_visible)

    return {key: float(np.mean(value)) for key, value in per_video.items()}


def sample_queries_first(
    gt_occluded: np.ndarray, gt_tracks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """TAP-Vid "first" query sampling: query each track at its first visible frame.

    Args:
        gt_occluded: (N, T) bool, True = occluded.
        gt_tracks: (N, T, 2) as (x, y) pixels.

    Returns:
        ``query_points`` (K, 3) float as (t, y, x) for the K kept tracks, and ``keep_mask``
        (N,) bool, False for tracks that are never visible. Index the ground truth with
        ``keep_mask`` to align it with ``query_points``.
    """
    gt_occluded = np.asarray(gt_occluded).astype(bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    if gt_occluded.ndim != 2:
        raise ValueError(f"gt_occluded must be (N, T), got shape {gt_occluded.shape}")
    if gt_tracks.shape != (*gt_occluded.shape, 2):
        raise ValueError(
            f"gt_tracks must have shape {(*gt_occluded.shape, 2)} (x, y), got {gt_tracks.shape}"
        )
    visible = ~gt_occluded
    keep = visible.any(axis=1)
    first = np.argmax(visible, axis=1)[keep]  # index of the first True
    xy = gt_tracks[keep, first]
    query_points = np.stack([first.astype(np.float64), xy[:, 1], xy[:, 0]], axis=1)
    return query_points.reshape(-1, 3), keep


def _decode_frames(frames: Sequence[Any], where: str) -> np.ndarray:
    """Decode a list of encoded (e.g. JPEG) frames into (T, H, W, 3) uint8 RGB."""
    cv2 = require_cv2()
    out = []
    for i, buf in enumerate(frames):
        arr = np.frombuffer(bytes(buf), dtype=np.uint8)
        bgr = cv2.imdecode(arr, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{where}: key 'video' frame {i} could not be decoded as an image")
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not out:
        raise ValueError(f"{where}: key 'video' holds no frames")
    if len({f.shape for f in out}) != 1:
        raise ValueError(f"{where}: key 'video' frames have differing sizes")
    return np.stack(out)


def _convert_entry(
    entry: Any, name: str, where: str, resize: tuple[int, int] | None
) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a dict with video/points/occluded, got {type(entry)}")
    for key in ("video", "points", "occluded"):
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}")

    video = entry["video"]
    if isinstance(video, (list, tuple)) or (
        isinstance(video, np.ndarray) and video.dtype == object
    ):
        video = _decode_frames(list(video), where)
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{where}: key 'video' must be (T, H, W, 3), got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{where}: key 'video' must be uint8, got {video.dtype}")
    num_frames = video.shape[0]

    points = np.asarray(entry["points"], dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (num_frames, 2):
        raise ValueError(
            f"{where}: key 'points' must be (N, {num_frames}, 2) normalized (x, y), "
            f"got shape {points.shape}"
        )
    occluded = np.asarray(entry["occluded"]).astype(bool)
    if occluded.shape != points.shape[:2]:
        raise ValueError(
            f"{where}: key 'occluded' must be {points.shape[:2]} to match 'points', "
            f"got shape {occluded.shape}"
        )

    if resize is not None:
        video = resize_video(video, resize)
    height, width = video.shape[1:3]
    tracks = points * np.array([width, height], dtype=np.float64)
    return {"name": name, "video": video, "tracks": tracks, "occluded": occluded}


def load_tapvid(path: str | Path, resize: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Load TAP-Vid videos from a ``.pkl`` (DAVIS or Kinetics layout) or ``.npz`` file.

    Layouts: a pickled dict ``name -> {video, points, occluded}`` (DAVIS), a pickled list of
    such dicts whose ``video`` may be a list of JPEG bytes (Kinetics; named by ``video_id``
    when present, else ``{stem}_{index}``), or an ``.npz`` with keys ``video`` (T, H, W, 3)
    uint8, ``points`` (N, T, 2) normalized (x, y) in [0, 1] and ``occluded`` (N, T)
    (named by the file stem). Pickles are only safe to load from trusted sources.

    Args:
        path: the file.
        resize: optional (H, W); frames are resized with OpenCV (INTER_AREA when shrinking,
            INTER_LINEAR otherwise). TAP-Vid evaluates at (256, 256).

    Returns:
        A list of dicts with ``name``, ``video`` (T, H, W, 3) uint8 RGB, ``tracks``
        (N, T, 2) float (x, y) pixels of the returned video (normalized * [W, H]) and
        ``occluded`` (N, T) bool.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TAP-Vid file not found: {path}")
    if resize is not None:
        if len(resize) != 2 or min(int(resize[0]), int(resize[1])) <= 0:
            raise ValueError(f"resize must be a positive (H, W) pair, got {resize!r}")
        resize = (int(resize[0]), int(resize[1]))

    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            entry = {key: data[key] for key in data.files}
        return [_convert_entry(entry, path.stem, str(path), resize)]
    if suffix != ".pkl":
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected .pkl or .npz)")

    with path.open("rb") as f:
        data = pickle.load(f)
    if isinstance(data, dict):
        return [
            _convert_entry(entry, str(name), f"{path} [{name!r}]", resize)
            for name, entry in data.items()
        ]
    if isinstance(data, (list, tuple)):
        out = []
        for i, entry in enumerate(data):
            name = entry.get("video_id") if isinstance(entry, dict) else None
            name = str(name) if name is not None else f"{path.stem}_{i}"
            out.append(_convert_entry(entry, name, f"{path} [{i}]", resize))
        return out
    raise ValueError(f"{path}: expected a dict (DAVIS) or list (Kinetics), got {type(data)}")
