"""Held-out benchmark on the synthetic video world: KL-tracing, the RGB-difference
probe on the same model, and OpenCV Farneback / DIS flow, scored with the TAP-Vid
"first" protocol against exact ground truth."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from longseq.data.flowworld import sample_world
from longseq.kltrace.classical import FLOW_METHODS, track_with_flow
from longseq.kltrace.metrics import tapvid_metrics
from longseq.kltrace.tracing import (
    PROBES,
    TraceConfig,
    calibrate_threshold,
    jobs_per_point,
    trace_points,
    track_video,
)
from longseq.models.lras import LRAS
from longseq.utils import progress_bar

METHODS = ("kl", "rgb", "farneback", "dis")


@dataclass
class SyntheticSet:
    """Clips of the world with TAP-Vid style queries (all at frame 0) and ground truth."""

    videos: np.ndarray  # (B, T, H, W, 3) uint8
    query_points: np.ndarray  # (B, N, 3) as (t, y, x)
    tracks: np.ndarray  # (B, N, T, 2)
    occluded: np.ndarray  # (B, N, T)


def synthetic_set(
    n_clips: int, split: str, size: int = 64, n_frames: int = 3, n_points: int = 16, seed: int = 0
) -> SyntheticSet:
    """``n_clips`` clips of ``split`` (disjoint seeds and textures per split)."""
    vids, qps, trs, occs = [], [], [], []
    rng = np.random.default_rng([seed, 99])
    for c in range(n_clips):
        world = sample_world(seed * 100_000 + c, size, n_frames, split=split)
        pts = world.sample_points(n_points, rng)
        tracks, occ = world.track(pts)
        vids.append(world.render())
        qps.append(np.concatenate([np.zeros((n_points, 1)), pts[:, ::-1]], 1))
        trs.append(tracks)
        occs.append(occ)
    return SyntheticSet(np.stack(vids), np.stack(qps), np.stack(trs), np.stack(occs))


def _model_tracks(model: LRAS, data: SyntheticSet, cfg: TraceConfig, label: str):
    per_point = jobs_per_point(data.videos.shape[2:4], cfg, model.config.image_size)
    n_jobs = data.videos.shape[0] * data.query_points.shape[1] * (data.videos.shape[1] - 1)
    n_jobs *= per_point
    out = {p: ([], []) for p in PROBES}
    with progress_bar(label, n_jobs) as advance:
        for b in range(len(data.videos)):
            res = track_video(model, data.videos[b], data.query_points[b], cfg, progress=advance)
            for p in PROBES:
                out[p][0].append(res[p][0])
                out[p][1].append(res[p][1])
    return {p: (np.stack(t), np.stack(o)) for p, (t, o) in out.items()}


def _peaks(model: LRAS, data: SyntheticSet, cfg: TraceConfig) -> dict[str, np.ndarray]:
    """Peak responses at every evaluated (query, frame) of a labelled set, per probe."""
    peaks = {p: [] for p in PROBES}
    labels = []
    for b in range(len(data.videos)):
        pts = data.query_points[b][:, [2, 1]]
        for t in range(1, data.videos.shape[1]):
            res = trace_points(model, data.videos[b, 0], data.videos[b, t], pts, cfg)
            for p in PROBES:
                peaks[p].append(res.peaks[p])
            labels.append(data.occluded[b, :, t])
    return {p: np.concatenate(v) for p, v in peaks.items()} | {"occluded": np.concatenate(labels)}


def calibrate(model: LRAS, data: SyntheticSet, cfg: TraceConfig | None = None) -> TraceConfig:
    """``cfg`` with occlusion thresholds of both probes fitted on a labelled set."""
    cfg = cfg or TraceConfig()
    pk = _peaks(model, data, cfg)
    th = {p: calibrate_threshold(pk[p], pk["occluded"]) for p in PROBES}
    return replace(cfg, thresholds=th)


def evaluate_methods(
    model: LRAS,
    data: SyntheticSet,
    cfg: TraceConfig,
    methods: tuple[str, ...] = METHODS,
    fb_threshold: float = 1.5,
) -> dict[str, dict[str, float]]:
    """TAP-Vid "first" metrics of each method on ``data``, plus seconds per query point
    per frame pair (``sec_per_point``)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)} (known: {METHODS})")
    n_pairs = data.query_points.shape[0] * data.query_points.shape[1] * (data.videos.shape[1] - 1)
    preds, secs = {}, {}
    if set(methods) & set(PROBES):
        t0 = time.perf_counter()
        both = _model_tracks(model, data, cfg, "KL-tracing")
        elapsed = time.perf_counter() - t0  # one pass serves both probes
        for p in PROBES:
            preds[p], secs[p] = both[p], elapsed
    for name in (m for m in methods if m in FLOW_METHODS):
        t0 = time.perf_counter()
        tracks = np.repeat(data.query_points[..., None, [2, 1]], data.videos.shape[1], 2)
        occ = np.zeros(data.occluded.shape, dtype=bool)
        for b in range(len(data.videos)):
            pts = data.query_points[b][:, [2, 1]]
            for t in range(1, data.videos.shape[1]):
                xy, o = track_with_flow(
                    FLOW_METHODS[name], data.videos[b, 0], data.videos[b, t], pts, fb_threshold
                )
                tracks[b, :, t], occ[b, :, t] = xy, o
        preds[name], secs[name] = (tracks.astype(np.float32), occ), time.perf_counter() - t0
    results = {}
    for name in methods:
        tracks, occ = preds[name]
        m = tapvid_metrics(data.query_points, data.occluded, data.tracks, occ, tracks, "first")
        m["sec_per_point"] = secs[name] / n_pairs
        results[name] = m
    return results
