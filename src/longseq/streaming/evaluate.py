"""All the metrics of one generated video, as the benchmark and the CLI report them, and
the same metrics of the world's own clips at the generator's resolution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from longseq.data.videoworld import clip_for_caption, parse_caption
from longseq.media import resize_video
from longseq.streaming.metrics import (
    MAWE_COEFF,
    MIN_HIDDEN,
    SCENE_MIN_LEN,
    appearance_drift,
    frame_changes,
    mawe_score,
    mean_colour_error,
    palette_error,
    scene_cuts,
    seam_flow_std,
    seam_jumps,
    text_alignment,
    warp_errors,
)


def video_metrics(
    frames: np.ndarray,
    caption: str | None = None,
    frame_encoder: Any = None,
    seams: Sequence[int] | None = None,
    flow_size: int = 64,
    min_scene_len: int = SCENE_MIN_LEN,
    mawe_coeff: float = MAWE_COEFF,
    min_hidden: int = MIN_HIDDEN,
) -> dict[str, float]:
    """Every metric of one (T, H, W, 3) uint8 video, as a flat dict of floats.

    - ``mawe``, ``warp_error``, ``flow_magnitude``: :func:`~longseq.streaming.metrics.mawe`
      (coefficient ``mawe_coeff``) on the video resized to ``flow_size`` pixels, so that
      videos of different resolutions compare;
    - ``scuts``: :func:`~longseq.streaming.metrics.scene_cuts` with ``min_scene_len``;
    - ``frame_change``: the mean change between consecutive frames (levels, 0-255);
    - ``object_drift``, ``background_drift``, ``reappear_drift``, ``n_reappear``,
      ``object_visible``: :func:`~longseq.streaming.metrics.appearance_drift` (re-appearances
      after ``min_hidden`` frames out of view), at the video's own size;
    - ``object_palette_error``, ``background_palette_error``, ``palette_error``:
      :func:`~longseq.streaming.metrics.palette_error`, at the video's own size;
    - with ``seams`` (first frames of chunks): ``seam_change``, ``within_change``,
      ``seam_jump_ratio``, ``seam_share_above_p95``, ``n_seams``
      (:func:`~longseq.streaming.metrics.seam_jumps`, at the video's own size) and
      ``seam_flow_std`` (at ``flow_size``);
    - with a ``caption`` and a ``frame_encoder``: ``text_alignment``, on the attributes
      the caption names that the encoder knows.

    Colour metrics are in levels (4.0 is 4/255).
    """
    if isinstance(flow_size, bool) or not isinstance(flow_size, (int, np.integer)):
        raise ValueError(f"flow_size must be an integer number of pixels, got {flow_size!r}")
    if flow_size < 8:
        raise ValueError(f"flow_size must be >= 8 pixels, got {flow_size}")
    frames = np.asarray(frames)
    big = resize_video(frames, (flow_size, flow_size))
    errors, magnitudes = warp_errors(big)  # one flow per pair, shared by MAWE and seams
    out: dict[str, float] = mawe_score(errors, magnitudes, c=mawe_coeff)
    out["scuts"] = float(scene_cuts(frames, min_scene_len=min_scene_len))
    out["frame_change"] = float(frame_changes(frames).mean())
    out.update(appearance_drift(frames, min_hidden=min_hidden).summary())
    out.update(palette_error(frames).summary())
    if seams:
        out.update(seam_jumps(frames, seams))
        out["seam_flow_std"] = seam_flow_std(big, seams, magnitudes=magnitudes)
    if frame_encoder is not None and caption:
        out["text_alignment"] = text_alignment(frames, caption, frame_encoder)
    return out


def real_clip_metrics(
    captions: Sequence[str],
    n_frames: int,
    size: int,
    seeds: Sequence[int] | None = None,
    seams: Sequence[int] | None = None,
    frame_encoder: Any = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """:func:`video_metrics` of the world's own clips, the reference a generator's numbers
    are read against.

    Clip i is ``clip_for_caption(captions[i], seed=seeds[i])`` (seeds default to 0, 1,
    ...: the benchmark's prompt index) rendered for ``n_frames`` frames at ``size`` x
    ``size``, the generator's resolution. ``seams`` (the generator's chunk starts, the
    same for every clip) give the seam metrics of videos without seams: a seam-jump ratio
    near 1. Other keyword arguments go to :func:`video_metrics`.
    """
    captions = list(captions)
    seeds = list(range(len(captions))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(captions):
        raise ValueError(f"seeds must give one seed per caption: {len(seeds)} for {len(captions)}")
    rows = []
    for caption, seed in zip(captions, seeds, strict=True):
        video = clip_for_caption(caption, seed=seed).render(n_frames, size)
        rows.append(video_metrics(video, caption, frame_encoder, seams, **kwargs))
    return rows


BASE_COLOUR_GATE = 4.0  # levels: the base model's frame colours against the world's
REMAKE_GATE = 6.0  # levels: teacher-forced re-make error of clean conditioning frames


def gate_prompts(n: int, split: str = "test", first_seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (caption, seed) prompts: the split's captions in turn (``"test"``: the
    held-out captions; ``"train"``: the others), each with its own seed from
    ``first_seed`` on (the seed draws the clip's appearance and trajectory)."""
    from longseq.data.videoworld import all_captions, caption_of, caption_split

    caps = [caption_of(a) for a in all_captions() if caption_split(a) == split]
    return [(caps[i % len(caps)], first_seed + i) for i in range(n)]


def chunk_colours(chunks: Sequence[np.ndarray]) -> dict[str, float]:
    """The colour errors of the colour gate over first chunks ((T, H, W, 3) uint8 each):
    ``base_colour_error``, the mean over chunks of the mean over frames of
    :func:`~longseq.streaming.metrics.mean_colour_error`, and ``base_palette_error``, the
    mean over chunks of :func:`~longseq.streaming.metrics.palette_error` (chunks where it
    reads nothing left out)."""
    return {
        "base_colour_error": float(np.mean([mean_colour_error(c).mean() for c in chunks])),
        "base_palette_error": float(
            np.nanmean([palette_error(c).summary()["palette_error"] for c in chunks])
        ),
    }


def gates(
    pipe: Any,
    n: int = 16,
    split: str = "test",
    num_inference_steps: int | None = None,
    first_seed: int = 0,
    **sampling: Any,
):
    """The checks that come before any comparison of generators, on ``n`` prompts of
    ``split`` (colours in levels, 0-255):

    - ``base_colour_error``: the base model's first chunks, mean over frames of
      :func:`~longseq.streaming.metrics.mean_colour_error` — the frame's mean colour per
      channel against the world's (does the base keep the world's colours, or recolour?).
      Gate: <= ``BASE_COLOUR_GATE``. ``base_palette_error`` (object and background
      colours read apart, :func:`~longseq.streaming.metrics.palette_error`) is reported
      beside it: it also sees an object drawn in a blend of colours.
    - ``remake_error``: the memory model continues ``F_cond`` clean frames of a world clip,
      sampled with the conditioning frames free (``hold_cond=False``: held, they would be
      re-made by construction); the mean absolute difference between the frames it
      re-makes and those frames (does it reproduce clean input?). Gate: <= ``REMAKE_GATE``.
      ``remake_last_error`` is the same on the last conditioning frame alone: the only one
      the naive (last-frame) models see, so their gate is on it.
    - ``continue_colour_error``: the new frames' mean colour per channel against the world
      clip's same frames, sampled as the pipeline samples (does it keep the colours it was
      given?).
    - ``passed``: both gates hold.

    Other keyword arguments (``guidance_scale``, ...) go to the pipeline's sampling.
    """
    from longseq.data.videoworld import clip_for_caption

    prompts = gate_prompts(n, split, first_seed)
    size = pipe._pixel_size(pipe.unet)
    fc, f = pipe.cond_frames, pipe.chunk_frames
    sampling["num_inference_steps"] = num_inference_steps
    # the re-make is the model's own: held conditioning frames would be re-made by
    # construction (a model without memory has no re-make but the held one)
    free = {} if getattr(pipe, "mode", None) == "replace" else {"hold_cond": False}
    firsts, remake, last, cont = [], [], [], []
    for caption, seed in prompts:
        firsts.append(pipe(caption, f, seed=seed, progress=False, **sampling).frames)
        clip = clip_for_caption(caption, seed=seed)
        start = 8 * (seed % 8)
        real = clip.render(f, size, start)
        given = (caption, real[:fc], clip.render(1, size)[0])
        out = pipe.continue_chunk(*given, seed=seed, **(sampling | free))
        real = real.astype(np.float64)
        diff = out.astype(np.float64) - real
        remake.append(float(np.abs(diff[:fc]).mean()))
        last.append(float(np.abs(diff[fc - 1]).mean()))
        if free and _held(pipe, sampling):  # the new frames as the pipeline samples them
            diff = pipe.continue_chunk(*given, seed=seed, **sampling).astype(np.float64) - real
        cont.append(float(np.abs(diff[fc:].reshape(f - fc, -1, 3).mean(1)).mean()))
    res = chunk_colours(firsts) | {
        "remake_error": float(np.mean(remake)),
        "remake_last_error": float(np.mean(last)),
        "continue_colour_error": float(np.mean(cont)),
        "n": n,
    }
    gated = "remake_last_error" if getattr(pipe, "mode", None) == "concat" else "remake_error"
    res["gated_remake"] = gated
    res["passed"] = bool(res["base_colour_error"] <= BASE_COLOUR_GATE and res[gated] <= REMAKE_GATE)
    return res


def _held(pipe: Any, sampling: dict[str, Any]) -> bool:
    """Does the pipeline hold the conditioning frames with these sampling arguments?"""
    hold = sampling.get("hold_cond")
    return bool(getattr(pipe, "defaults", {}).get("hold_cond") if hold is None else hold)


SHAPE_GATE = 0.9  # shape accuracy among visible frames of the base model's first chunks
SPEED_GATE = 0.75  # first chunks moving at the named speed (world clips: about 0.9)
VISIBLE_GATE = 0.25  # every prompted shape in view in this share of its frames (world: ~0.5)


def prompt_gate(
    first_chunks: Sequence[np.ndarray], captions: Sequence[str], classifier: Any
) -> dict[str, Any]:
    """Does the base model draw what its captions name? On first chunks (one (T, H, W, 3)
    uint8 video per caption), read with
    :func:`~longseq.streaming.metrics.prompt_fidelity`:

    - ``shape_accuracy``: the share of visible frames, over all chunks, whose shape is the
      caption's (NaN when no frame is visible). Gate: >= ``SHAPE_GATE``;
    - ``speed_agreement``: the share of chunks whose mean per-frame motion is on the
      caption's side of the classifier's slow/quick split, among the ``n_speed_read``
      chunks where it is read (two consecutive visible frames or more). Gate:
      >= ``SPEED_GATE``;
    - ``visible``: the share of frames with the object at least half in view, and
      ``n_visible`` their count; ``per_caption`` the same per chunk;
    - ``per_shape``: per prompted shape, ``visible`` and ``shape_accuracy`` over its
      chunks' frames, so that a shape the model never draws shows (its frames do not
      count against the accuracy among visible frames); ``least_visible`` the smallest
      of those shares. Gate: >= ``VISIBLE_GATE``;
    - ``passed``: the three gates hold (a chunk set without visible frames fails).
    """
    from longseq.streaming.metrics import prompt_fidelity

    if len(first_chunks) != len(captions) or not captions:
        raise ValueError(
            f"need one first chunk per caption (at least one), got {len(first_chunks)} chunks "
            f"and {len(captions)} captions"
        )
    speed, rows = [], []
    shapes: dict[str, tuple[list[bool], list[bool]]] = {}  # prompted shape: visible, correct
    for video, caption in zip(first_chunks, captions, strict=True):
        fid = prompt_fidelity(video, caption, classifier)
        block = fid.blocks(len(fid.visible))
        c = fid.shape_correct[fid.visible]
        visible, correct = shapes.setdefault(parse_caption(caption)["shape"], ([], []))
        visible.extend(fid.visible.tolist())
        correct.extend(c.tolist())
        sp = float(block["speed_correct"][0])
        if np.isfinite(sp):
            speed.append(sp)
        rows.append(
            {
                "caption": caption,
                "visible": float(fid.visible.mean()),
                "shape_accuracy": float(c.mean()) if len(c) else float("nan"),
                "shapes": [s for s in fid.shape if s is not None],
                "mean_step": float(block["mean_step"][0]),
                "speed_correct": sp,
            }
        )
    visible = [v for vs, _ in shapes.values() for v in vs]  # every frame, every shape
    correct = [c for _, cs in shapes.values() for c in cs]
    res = {
        "shape_accuracy": float(np.mean(correct)) if correct else float("nan"),
        "speed_agreement": float(np.mean(speed)) if speed else float("nan"),
        "visible": float(np.mean(visible)),
        "n_visible": len(correct),
        "n_speed_read": len(speed),
        "n": len(captions),
        "per_caption": rows,
    }
    res["per_shape"] = {
        shape: {
            "visible": float(np.mean(v)),
            "shape_accuracy": float(np.mean(c)) if len(c) else float("nan"),
        }
        for shape, (v, c) in shapes.items()
    }
    res["least_visible"] = min(v["visible"] for v in res["per_shape"].values())
    res["passed"] = bool(
        res["shape_accuracy"] >= SHAPE_GATE
        and res["speed_agreement"] >= SPEED_GATE
        and res["least_visible"] >= VISIBLE_GATE
    )
    return res


def base_prompt_gate(
    pipe: Any,
    classifier: Any,
    n: int = 12,
    split: str = "test",
    first_seed: int = 100,
    num_inference_steps: int | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """:func:`prompt_gate` on the base model's first chunks for ``n`` prompts of ``split``
    (:func:`gate_prompts` from ``first_seed``: held-out captions and seeds by default).
    Other keyword arguments (``guidance_scale``, ...) go to the pipeline's sampling."""
    prompts = gate_prompts(n, split, first_seed)
    sampling["num_inference_steps"] = num_inference_steps
    chunks = [
        pipe(caption, pipe.chunk_frames, seed=seed, progress=False, **sampling).frames
        for caption, seed in prompts
    ]
    return prompt_gate(chunks, [c for c, _ in prompts], classifier)
