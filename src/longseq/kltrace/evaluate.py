"""Held-out benchmark on the synthetic video world: KL-tracing, the RGB-difference
probe on the same model, and OpenCV Farneback / DIS flow, scored with the TAP-Vid
"first" protocol against exact ground truth."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from longseq.data.flowworld import sample_world
from longseq.flow import FLOW_METHODS, track_with_flow
from longseq.kltrace.metrics import tapvid_metrics
from longseq.kltrace.tracing import (
    PROBES,
    FramePairModel,
    TraceConfig,
    calibrate_threshold,
    check_model,
    jobs_per_point,
    trace_points,
    track_video,
)
from longseq.utils import progress_bar

METHODS = ("kl", "rgb", "farneback", "dis")


@dataclass
class SyntheticSet:
    """Clips of the world with TAP-Vid style queries (all at frame 0) and ground truth."""

    videos: np.ndarray  # (B, T, H, W, 3) uint8
    query_points: np.ndarray  # (B, N, 3) as (t, y, x)
    tracks: np.ndarray  # (B, N, T, 2)
    occluded: np.ndarray  # (B, N, T)
    motions: list[str] | None = None  # each clip's motion type, where the set has them


@torch.no_grad()
def code_accuracy(
    model: FramePairModel, pairs: np.ndarray | torch.Tensor, reveal: float = 0.1, seed: int = 0
) -> dict[str, float]:
    """How well a frame-pair model predicts frame 1: mean negative log-likelihood and
    top-1 accuracy of the codes of hidden frame-1 patches, given frame 0 and a random
    ``reveal`` fraction of frame 1 (the KL-tracing condition), beside the accuracy of
    copying frame 0's code in place. ``pairs`` (N, 2, S, S, 3) uint8 at the model's input
    size."""
    check_model(model)
    pairs = torch.as_tensor(np.asarray(pairs))
    size, p = model.image_size, model.patch
    if pairs.ndim != 5 or pairs.shape[1] != 2 or tuple(pairs.shape[2:]) != (size, size, 3):
        raise ValueError(f"pairs must be (N, 2, {size}, {size}, 3), got {tuple(pairs.shape)}")
    if not 0 <= reveal < 1:
        raise ValueError(f"reveal must be in [0, 1), got {reveal}")
    dev = model.codebook.device
    n_slots = (size // p) ** 2
    r = max(1, round(reveal * n_slots)) if reveal > 0 else 0
    g = torch.Generator().manual_seed(seed)
    nll = hit = copy = count = 0.0
    for chunk in pairs.split(64):
        b = chunk.shape[0]
        f0, f1 = chunk[:, 0].float().to(dev), chunk[:, 1].float().to(dev)
        order = torch.argsort(torch.rand(b, n_slots, generator=g), 1)[:, :r]
        revealed = torch.zeros(b, n_slots, dtype=torch.bool).scatter_(1, order, True).to(dev)
        logp = model.frame1_logprobs(f0, f1, revealed).float()
        target, codes0 = _codes(model, f1), _codes(model, f0)
        hidden = ~revealed
        nll += -logp.gather(-1, target[..., None])[..., 0][hidden].sum().item()
        hit += (logp.argmax(-1) == target)[hidden].sum().item()
        copy += (codes0 == target)[hidden].sum().item()
        count += hidden.sum().item()
    return {
        "val_nll": round(nll / count, 4),
        "val_top1": round(hit / count, 4),
        "copy_top1": round(copy / count, 4),
        "top1_over_copy": round(hit / max(copy, 1), 3),
    }


def _codes(model: FramePairModel, frames: torch.Tensor) -> torch.Tensor:
    """Nearest codes (B, n_slots) of frames (B, H, W, 3) in [0, 255] under the model's
    codebook (slots row by row, pixels in (y, x, rgb) order)."""
    b, h, w, _ = frames.shape
    p = model.patch
    x = frames.float().div(255.0).reshape(b, h // p, p, w // p, p, 3)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * 3)
    cb = model.codebook.float()
    return torch.cdist(x, cb[None].expand(b, -1, -1)).argmin(-1)


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


def _model_tracks(model: FramePairModel, data: SyntheticSet, cfg: TraceConfig, label: str):
    per_point = jobs_per_point(data.videos.shape[2:4], cfg, model.image_size)
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


def _peaks(model: FramePairModel, data: SyntheticSet, cfg: TraceConfig) -> dict[str, np.ndarray]:
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


def calibrate(
    model: FramePairModel, data: SyntheticSet, cfg: TraceConfig | None = None
) -> TraceConfig:
    """``cfg`` with occlusion thresholds of both probes fitted on a labelled set."""
    cfg = cfg or TraceConfig()
    pk = _peaks(model, data, cfg)
    th = {p: calibrate_threshold(pk[p], pk["occluded"]) for p in PROBES}
    return replace(cfg, thresholds=th)


def evaluate_methods(
    model: FramePairModel,
    data: SyntheticSet,
    cfg: TraceConfig,
    methods: tuple[str, ...] = METHODS,
    fb_threshold: float = 1.5,
    tracks_out: dict | None = None,
) -> dict[str, dict[str, float]]:
    """TAP-Vid "first" metrics of each method on ``data``, plus seconds per query point
    per frame pair (``sec_per_point``). ``tracks_out``, a dict, receives each method's
    (tracks (B, N, T, 2), occluded (B, N, T))."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)} (known: {METHODS})")
    n_pairs = data.query_points.shape[0] * data.query_points.shape[1] * (data.videos.shape[1] - 1)
    preds, secs = {}, {}
    if set(methods) & set(PROBES):
        check_model(model)
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
    if tracks_out is not None:
        tracks_out.update({name: preds[name] for name in methods})
    results = {}
    for name in methods:
        tracks, occ = preds[name]
        m = tapvid_metrics(data.query_points, data.occluded, data.tracks, occ, tracks, "first")
        m["sec_per_point"] = secs[name] / n_pairs
        results[name] = m
    return results
