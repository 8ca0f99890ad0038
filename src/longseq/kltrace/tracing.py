"""KL-tracing: read optical flow out of a generative frame-pair model.

To find where a point of frame 0 goes in frame 1, put a small bright Gaussian
bump on frame 0 at that point and compare the model's predictions of frame-1
patches with and without it: the patch whose predicted distribution moves most
(KL(clean || perturbed)) is where the model thinks that content went. The KL map
is averaged over several random sets of revealed frame-1 patches ("reveal
masks") and over several zoom windows centred on the point; its peak, refined
to sub-patch precision, is the flow target, and a peak below a threshold means
the point is occluded in frame 1.

The same perturbed and clean forward passes also give the counterfactual
RGB-difference probe (CWM-style): the change of the *expected* frame-1 pixels,
which :func:`trace_points` returns beside KL-tracing at no extra cost.

Coarse to fine (``TraceConfig.passes``): one trace shrinks the motion towards "nothing
moved", so each point can be traced again with its frame-1 windows moved by the
whole-pixel part of its estimate; the model then sees only the residual motion, which
is added back. Limits on the residual, the motion and the KL map's contrast drop
implausible passes (the point keeps its previous estimate).

Cost: every (point, zoom, mask) takes one perturbed sequence of ``n_slots + R + Q``
tokens plus a clean one, which points sharing a zoom window (e.g. the whole frame)
share; all run batched, ``batch_size`` jobs per forward pass. A refinement pass costs
the same again for each point whose shift changed (per probe where the two differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from longseq.data.flowworld import crop_resize

PROBES = ("kl", "rgb")
READOUTS = ("centroid", "softargmax", "fit")
OCCLUSION_RULES = ("peak", "contrast", "none")


@runtime_checkable
class FramePairModel(Protocol):
    """What KL-tracing needs of a generative video model: the predicted distribution of
    every patch of frame 1 given frame 0, some revealed patches of frame 1, and nothing
    else. Any model with these members can be traced (``LRAS`` and ``MatchMixture`` are
    two; a user's model plugs in the same way).

    * ``image_size``: the square input side in pixels (zoom windows are resized to it);
    * ``patch``: the side of a patch slot; slots tile the input row by row;
    * ``codebook``: (K, patch * patch * 3) pixels in [0, 1] of each code, in (y, x, rgb)
      order (the RGB-difference probe reads the expected pixels through it);
    * ``frame1_logprobs(frame0, frame1, revealed)``: frames (B, H, W, 3) float in
      [0, 255], ``revealed`` (B, n_slots) bool with the same count in every row;
      returns log-probabilities (B, n_slots, K) of each frame-1 patch's code given
      frame 0 and the revealed frame-1 patches (rows of revealed slots are ignored).

    Optional, for ``TraceConfig.hold_motion``: a ``motion(frame0, frame1, revealed)``
    method returning what the model infers about the motion (any tuple of tensors with
    one row per input row), which ``frame1_logprobs(..., motion=...)`` then uses instead
    of inferring it from its own ``frame0`` (``MatchMixture`` has both).
    """

    image_size: int
    patch: int
    codebook: torch.Tensor

    def frame1_logprobs(
        self, frame0: torch.Tensor, frame1: torch.Tensor, revealed: torch.Tensor
    ) -> torch.Tensor: ...


def _check_members(model: object) -> None:
    """The protocol's members are there and consistent (no forward pass)."""
    missing = [
        name
        for name in ("image_size", "patch", "codebook", "frame1_logprobs")
        if not hasattr(model, name)
    ]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a frame-pair model for KL-tracing: it lacks "
            f"{', '.join(missing)} (see longseq.kltrace.FramePairModel)"
        )
    size, patch = model.image_size, model.patch
    for name, v in (("image_size", size), ("patch", patch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TypeError(f"{name} must be a positive int, got {v!r}")
    if size % patch:
        raise TypeError(f"image_size {size} is not a multiple of patch {patch}")
    cb = model.codebook
    if not isinstance(cb, torch.Tensor) or not cb.is_floating_point():
        raise TypeError(f"codebook must be a float torch.Tensor, got {_describe(cb)}")
    if cb.ndim != 2 or cb.shape[1] != patch * patch * 3:
        raise TypeError(
            f"codebook must be (K, patch*patch*3) = (K, {patch * patch * 3}), got {tuple(cb.shape)}"
        )


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _check_logprobs(out: object, batch: int, n_slots: int, k: int) -> torch.Tensor:
    """``out`` if it is float log-probabilities (batch, n_slots, k); else a one-line
    ``TypeError`` naming what is wrong (probabilities, logits, transposed or short)."""
    want = (batch, n_slots, k)
    where = "frame1_logprobs"
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where} must return a torch.Tensor {want}, got {_describe(out)}")
    if not out.is_floating_point():
        raise TypeError(f"{where} must return float log-probabilities, got {out.dtype}")
    shape = tuple(out.shape)
    if shape != want:
        if shape == (batch, k, n_slots) and k != n_slots:
            hint = "transposed: (B, K, n_slots) instead of (B, n_slots, K)"
        elif len(shape) == 3 and shape[0] == batch and shape[1] < n_slots and shape[2] == k:
            hint = f"short: {shape[1]} of the {n_slots} slots (return every slot, revealed too)"
        elif len(shape) == 3 and shape[:2] == (batch, n_slots):
            hint = f"{shape[2]} codes per slot but the codebook has {k}"
        else:
            hint = "wrong shape"
        raise TypeError(
            f"{where} returned shape {shape}, expected (B, n_slots, K) = {want}: {hint}"
        )
    x = out.detach().float()
    if torch.isnan(x).any() or (x == float("inf")).any():
        raise TypeError(f"{where} returned NaN or +inf (log-probabilities are finite or -inf)")
    lse = x.logsumexp(-1)
    err = (lse.abs().max()).item()
    if err > 1e-3:
        if x.shape[1] == x.shape[2] and (x.logsumexp(1).abs().max() < 1e-3):
            raise TypeError(
                f"{where} returned its output transposed: (B, K, n_slots) instead of "
                "(B, n_slots, K) (it is normalised over dim 1, not over the codes)"
            )
        if x.min() >= 0 and (x.sum(-1) - 1).abs().max() < 1e-3:
            what = "probabilities, not log-probabilities (return their .log())"
        else:
            what = "unnormalised logits (return .log_softmax(-1))"
        raise TypeError(
            f"{where} returned {what}: logsumexp over the codes is {lse.flatten()[0].item():.3g}, "
            "not 0"
        )
    return out


def check_model(model: object) -> FramePairModel:
    """``model`` if it implements :class:`FramePairModel`, else a one-line ``TypeError``
    naming what is wrong: a missing member, a codebook of the wrong shape, or
    ``frame1_logprobs`` failing on, or answering wrongly to, a two-row probe (shape
    ``(B, n_slots, K)``, float dtype, log-probabilities normalised over the codes:
    logsumexp ≈ 0; probabilities, unnormalised logits, transposed or short outputs are
    each named)."""
    _check_members(model)
    size, patch, k = model.image_size, model.patch, model.codebook.shape[0]
    n_slots = (size // patch) ** 2
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 2, size, size, 3, generator=g).mul(255).to(model.codebook.device)
    revealed = torch.zeros(2, n_slots, dtype=torch.bool, device=model.codebook.device)
    revealed[:, : max(1, n_slots // 10)] = True
    try:
        with torch.no_grad():
            out = model.frame1_logprobs(frames[:, 0], frames[:, 1], revealed)
    except Exception as e:  # a user's model: any failure is reported in one line
        raise TypeError(
            f"{type(model).__name__}.frame1_logprobs failed on frames (2, {size}, {size}, 3) "
            f"and revealed (2, {n_slots}): {_one_line(e)}"
        ) from e
    _check_logprobs(out, 2, n_slots, k)
    return model  # type: ignore[return-value]


def load_user_model(spec: str, device: str | torch.device = "cpu") -> FramePairModel:
    """A user's frame-pair model from ``"module:Name"`` or ``"path/to/file.py:Name"``:
    ``Name`` is a class or function called without arguments (or an instance), its result
    moved to ``device`` if it is a ``torch.nn.Module`` and checked by :func:`check_model`.
    Errors are one-line ``ValueError`` (cannot be found or built) or ``TypeError`` (not a
    frame-pair model)."""
    import importlib
    import importlib.util
    import os
    import sys

    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise ValueError(
            f"a model given as code must look like module:Name or file.py:Name, got {spec!r}"
        )
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"model file {source} does not exist")
        mod_name = f"_longseq_user_{path.stem}"
        spec_ = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        try:
            spec_.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise ValueError(f"cannot run {source}: {_one_line(e)}") from e
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # modules of the working folder, as `python -m`
        try:
            module = importlib.import_module(source)
        except Exception as e:
            raise ValueError(f"cannot import {source!r}: {_one_line(e)}") from e
    if not hasattr(module, name):
        raise ValueError(f"{source} has no {name!r}")
    obj = getattr(module, name)
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "frame1_logprobs")):
        try:
            obj = obj()
        except Exception as e:
            raise ValueError(f"{name}() failed: {_one_line(e)}") from e
    if isinstance(obj, torch.nn.Module):
        obj = obj.to(device).eval()
    return check_model(obj)


@dataclass
class TraceConfig:
    """Settings of KL-tracing. Lengths are pixels of the model's input (after zoom)."""

    sigma: float = 2.0  # width of the Gaussian bump
    amplitude: float = 255.0  # added to every channel, then clipped to [0, 255]
    n_masks: int = 5  # random reveal masks averaged over
    reveal: float = 0.1  # fraction of frame-1 patches revealed per mask
    scales: tuple[float, ...] = (1.0, 0.75, 0.5)  # zoom windows, fraction of the frame
    thresholds: dict[str, float] = field(default_factory=lambda: {"kl": 0.05, "rgb": 1.0})
    batch_size: int = 64  # (point, zoom, mask) jobs per forward pass
    # reveal mask k's zoom window is moved by a quasi-random offset of up to jitter / 2
    # patches in x and y, so the patch grid meets the point at different sub-patch
    # offsets and the averaged KL map is sampled finer than one patch (0: centred)
    jitter: float = 0.0
    # the peak's sub-patch position: "centroid" of the map above half the peak,
    # "softargmax" (weights exp((m - peak) / (softness * peak)) near the peak), or "fit":
    # the position within max_motion of the point whose predicted slot responses best
    # match the measured ones (a matched filter on the raw responses of every mask, see
    # _fit_peak; fit_width scales the predicted bump's width)
    readout: str = "centroid"
    softness: float = 0.2
    fit_width: float = 1.5
    # how far (px) the fit may move from the averaged map's soft-argmax peak; inf: it
    # searches everywhere within max_motion of the point
    fit_reach: float = float("inf")
    # a point is occluded when its "peak" is below thresholds[probe] (absolute: tied to
    # the model and the data it was calibrated on), or when its "contrast" (the peak
    # over the mean of its own map) is below contrast_thresholds[probe]; "none": every
    # point is reported visible (for a model whose maps carry no occlusion signal)
    occlusion: str = "peak"
    contrast_thresholds: dict[str, float] = field(default_factory=lambda: {"kl": 0.0, "rgb": 0.0})
    # coarse-to-fine refinement: passes after the first re-trace each point with its
    # frame-1 windows moved by a whole-pixel shift, round(shift + refine_gain * residual)
    # (the residual: the motion the last pass saw), and add the new residual to the shift.
    # A pass's estimate is kept only where its map's contrast reaches refine_contrast, its
    # residual is at most refine_max_residual px and its motion at most max_motion px;
    # otherwise the point keeps the previous estimate and stops. A first-pass estimate
    # beyond max_motion px falls back to zero motion.
    passes: int = 1
    refine_gain: float = 1.0
    refine_contrast: dict[str, float] = field(default_factory=lambda: {"kl": 0.0, "rgb": 0.0})
    refine_max_residual: float = float("inf")
    max_motion: float = float("inf")
    # hold the model's motion at what it infers from the clean frame 0: a perturbed frame
    # 0 is only carried along by that motion (needs the model's optional ``motion``
    # member, see FramePairModel). Without it, the bump can also change the motion the
    # model infers, e.g. flip an ambiguous match in plain texture, which moves its
    # response to where that match's patches are copied.
    hold_motion: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if not 0 < self.amplitude <= 255:
            raise ValueError(f"amplitude must be in (0, 255], got {self.amplitude}")
        if self.n_masks < 1:
            raise ValueError(f"n_masks must be >= 1, got {self.n_masks}")
        if not 0 <= self.reveal < 1:
            raise ValueError(f"reveal must be in [0, 1), got {self.reveal}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.softness <= 0:
            raise ValueError(f"softness must be > 0, got {self.softness}")
        if not self.fit_width > 0:
            raise ValueError(f"fit_width must be > 0, got {self.fit_width}")
        if not self.fit_reach > 0:
            raise ValueError(f"fit_reach must be > 0 px, got {self.fit_reach}")
        if self.occlusion not in OCCLUSION_RULES:
            raise ValueError(f"occlusion must be one of {OCCLUSION_RULES}, got {self.occlusion!r}")
        if not isinstance(self.hold_motion, bool):
            raise ValueError(f"hold_motion must be True or False, got {self.hold_motion!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1] (patches), got {self.jitter}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be fractions in (0, 1], got {self.scales}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise ValueError(f"passes must be an int >= 1, got {self.passes!r}")
        if not 0 < self.refine_gain <= 4:
            raise ValueError(f"refine_gain must be in (0, 4], got {self.refine_gain}")
        for name in ("refine_max_residual", "max_motion"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 px, got {getattr(self, name)}")
        rc = self.refine_contrast
        if not isinstance(rc, dict) or set(rc) != set(PROBES):
            raise ValueError(f"refine_contrast must map each of {PROBES} to a number, got {rc!r}")
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in rc.values()):
            raise ValueError(f"refine_contrast values must be numbers >= 0, got {rc!r}")


@dataclass
class TraceResult:
    """Per probe (``"kl"``, ``"rgb"``): targets (N, 2) pixel xy in frame 1, occluded (N,),
    peak value (N,) and contrast (N,: the peak over the mean of the point's own map);
    ``maps`` holds the averaged response maps (N, H, W) if kept (of the pass whose
    estimate was kept, in frame-1 coordinates) and ``slots`` each point's raw slot
    responses behind it (n, 4: slot left, top, pixel pitch, response);
    ``pass_targets`` (passes, N, 2) the targets after each refinement pass,
    ``pass_contrasts`` (passes, N) the contrast of the estimate held after each and
    ``pass_shifts`` (passes, N, 2) the whole-pixel shift of the frame-1 windows that
    gave it."""

    targets: dict[str, np.ndarray]
    occluded: dict[str, np.ndarray]
    peaks: dict[str, np.ndarray]
    maps: dict[str, np.ndarray] | None = None
    sequences_per_point: float = 0.0  # model input rows run per query point
    contrasts: dict[str, np.ndarray] = field(default_factory=dict)
    pass_targets: dict[str, np.ndarray] = field(default_factory=dict)
    pass_contrasts: dict[str, np.ndarray] = field(default_factory=dict)
    pass_shifts: dict[str, np.ndarray] = field(default_factory=dict)
    slots: dict[str, list[np.ndarray]] = field(default_factory=dict)


DEFAULT_MODEL = "kltrace-match"


def load_tracer(
    name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu"
) -> tuple[FramePairModel, TraceConfig]:
    """A frame-pair model and its :class:`TraceConfig` (occlusion thresholds calibrated
    for it, and any other settings its checkpoint records). ``name_or_path`` is a
    shipped checkpoint's name, a checkpoint directory, or a user's model as
    ``"module:Name"`` / ``"path/to/file.py:Name"`` (see :func:`load_user_model`; it gets
    the default :class:`TraceConfig`)."""
    from longseq import hub

    spec = str(name_or_path)
    if ":" in spec and not Path(spec).is_dir() and spec not in hub.registry():
        return load_user_model(spec, device), TraceConfig()
    model, info = hub.load(name_or_path, device)
    if not isinstance(model, FramePairModel):
        raise hub.CheckpointError(
            f"checkpoint {info.name!r} is a {type(model).__name__}, not a frame-pair model"
        )
    saved = info.extra.get("kltrace", {})
    cfg = TraceConfig()
    if "thresholds" in saved:
        cfg.thresholds = {**cfg.thresholds, **saved["thresholds"]}
    for key, value in saved.get("config", {}).items():
        setattr(cfg, key, tuple(value) if key == "scales" else value)
    return model, cfg


def gaussian_bump(
    frames: torch.Tensor, xy: torch.Tensor, sigma: float, amplitude: float
) -> torch.Tensor:
    """Add a bright Gaussian bump at pixel coordinates ``xy`` (B, 2) to frames (B, H, W, 3)
    in [0, 255] (pixel [i, j] has its centre at (j + 0.5, i + 0.5)); clipped to 255."""
    b, h, w, _ = frames.shape
    ys = torch.arange(h, dtype=torch.float32, device=frames.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=frames.device) + 0.5
    d2 = (xs[None, None, :] - xy[:, None, None, :1].squeeze(-1)) ** 2 + (
        ys[None, :, None] - xy[:, None, None, 1:].squeeze(-1)
    ) ** 2
    bump = amplitude * torch.exp(-d2 / (2 * sigma**2))
    return (frames.float() + bump[..., None]).clamp(0, 255)


def zoom_window(xy: np.ndarray, frame_hw: tuple[int, int], side: int) -> tuple[int, int, int]:
    """Square window (x0, y0, side) of ``side`` pixels centred on ``xy``, kept inside the frame."""
    h, w = frame_hw
    x0 = int(np.clip(round(xy[0] - side / 2), 0, w - side))
    y0 = int(np.clip(round(xy[1] - side / 2), 0, h - side))
    return x0, y0, side


def _window_sides(frame_hw: tuple[int, int], scales: tuple[float, ...], size: int) -> list[int]:
    short = min(frame_hw)
    if short < size:
        raise ValueError(f"frames of {frame_hw} are smaller than the model's input {size}x{size}")
    return sorted({max(size, int(round(s * short))) for s in scales}, reverse=True)


def jobs_per_point(frame_hw: tuple[int, int], config: TraceConfig, image_size: int) -> int:
    """(zoom window, reveal mask) jobs :func:`trace_points` runs for each query point in
    its first pass (refinement passes run again for the points whose shift changed)."""
    return len(_window_sides(frame_hw, config.scales, image_size)) * config.n_masks


def _check_frames(frame0: np.ndarray, frame1: np.ndarray) -> None:
    for name, f in (("frame0", frame0), ("frame1", frame1)):
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"{name} must be (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}")
    if frame0.shape != frame1.shape:
        raise ValueError(f"frame sizes differ: {frame0.shape} vs {frame1.shape}")


@torch.no_grad()
def _responses(
    model: FramePairModel,
    clean: torch.Tensor,
    revealed: torch.Tensor,
    perturbed: torch.Tensor,
    index: torch.Tensor,
    hold_motion: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL and RGB-difference maps (J, S) over slots (NaN where revealed) for J perturbed
    frame-0 inputs ``perturbed`` (J, H, W, 3). ``clean`` (U, 2, H, W, 3) holds the distinct
    clean frame pairs with their reveal masks ``revealed`` (U, S) bool; job j uses row
    ``index[j]``, so a clean pass shared by several points runs once. One batched call of
    U + J rows; with ``hold_motion`` the model's motion is inferred once per clean row
    and every perturbed row uses its clean row's."""
    codebook = model.codebook
    dev = codebook.device
    u = clean.shape[0]
    index = index.to(dev)
    rows = torch.cat([torch.arange(u, device=dev), index])  # clean row of every sequence
    frame0 = torch.cat([clean[:, 0], perturbed]).to(dev)
    mask = revealed.to(dev)[rows]
    frame1 = clean[:, 1].to(dev)
    if hold_motion:
        motion = model.motion(clean[:, 0].to(dev), frame1, revealed.to(dev))
        held = tuple(t[rows] for t in motion)
        logp = model.frame1_logprobs(frame0, frame1[rows], mask, motion=held)
    else:
        logp = model.frame1_logprobs(frame0, frame1[rows], mask)
    logp = _check_logprobs(logp, len(rows), mask.shape[1], codebook.shape[0]).float()
    logp_c, logp_p = logp[:u][index], logp[u:]
    kl = (logp_c.exp() * (logp_c - logp_p)).sum(-1)  # (J, S)
    mean_c = logp_c.exp() @ codebook.float()  # expected patch pixels, (J, S, p*p*3) in [0, 1]
    mean_p = logp_p.exp() @ codebook.float()
    rgb = (mean_c - mean_p).abs().mul(255.0).mean(-1)  # mean |delta| per pixel of the patch
    hidden = ~mask[u:]
    nan = torch.tensor(float("nan"), device=dev)
    return torch.where(hidden, kl.clamp(min=0), nan), torch.where(hidden, rgb, nan)


def _refine_peak(
    m: np.ndarray, radius: float, readout: str = "centroid", softness: float = 0.2
) -> tuple[np.ndarray, float, float]:
    """Argmax of a map (H, W), refined within ``radius`` pixels of it: ``"centroid"`` of
    the values above half the peak, or ``"softargmax"``, the mean position under weights
    ``exp((m - peak) / (softness * peak))``. Returns (xy in pixel-centre coordinates, peak
    value, contrast: the peak over the mean of the map where it is positive)."""
    i, j = np.unravel_index(np.nanargmax(m), m.shape)
    peak = float(m[i, j])
    pos = m[m > 0]
    contrast = peak / float(pos.mean()) if pos.size else 0.0
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    near = (yy - i) ** 2 + (xx - j) ** 2 <= radius**2
    if readout == "softargmax":
        wts = np.where(near, np.exp((m - peak) / max(softness * peak, 1e-12)), 0.0)
    else:
        wts = np.where(near & (m >= 0.5 * peak), m - 0.5 * peak, 0.0)
    if not peak > 0 or wts.sum() <= 0:
        return np.array([j + 0.5, i + 0.5]), peak, contrast
    xy = np.array([(wts * (xx + 0.5)).sum(), (wts * (yy + 0.5)).sum()]) / wts.sum()
    return xy, peak, contrast


def _fit_peak(
    slots: np.ndarray,
    point: np.ndarray,
    sigma: float,
    patch: int,
    width: float,
    finest: float,
    reach: float = float("inf"),
) -> np.ndarray:
    """The bump's position (xy, map coordinates) that best explains a point's raw slot
    responses ``slots`` (n, 4: slot left, top, pixel pitch in frame px, response): a
    matched filter. A slot's predicted response is the sum over its ``patch`` x ``patch``
    pixels of a Gaussian of ``width * sigma`` model pixels centred on the position; it is
    compared with the square root of the measured response (KL grows with the square of
    the change of a patch) by least squares with a free scale, so the score of a position
    is the share of the responses' energy it explains. Searched within ``reach`` px of
    ``point`` (and the slots' extent) on a grid of finest / 8 px, then within one step of
    the best on a grid of finest / 40 (``finest``: frame px per slot). The responses of
    every reveal mask and zoom enter at once; the position is not tied to the slot grid
    or to the peak of the averaged map, so a strong but narrow wrong mode loses to the
    position that explains most of the response."""
    left, top, pitch, value = slots.T
    v = np.sqrt(np.maximum(value, 0.0))
    if not v.any():
        return np.asarray(point, dtype=np.float64)
    k = np.arange(patch) + 0.5
    s2 = 2 * (width * sigma * pitch[:, None, None]) ** 2

    def scores(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:  # (len(xs), len(ys))
        ax = np.exp(-(((left[:, None] + k * pitch[:, None])[:, :, None] - xs) ** 2) / s2).sum(1)
        ay = np.exp(-(((top[:, None] + k * pitch[:, None])[:, :, None] - ys) ** 2) / s2).sum(1)
        vm = (ax * v[:, None]).T @ ay  # <v, m> per position
        mm = (ax**2).T @ ay**2  # <m, m>
        return np.where(vm > 0, vm**2 / np.maximum(mm, 1e-12), 0.0)

    step = finest / 8
    lo = np.maximum(np.array([left.min(), top.min()]), point - reach)
    hi = np.minimum(
        np.array([(left + patch * pitch).max(), (top + patch * pitch).max()]), point + reach
    )
    xs, ys = (
        point[d]
        + np.arange(np.ceil((lo[d] - point[d]) / step), np.floor((hi[d] - point[d]) / step) + 1)
        * step
        for d in (0, 1)
    )
    if not len(xs) or not len(ys):
        return np.asarray(point, dtype=np.float64)

    def best(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        sc = scores(xs, ys)
        sc[(xs[:, None] - point[0]) ** 2 + (ys[None, :] - point[1]) ** 2 > reach**2] = -1.0
        i, j = np.unravel_index(np.argmax(sc), sc.shape)
        return np.array([xs[i], ys[j]])

    x, y = best(xs, ys)
    fine = np.arange(-5, 6) * (step / 5)
    return best(x + fine, y + fine)


def read_peak(
    m: np.ndarray,
    slots: np.ndarray,
    cfg: TraceConfig,
    patch: int,
    finest: float,
    point: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """A point's target under ``cfg.readout`` from its averaged map ``m`` (H, W) and raw
    slot responses ``slots`` (see :func:`_trace_maps`), in map coordinates; ``point``: the
    query point there, ``finest``: frame px per slot of the finest zoom. Returns (xy,
    peak, contrast) as :func:`_refine_peak` (the peak and contrast are the map's)."""
    how = "softargmax" if cfg.readout == "fit" else cfg.readout
    xy, peak, contrast = _refine_peak(m, 1.5 * finest, how, cfg.softness)
    if cfg.readout == "fit" and peak > 0:
        if cfg.fit_reach < float("inf"):  # near the map's peak
            xy = _fit_peak(slots, xy, cfg.sigma, patch, cfg.fit_width, finest, cfg.fit_reach)
        else:  # anywhere the point may have gone
            xy = _fit_peak(slots, point, cfg.sigma, patch, cfg.fit_width, finest, cfg.max_motion)
    return xy, peak, contrast


def _trace_maps(
    model: FramePairModel,
    frame0: np.ndarray,
    frame1: np.ndarray,
    pts: np.ndarray,
    shifts: np.ndarray,
    cfg: TraceConfig,
    progress=None,
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], int]:
    """Averaged KL and RGB maps (N, H, W) of points ``pts`` (N, 2), the raw responses of
    every point's hidden slots (per probe, a list of N arrays (n, 4): slot left, top,
    pixel pitch in frame px, response) and the number of model input rows run. Point i's
    frame-1 windows are its frame-0 windows moved by the whole pixels ``shifts[i]``
    (frame 1 padded by repeating its edges), so its map is in the coordinates of frame 1
    moved back by that shift: the point went to (map position + shift)."""
    h, w = frame0.shape[:2]
    size, grid = model.image_size, model.image_size // model.patch
    n_slots = grid * grid
    sides = _window_sides((h, w), cfg.scales, size)
    n_reveal = max(1, int(round(cfg.reveal * n_slots))) if cfg.reveal > 0 else 0
    g = torch.Generator().manual_seed(cfg.seed)
    pad = int(np.abs(shifts).max()) if len(shifts) else 0
    f1_pad = np.pad(frame1, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else frame1

    jobs = [(i, side, k) for i in range(len(pts)) for side in sides for k in range(cfg.n_masks)]
    sums = {p: np.zeros((len(pts), h, w)) for p in PROBES}
    counts = np.zeros((len(pts), h, w))
    raw = {p: [[] for _ in pts] for p in PROBES}
    corner = np.stack([np.arange(n_slots) % grid, np.arange(n_slots) // grid], 1) * model.patch
    orders = torch.stack([torch.randperm(n_slots, generator=g) for _ in range(cfg.n_masks)])
    masks = torch.zeros(cfg.n_masks, n_slots, dtype=torch.bool)
    masks.scatter_(1, orders[:, :n_reveal], True)
    # an R2 low-discrepancy sequence: mask 0 centred, the others spread over the patch
    k = np.arange(cfg.n_masks)[:, None]
    offsets = cfg.jitter * ((0.5 + k * np.array([0.7548776662, 0.5698402910])) % 1 - 0.5)
    n_sequences = 0
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        boxes = [
            zoom_window(pts[i] + offsets[k] * side / grid, (h, w), side) for i, side, k in chunk
        ]
        crops0 = np.stack([crop_resize(frame0, box, size) for box in boxes])
        crops1 = np.stack(
            [
                crop_resize(f1_pad, (x0 + pad + shifts[i][0], y0 + pad + shifts[i][1], side), size)
                for (i, _, _), (x0, y0, side) in zip(chunk, boxes, strict=True)
            ]
        )
        crops = torch.from_numpy(np.stack([crops0, crops1], 1))
        local = torch.from_numpy(
            np.array(
                [
                    (pts[i] - box[:2]) * size / box[2]
                    for (i, _, _), box in zip(chunk, boxes, strict=True)
                ],
                dtype=np.float32,
            )
        )
        f0_pert = gaussian_bump(crops[:, 0], local, cfg.sigma, cfg.amplitude)
        # distinct (window, frame-1 shift, mask): one clean pass each
        keys = [(box, tuple(shifts[i]), k) for box, (i, _, k) in zip(boxes, chunk, strict=True)]
        uniq = list(dict.fromkeys(keys))
        first = {key: keys.index(key) for key in uniq}
        index = torch.tensor([uniq.index(key) for key in keys])
        clean = crops[[first[key] for key in uniq]].float()
        kl, rgb = _responses(
            model, clean, masks[[key[2] for key in uniq]], f0_pert, index, cfg.hold_motion
        )
        n_sequences += len(uniq) + len(chunk)
        # both probes share the revealed (NaN) slots: one validity map per job
        resp = torch.stack([kl, rgb], 1).reshape(-1, len(PROBES), grid, grid).nan_to_num(0.0)
        valid = (~kl.isnan()).float().reshape(-1, 1, grid, grid)
        values = {"kl": kl.cpu().numpy(), "rgb": rgb.cpu().numpy()}
        for r, ((i, _, _), (x0, y0, side)) in enumerate(zip(chunk, boxes, strict=True)):
            pitch = side / size
            for probe in PROBES:
                v = values[probe][r]
                ok = ~np.isnan(v)
                xy = corner[ok] * pitch + (x0, y0)
                raw[probe][i].append(np.column_stack([xy, np.full(ok.sum(), pitch), v[ok]]))
            # bilinear upsampling puts each slot's value at its patch centre
            v = F.interpolate(valid[r : r + 1], size=(side, side), mode="bilinear")[0, 0]
            m = F.interpolate(resp[r : r + 1], size=(side, side), mode="bilinear")[0]
            keep = v > 0.5
            m = (m / v.clamp(min=1e-6)).mul(keep).cpu().numpy()
            for k, probe in enumerate(PROBES):
                sums[probe][i, y0 : y0 + side, x0 : x0 + side] += m[k]
            counts[i, y0 : y0 + side, x0 : x0 + side] += keep.cpu().numpy()
        if progress is not None:
            progress(len(chunk))
    maps = {p: sums[p] / np.maximum(counts, 1) for p in PROBES}
    return maps, {p: [np.concatenate(r) for r in raw[p]] for p in PROBES}, n_sequences


def _shift_map(m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Map ``m`` (H, W) moved by whole pixels ``d`` (dx, dy), zeros where it was not."""
    h, w = m.shape
    dx, dy = int(d[0]), int(d[1])
    out = np.zeros_like(m)
    if abs(dx) < w and abs(dy) < h:
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = m[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return out


def trace_points(
    model: FramePairModel,
    frame0: np.ndarray,
    frame1: np.ndarray,
    points_xy: np.ndarray,
    config: TraceConfig | None = None,
    keep_maps: bool = False,
    progress=None,
) -> TraceResult:
    """Where do ``points_xy`` (N, 2) of ``frame0`` go in ``frame1``? Frames are (H, W, 3)
    uint8 RGB of the same size, at least the model's input size; each zoom window is
    resized to the model's input. Returns KL-tracing and RGB-difference estimates.

    With ``config.passes`` > 1 each estimate is refined coarse to fine: the point is
    traced again with its frame-1 windows moved by a whole-pixel shift near its current
    motion (``config.refine_gain`` times the last residual added to the last shift), so
    the model sees only the residual motion, which is added back to the shift. A pass
    runs only for points (per probe) whose shift changed, and its estimate is kept only
    where its map's contrast (peak over mean) reaches ``config.refine_contrast[probe]``,
    its residual is at most ``config.refine_max_residual`` and its motion at most
    ``config.max_motion`` pixels; otherwise the point keeps the previous estimate and
    stops refining. ``progress`` counts the first pass's jobs only."""
    cfg = config or TraceConfig()
    cfg.validate()
    _check_members(model)  # the output of every forward pass is checked as it comes
    if cfg.hold_motion and not callable(getattr(model, "motion", None)):
        raise TypeError(
            f"hold_motion needs a model with a motion(frame0, frame1, revealed) method; "
            f"{type(model).__name__} has none (trace it with hold_motion=False)"
        )
    _check_frames(frame0, frame1)
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    h, w = frame0.shape[:2]
    if len(pts) == 0:
        raise ValueError("no query points given")
    bad = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
    if bad.any():
        raise ValueError(f"query points outside the {w}x{h} frame: {pts[bad][:3].tolist()}")
    n = len(pts)
    size, grid = model.image_size, model.image_size // model.patch
    finest = min(_window_sides((h, w), cfg.scales, size)) / grid  # frame px per patch

    def read(maps: np.ndarray, slots: list, at: np.ndarray) -> tuple[np.ndarray, ...]:
        tg, pk, ct = zip(
            *(
                read_peak(m, r, cfg, model.patch, finest, p)
                for m, r, p in zip(maps, slots, at, strict=True)
            ),
            strict=True,
        )
        return np.stack(tg), np.array(pk), np.array(ct)

    zero = np.zeros((n, 2), dtype=int)
    maps, slots, n_sequences = _trace_maps(model, frame0, frame1, pts, zero, cfg, progress)
    state = {}  # per probe: targets, peaks, contrasts, maps, shifts, still refining, slots
    for probe in PROBES:
        tg, pk, ct = read(maps[probe], slots[probe], pts)
        far = np.linalg.norm(tg - pts, axis=1) > cfg.max_motion
        tg[far] = pts[far]  # beyond what the model can see: zero motion
        state[probe] = [tg, pk, ct, maps[probe], zero.copy(), ~far, slots[probe]]
    history = {p: [[state[p][k].astype(np.float32) for k in (0, 2, 4)]] for p in PROBES}
    for _ in range(1, cfg.passes):
        want = {}  # (point, dx, dy) -> probes that trace it
        for probe in PROBES:
            tg, _, _, _, d_old, active, _ = state[probe]
            d = np.round(d_old + cfg.refine_gain * (tg - pts - d_old)).astype(int)
            active &= (d != d_old).any(1)  # the same shift would give the same estimate
            for i in np.flatnonzero(active):
                want.setdefault((int(i), int(d[i, 0]), int(d[i, 1])), []).append(probe)
        if want:
            keys = list(want)
            idx = np.array([key[0] for key in keys])
            shifts = np.array([key[1:] for key in keys], dtype=int)
            new, new_slots, used = _trace_maps(model, frame0, frame1, pts[idx], shifts, cfg)
            n_sequences += used
            for probe in PROBES:
                rows = [r for r, key in enumerate(keys) if probe in want[key]]
                if not rows:
                    continue
                tg, pk, ct = read(
                    new[probe][rows], [new_slots[probe][r] for r in rows], pts[idx[rows]]
                )
                st = state[probe]
                for r, t, p_, c in zip(rows, tg, pk, ct, strict=True):
                    i, d = keys[r][0], shifts[r]
                    ok = (
                        c >= cfg.refine_contrast[probe]
                        and np.linalg.norm(t - pts[i]) <= cfg.refine_max_residual
                        and np.linalg.norm(t + d - pts[i]) <= cfg.max_motion
                    )
                    if ok:
                        st[0][i], st[1][i], st[2][i], st[4][i] = t + d, p_, c, d
                        if keep_maps:  # in frame-1 coordinates
                            st[3][i] = _shift_map(new[probe][r], d)
                            st[6][i] = new_slots[probe][r] + np.array([*d, 0, 0])
                    else:
                        st[5][i] = False  # not trusted: keep the previous estimate
        for probe in PROBES:
            history[probe].append([state[probe][k].astype(np.float32) for k in (0, 2, 4)])
        if not any(state[p][5].any() for p in PROBES):
            break
    for probe in PROBES:  # converged: the remaining passes change nothing
        history[probe] += [history[probe][-1]] * (cfg.passes - len(history[probe]))

    result = TraceResult({}, {}, {}, {} if keep_maps else None, n_sequences / n)
    for probe in PROBES:
        tg, pk, ct, mp, _, _, sl = state[probe]
        result.targets[probe] = tg.astype(np.float32)
        result.peaks[probe] = pk.astype(np.float32)
        result.contrasts[probe] = ct.astype(np.float32)
        result.pass_targets[probe] = np.stack([h[0] for h in history[probe]])
        result.pass_contrasts[probe] = np.stack([h[1] for h in history[probe]])
        result.pass_shifts[probe] = np.stack([h[2] for h in history[probe]]).astype(int)
        if cfg.occlusion == "contrast":
            result.occluded[probe] = ct < cfg.contrast_thresholds[probe]
        elif cfg.occlusion == "none":
            result.occluded[probe] = np.zeros(n, dtype=bool)
        else:
            result.occluded[probe] = pk < cfg.thresholds[probe]
        if keep_maps:
            result.maps[probe] = mp.astype(np.float32)
            result.slots[probe] = sl
    return result


def calibrate_threshold(peaks: np.ndarray, occluded: np.ndarray) -> float:
    """The peak threshold that best separates occluded from visible points (highest
    occlusion accuracy) on a labelled set: ``peaks`` and ``occluded`` of the same shape."""
    p, o = np.asarray(peaks, dtype=np.float64).ravel(), np.asarray(occluded, dtype=bool).ravel()
    if p.shape != o.shape or len(p) == 0:
        raise ValueError(
            f"peaks and occluded must be non-empty and alike, got {p.shape}, {o.shape}"
        )
    cands = np.unique(np.concatenate([p, [p.min() - 1e-9, p.max() + 1e-9]]))
    mids = (cands[1:] + cands[:-1]) / 2
    acc = [((p < t) == o).mean() for t in mids]
    return float(mids[int(np.argmax(acc))])


def track_video(
    model: FramePairModel,
    video: np.ndarray,
    query_points: np.ndarray,
    config: TraceConfig | None = None,
    progress=None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """TAP-Vid style tracks: each query ``(t, y, x)`` is traced from its frame to every
    later frame. Returns, per probe, tracks (N, T, 2) xy and occluded (N, T); frames
    before the query frame keep the query point and are marked occluded."""
    video = np.asarray(video)
    if video.ndim != 4:
        raise ValueError(f"video must be (T, H, W, 3) uint8, got shape {video.shape}")
    qp = np.asarray(query_points, dtype=np.float64).reshape(-1, 3)
    n, T = len(qp), len(video)
    qt = qp[:, 0].round().astype(int)
    if ((qt < 0) | (qt >= T)).any():
        raise ValueError(f"query frames must be in [0, {T}), got {sorted(set(qt.tolist()))}")
    out = {}
    for probe in PROBES:
        tracks = np.repeat(qp[:, None, [2, 1]], T, axis=1).astype(np.float32)
        occluded = np.ones((n, T), dtype=bool)
        occluded[np.arange(n), qt] = False
        out[probe] = (tracks, occluded)
    for t0 in np.unique(qt):
        sel = np.flatnonzero(qt == t0)
        for t1 in range(t0 + 1, T):
            res = trace_points(
                model, video[t0], video[t1], qp[sel][:, [2, 1]], config, progress=progress
            )
            for probe in PROBES:
                out[probe][0][sel, t1] = res.targets[probe]
                out[probe][1][sel, t1] = res.occluded[probe]
    return out
