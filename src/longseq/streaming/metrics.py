"""Video metrics of StreamingT2V, on (T, H, W, 3) uint8 RGB videos.

- **Seam jumps** (:func:`seam_jumps`): frame change across chunk seams against frame
  change within chunks.
- **Appearance** (:func:`appearance`, :func:`appearance_drift`, :func:`palette_error`):
  the object's and the background's colour per frame, read with the video world's luma
  rule; their drift from the first frame, after each re-appearance of the object, and
  their distance to the colours the world can draw.
- **SCuts** (:func:`scene_cuts`): scene cuts found by PySceneDetect.
- **MAWE** (:func:`mawe`): the authors' motion-aware warp error.
- **Text alignment** (:func:`text_alignment`): a frame encoder's attribute heads against
  the caption.
- **Prompt fidelity** (:func:`prompt_fidelity`): an attribute classifier of its own
  (``fidelity-classifier``, not APM's encoder) reads per frame whether the object is in
  view and which shape it is, and from the object's track (:func:`object_track`) its
  speed and motion; each is compared with what the caption names.

Colour differences are in levels of the 0-255 scale (4.0 means 4/255). Optical flow
defaults to :func:`longseq.flow.color_dis_flow` (DIS that also sees motion between
colours of equal luma); any ``flow_fn(frame0, frame1) -> (H, W, 2)`` forward flow in
pixels ``(dx, dy)`` can be passed instead.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from longseq.data import videoworld as vw
from longseq.flow import FlowFn, color_dis_flow

if TYPE_CHECKING:
    from longseq.models.attribute_cnn import AttributeCNN
    from longseq.models.frame_encoder import FrameEncoder

SCENE_DETECT_MIN_SIZE = 64  # smaller frames are upscaled (nearest) before scene detection
SCENE_MIN_LEN = 4  # frames; chunks add 4-8 new frames, so a longer minimum hides seams
MAWE_COEFF = 9.5  # c of the authors' mawe.py (its --coeff default)
MIN_MOTION = 0.01  # px; floor of a pair's mean flow magnitude in MAWE (see mawe)
COLOR_MARGIN = 20.0  # luma levels kept clear of vw.LUMA_SPLIT on each side
MIN_OBJECT_PIXELS = 4  # fewer object pixels: the object is out of view
MIN_HIDDEN = 8  # frames out of view before a return counts as a re-appearance
REAPPEAR_WINDOW = 4  # measured frames after a re-appearance that its drift averages
_MEASURED_FRACTION = 0.5  # colour read only when this much of the object's usual size shows
_MIN_INTERIOR = 3  # interior pixels needed to read the colour from the interior alone


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


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_margin(margin: float) -> float:
    limit = min(vw.LUMA_SPLIT, 255 - vw.LUMA_SPLIT)
    if not 0 <= margin < limit:
        raise ValueError(f"margin must be in [0, {limit:g}) luma levels, got {margin}")
    return float(margin)


def _check_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float64)
    if flow.shape != (*shape, 2):
        raise ValueError(f"flow_fn must return an (H, W, 2) = {(*shape, 2)} flow, got {flow.shape}")
    return flow


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


# --- seam jumps ---------------------------------------------------------------------


def frame_changes(video: np.ndarray) -> np.ndarray:
    """Change between consecutive frames, (T-1,) float64 in levels (0-255): entry t is the
    mean over pixels and channels of |frame[t+1] - frame[t]|."""
    video = _check_video(video)
    out = np.empty(video.shape[0] - 1)
    for t in range(len(out)):  # frame by frame: no (T, H, W, 3) temporary
        out[t] = np.abs(video[t + 1].astype(np.int16) - video[t]).mean()
    return out


def _valid_seams(seams: Sequence[int], n_frames: int) -> list[int]:
    try:
        values = [int(s) for s in seams]
    except (TypeError, ValueError) as e:
        raise ValueError(f"seams must be frame indices, got {seams!r}") from e
    valid = sorted({s for s in values if 0 < s < n_frames})
    if not valid:
        raise ValueError(
            f"no valid seam in {values} for a video of {n_frames} frames (need 0 < s < T)"
        )
    return valid


def seam_jumps(video: np.ndarray, seams: Sequence[int]) -> dict[str, float]:
    """How much more a video changes across chunk seams than within chunks.

    A seam ``s`` is the first frame of a new chunk (0 < s < T; others are skipped, as are
    repeats); its pair is (s-1, s). Every other consecutive pair is within a chunk. With
    the frame changes d_t of :func:`frame_changes` (levels, 0-255), returns

    - ``seam_change``: mean d over seam pairs;
    - ``within_change``: mean d over within-chunk pairs;
    - ``seam_jump_ratio``: ``seam_change / within_change`` (1 for a video without seam
      artefacts; ``inf`` when nothing changes within chunks but the seams do, NaN when
      nothing changes at all);
    - ``seam_share_above_p95``: the fraction of seams whose d exceeds the 95th percentile
      (numpy's linear interpolation) of the within-chunk d;
    - ``n_seams``: the number of seams used.
    """
    video = _check_video(video, min_frames=3)
    d = frame_changes(video)
    valid = _valid_seams(seams, video.shape[0])
    at_seam = np.zeros(len(d), bool)
    at_seam[np.array(valid) - 1] = True
    if at_seam.all():
        raise ValueError(
            f"seams {valid} leave no pair within a chunk of a {len(video)}-frame video"
        )
    across, within = d[at_seam], d[~at_seam]
    a, w = float(across.mean()), float(within.mean())
    ratio = a / w if w > 0 else (math.inf if a > 0 else math.nan)
    return {
        "seam_change": a,
        "within_change": w,
        "seam_jump_ratio": ratio,
        "seam_share_above_p95": float(np.mean(across > np.percentile(within, 95))),
        "n_seams": float(len(valid)),
    }


# --- appearance ---------------------------------------------------------------------


def _interior(mask: np.ndarray, outside: bool) -> np.ndarray:
    """Pixels of a (T, H, W) mask whose four neighbours are in the mask too; pixels
    beyond the frame count as ``outside``."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=outside)
    return mask & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]


@dataclass
class Appearance:
    """What :func:`appearance` reads in each of T frames.

    ``object_color`` and ``background_color`` are (T, 3) float64 RGB in levels (NaN where
    not read), ``object_pixels`` (T,) the count of object pixels and ``visible`` (T,)
    whether the object is in view.
    """

    object_color: np.ndarray
    background_color: np.ndarray
    object_pixels: np.ndarray
    visible: np.ndarray


def appearance(
    video: np.ndarray, margin: float = COLOR_MARGIN, min_pixels: int = MIN_OBJECT_PIXELS
) -> Appearance:
    """The object's and the background's colour in each frame, read by the video world's
    rule that objects are bright and backgrounds dark (``videoworld.LUMA_SPLIT``).

    With L the BT.601 luma of a pixel:

    - object pixels have L > LUMA_SPLIT + ``margin``; the object is visible in a frame
      with at least ``min_pixels`` of them;
    - the object colour is read in the visible frames that show at least half the
      object's usual size (the median count over visible frames), so that a sliver at the
      frame's edge, all of it edge pixels blended with the background, is not read. It is
      the per-channel median of the object's interior pixels (object pixels whose four
      neighbours are object pixels too; beyond the frame is not object) when there are at
      least 3 of those, else of the brighter half (by L) of the object pixels. NaN in the
      other frames;
    - background pixels have L < LUMA_SPLIT - ``margin`` and their four neighbours too
      (beyond the frame counts as background), which leaves out the object's blended
      edge; the background colour is their mean (of both tones for a patterned
      background), NaN in a frame without any.

    Needs one frame or more; ``margin`` in [0, 115) levels.
    """
    video = _check_video(video, min_frames=1)
    margin = _check_margin(margin)
    min_pixels = _check_int("min_pixels", min_pixels, 1)
    v = video.astype(np.float32)
    lum = v @ np.array([0.299, 0.587, 0.114], np.float32)
    obj = lum > vw.LUMA_SPLIT + margin
    bg = _interior(lum < vw.LUMA_SPLIT - margin, outside=True)
    count = obj.sum(axis=(1, 2))
    visible = count >= min_pixels
    usual = float(np.median(count[visible])) if visible.any() else 0.0
    inner = _interior(obj, outside=False)
    object_color = np.full((len(v), 3), np.nan)
    for t in np.flatnonzero(visible & (count >= _MEASURED_FRACTION * usual)):
        if inner[t].sum() >= _MIN_INTERIOR:
            pixels = v[t][inner[t]]
        else:
            pixels, lum_t = v[t][obj[t]], lum[t][obj[t]]
            pixels = pixels[lum_t >= np.median(lum_t)]
        object_color[t] = np.median(pixels, axis=0)
    n_bg = bg.sum(axis=(1, 2))
    sums = np.einsum("thwc,thw->tc", v, bg.astype(np.float32), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        background_color = np.where(n_bg[:, None] > 0, sums / n_bg[:, None], np.nan)
    return Appearance(object_color, background_color, count, visible)


@dataclass
class AppearanceDrift:
    """Colour drift of a video against its anchor, from :func:`appearance_drift`.

    ``object_drift`` and ``background_drift`` are (T,) mean absolute per-channel
    differences in levels from the anchor's colours (NaN where a colour is not read);
    ``anchor_frame`` is the frame whose object colour is the reference (-1 when the
    object is never read); ``reappearances`` are the frames at which the object comes
    back into view and ``reappear_drift`` (one per re-appearance) the object drift just
    after each.
    """

    appearance: Appearance
    anchor_frame: int
    object_drift: np.ndarray
    background_drift: np.ndarray
    reappearances: list[int]
    reappear_drift: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over the video: ``object_drift`` (frames whose object colour is read),
        ``background_drift``, ``reappear_drift`` (over re-appearances; NaN without any),
        ``n_reappear`` and ``object_visible`` (the fraction of frames with the object in
        view)."""
        return {
            "object_drift": _nanmean(self.object_drift),
            "background_drift": _nanmean(self.background_drift),
            "reappear_drift": _nanmean(self.reappear_drift),
            "n_reappear": float(len(self.reappearances)),
            "object_visible": float(np.mean(self.appearance.visible)),
        }


def appearance_drift(
    video: np.ndarray,
    min_hidden: int = MIN_HIDDEN,
    window: int = REAPPEAR_WINDOW,
    margin: float = COLOR_MARGIN,
    min_pixels: int = MIN_OBJECT_PIXELS,
) -> AppearanceDrift:
    """How far the object's and the background's colour drift from the first frame's.

    Colours are read by :func:`appearance` (``margin``, ``min_pixels``). The background's
    reference is frame 0; the object's is the first frame whose object colour is read
    (frame 0 in the world's clips, where the object starts in view). Drift in a frame is
    the mean over R, G, B of the absolute difference from the reference, in levels.

    A re-appearance is a frame ``r`` where the object is visible after at least
    ``min_hidden`` frames out of view (by the object-pixel count, so that generated videos
    are read the same way), and after the reference frame. Its drift is the mean object
    drift over the first ``window`` frames from ``r`` on, within the same stretch in view,
    whose object colour is read (NaN if none is).
    """
    video = _check_video(video, min_frames=1)
    min_hidden = _check_int("min_hidden", min_hidden, 1)
    window = _check_int("window", window, 1)
    a = appearance(video, margin=margin, min_pixels=min_pixels)
    read = ~np.isnan(a.object_color[:, 0])
    anchor = int(np.argmax(read)) if read.any() else -1
    n = len(video)
    object_drift = np.full(n, np.nan)
    if anchor >= 0:
        object_drift = np.abs(a.object_color - a.object_color[anchor]).mean(axis=1)
    background_drift = np.abs(a.background_color - a.background_color[0]).mean(axis=1)
    reappearances, drifts = [], []
    for r in range(min_hidden, n):
        if not a.visible[r] or a.visible[r - min_hidden : r].any() or not 0 <= anchor < r:
            continue
        end = r
        while end < n and a.visible[end]:
            end += 1
        frames = [t for t in range(r, end) if read[t]][:window]
        reappearances.append(r)
        drifts.append(float(object_drift[frames].mean()) if frames else math.nan)
    return AppearanceDrift(
        a, anchor, object_drift, background_drift, reappearances, np.array(drifts)
    )


@functools.lru_cache(maxsize=16)
def world_palette(size: int, margin: float = COLOR_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The colours the video world draws, as :func:`appearance` reads them at
    ``size`` x ``size`` pixels.

    Returns the object colours (one per ``videoworld.COLORS``; a uniform object reads back
    exactly) and the background colours (one per ``BG_COLORS`` x ``PATTERNS``: each
    background rendered alone as ``Clip.render`` renders it, 2x supersampled and averaged,
    and read with the background rule), both (n, 3) float64 in levels, read-only.
    """
    size = _check_int("size", size, 1)
    margin = _check_margin(margin)
    objects = np.array(list(vw.COLORS.values()), np.float64)
    frames = []
    for bg_color, pattern in itertools.product(vw.BG_COLORS, vw.PATTERNS):
        clip = vw.Clip(attrs={"bg_color": bg_color, "pattern": pattern}, seed=0)
        frames.append(clip.render_background(size))
    backgrounds = appearance(np.stack(frames), margin=margin).background_color
    objects.flags.writeable = backgrounds.flags.writeable = False
    return objects, backgrounds


@dataclass
class PaletteError:
    """Per frame (T,), in levels: the object colour's and the background colour's mean
    absolute per-channel distance to the nearest colour the world draws (NaN where the
    colour is not read). From :func:`palette_error`."""

    object_error: np.ndarray
    background_error: np.ndarray

    def summary(self) -> dict[str, float]:
        """``object_palette_error`` and ``background_palette_error`` (means over the
        frames where each is read) and ``palette_error``, the mean of the two (of the
        one that is read, when only one is)."""
        o, b = _nanmean(self.object_error), _nanmean(self.background_error)
        return {
            "object_palette_error": o,
            "background_palette_error": b,
            "palette_error": _nanmean(np.array([o, b])),
        }


def palette_error(
    video: np.ndarray, margin: float = COLOR_MARGIN, min_pixels: int = MIN_OBJECT_PIXELS
) -> PaletteError:
    """How far a video's colours are from any the world draws: the gate on a generator's
    colour error against the world.

    Each frame's object and background colour (:func:`appearance`) is compared, by mean
    absolute per-channel difference in levels, with the nearest object colour and the
    nearest background (colour x pattern) of :func:`world_palette` at the video's size.
    The world's own clips score about 0; a generator that shifts colours scores the
    shift. A patterned background is compared by its mean colour, so a plain background
    in that mean colour scores 0 as well. Frames must be square.
    """
    video = _check_video(video, min_frames=1)
    if video.shape[1] != video.shape[2]:
        raise ValueError(f"palette_error needs square frames, got {video.shape[1:3]}")
    objects, backgrounds = world_palette(video.shape[1], margin)
    a = appearance(video, margin=margin, min_pixels=min_pixels)

    def nearest(colors: np.ndarray, palette: np.ndarray) -> np.ndarray:
        return np.abs(colors[:, None, :] - palette[None]).mean(axis=-1).min(axis=1)

    return PaletteError(nearest(a.object_color, objects), nearest(a.background_color, backgrounds))


@functools.lru_cache(maxsize=16)
def _world_means(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean frame colours of the world's backgrounds alone (colour x pattern, (n, 3)), the
    object colours (m, 3), and the largest share of a frame an object covers."""
    objects = np.array(list(vw.COLORS.values()), np.float64)
    backs = np.array(
        [
            vw.Clip(attrs={"bg_color": c, "pattern": p}, seed=0)
            .render_background(size)
            .reshape(-1, 3)
            .mean(0)
            for c, p in itertools.product(vw.BG_COLORS, vw.PATTERNS)
        ]
    )
    return objects, backs, max(_object_share(shape, size) for shape in vw.SHAPES)


def _object_share(shape: str, size: int) -> float:
    """The share of a ``size`` px frame a fully visible object of ``shape`` covers."""
    clip = vw.clip_for_caption(f"a {shape} bounces slowly", 0, color="white", bg_color="navy")
    frame = clip.render(1, size)[0].astype(np.float64)
    back = clip.render_background(size).astype(np.float64)
    white = np.array(vw.COLORS["white"], np.float64)
    return float(((frame - back) / (white - back)).clip(0, 1).mean())


def mean_colour_error(video: np.ndarray) -> np.ndarray:
    """Per frame (T,), in levels: how far the frame's mean colour (per channel) is from the
    mean colour of a world frame of any appearance — the frame-level colour shift a
    recolouring generator makes.

    A world frame's mean is ``(1 - a) * background + a * object`` for one of the world's
    backgrounds (colour x pattern, rendered at the video's size), one object colour and
    an object share ``a`` between 0 (out of view) and the largest share an object covers;
    the error is the smallest mean absolute per-channel distance to that set. The world's
    own clips score about 0 (objects rotate and leave the frame partly, so not exactly).
    A shift onto another colour the world draws is not seen here (the captions name no
    colour); :func:`appearance_drift` sees it against the anchor.
    """
    video = _check_video(video, min_frames=1)
    if video.shape[1] != video.shape[2]:
        raise ValueError(f"mean_colour_error needs square frames, got {video.shape[1:3]}")
    objects, backs, area = _world_means(video.shape[1])
    means = video.reshape(len(video), -1, 3).mean(1)  # (T, 3)
    best = np.full(len(video), np.inf)
    for bg in backs:
        for obj in objects:
            d = obj - bg  # the segment bg + a d, a in [0, area]
            a = np.clip(((means - bg) @ d) / (d @ d), 0, area)
            err = np.abs(means - (bg + a[:, None] * d)).mean(1)
            best = np.minimum(best, err)
    return best


# --- scene cuts ---------------------------------------------------------------------


def scene_cuts(
    video: np.ndarray, threshold: float = 3.0, min_scene_len: int = SCENE_MIN_LEN
) -> int:
    """Number of scene cuts (boundaries between scenes, not scenes) that PySceneDetect's
    ``AdaptiveDetector`` finds in ``video``.

    ``threshold`` is the detector's adaptive threshold (a frame's content change relative
    to the mean change of its neighbours) and ``min_scene_len`` the fewest frames between
    cuts: 4 by default, so that a cut at every seam of chunks of 4 or more new frames can
    be counted (a longer minimum caps the count below the number of seams). Frames
    smaller than 64 px are upscaled (nearest neighbour) to at least 64 px so that the
    detector's defaults (edge kernel, content thresholds) behave. Needs the
    ``scenedetect`` package.
    """
    video = _check_video(video)
    min_scene_len = _check_int("min_scene_len", min_scene_len, 0)
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
    detector = AdaptiveDetector(adaptive_threshold=float(threshold), min_scene_len=min_scene_len)
    fps = 30.0  # only sets the timecodes' clock; min_scene_len counts frames
    cuts = []
    for t, frame in enumerate(bgr):
        cuts += detector.process_frame(FrameTimecode(t, fps=fps), frame)
    cuts += detector.post_process(FrameTimecode(len(bgr) - 1, fps=fps))
    return len({c.frame_num for c in cuts})


# --- MAWE ---------------------------------------------------------------------------


def forward_warp(frame: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move ``frame`` (H, W, C) along ``flow`` (H, W, 2) as the authors' ``mawe.py`` does.

    The pixel at column x, row y lands at (round(x + dx), round(y + dy)) (round half to
    even, as ``torch.round``); landings outside the frame are dropped and, where several
    pixels land on one target, the last in row-major order wins. Returns the warped frame
    (H, W, C) float64, 0 where nothing landed, and the known mask (H, W) bool of the
    targets something landed on.
    """
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    flow = _check_flow(flow, (h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    tx = np.rint(xx + flow[..., 0]).astype(np.int64)
    ty = np.rint(yy + flow[..., 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    warped = np.zeros(frame.shape, np.float64)
    known = np.zeros((h, w), bool)
    warped[ty[inside], tx[inside]] = frame[yy[inside], xx[inside]]  # later sources win
    known[ty[inside], tx[inside]] = True
    return warped, known


def warp_errors(
    video: np.ndarray, flow_fn: FlowFn = color_dis_flow
) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive pair (t, t+1), as in the authors' ``mawe.py``: the warp error W_t
    and the mean flow magnitude OF_t.

    With f = ``flow_fn(frame_t, frame_t+1)``, frame t is moved along f by
    :func:`forward_warp`; W_t is the mean squared difference from frame t+1 over the known
    pixels and all channels, in levels squared (0 when no pixel is known), and OF_t the
    mean over all pixels of |f| in pixels. Returns ``(W, OF)``, each (T-1,) float64.
    """
    video = _check_video(video)
    n = video.shape[0] - 1
    errors, magnitudes = np.empty(n), np.empty(n)
    for t in range(n):
        f0, f1 = video[t], video[t + 1]
        flow = _check_flow(flow_fn(f0, f1), f0.shape[:2])
        warped, known = forward_warp(f0, flow)
        diff = (f1.astype(np.float64) - warped)[known]
        errors[t] = float(np.mean(diff**2)) if diff.size else 0.0
        magnitudes[t] = float(np.mean(np.linalg.norm(flow, axis=-1)))
    return errors, magnitudes


def mawe(
    video: np.ndarray,
    c: float = MAWE_COEFF,
    flow_fn: FlowFn = color_dis_flow,
    min_motion: float = MIN_MOTION,
) -> dict[str, float]:
    """Motion-aware warp error (MAWE) of StreamingT2V, as the authors compute it; lower
    is better.

    ``mawe = mean_t W_t / (c * max(OF_t, min_motion))`` over consecutive frame pairs,
    with W_t and OF_t from :func:`warp_errors` and ``c`` = 9.5, the authors' default.
    Dividing by the motion makes a pair that changes without moving score badly. The
    authors' script resizes videos to 720 x 720 and takes RAFT's flow, which is never
    exactly 0; here the video keeps its size and DIS returns 0 on identical frames (the
    world's clips hold still while the object is out of view), hence the floor
    ``min_motion`` px: identical frames score 0 and a change without flow scores
    W_t / (c * min_motion). As with the authors' script, a frozen video scores 0, so read
    ``flow_magnitude`` beside it. Values compare between videos of the same size only.

    Returns ``{"mawe", "warp_error", "flow_magnitude"}``, the last two the means of W_t
    (levels squared) and OF_t (pixels) over the pairs (see :func:`mawe_score`).
    """
    _check_mawe_args(c, min_motion)
    errors, magnitudes = warp_errors(video, flow_fn=flow_fn)
    return mawe_score(errors, magnitudes, c=c, min_motion=min_motion)


def _check_mawe_args(c: float, min_motion: float) -> None:
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    if not min_motion > 0:
        raise ValueError(f"min_motion must be > 0 px, got {min_motion}")


def mawe_score(
    errors: np.ndarray,
    magnitudes: np.ndarray,
    c: float = MAWE_COEFF,
    min_motion: float = MIN_MOTION,
) -> dict[str, float]:
    """:func:`mawe` from the per-pair warp errors and flow magnitudes of
    :func:`warp_errors` (so that other flow metrics can share one flow computation)."""
    _check_mawe_args(c, min_motion)
    errors = np.asarray(errors, np.float64)
    magnitudes = np.asarray(magnitudes, np.float64)
    if errors.ndim != 1 or errors.shape != magnitudes.shape or not errors.size:
        raise ValueError(
            f"errors and magnitudes must be (T-1,) of one length >= 1, got shapes "
            f"{errors.shape} and {magnitudes.shape}"
        )
    score = np.mean(errors / (c * np.maximum(magnitudes, min_motion)))
    return {
        "mawe": float(score),
        "warp_error": float(errors.mean()),
        "flow_magnitude": float(magnitudes.mean()),
    }


def seam_flow_std(
    video: np.ndarray,
    seams: Sequence[int],
    window: int = 2,
    flow_fn: FlowFn = color_dis_flow,
    magnitudes: np.ndarray | None = None,
) -> float:
    """Mean over chunk seams of the standard deviation of the flow magnitude around each.

    A seam ``s`` is the first frame of a new chunk (0 < s < T); its window holds the mean
    flow magnitudes of the pairs (t, t+1) for t in [s-1-window, s-1+window], clipped to
    the valid pairs 0 .. T-2. A jump in motion at the seam raises the std; smooth motion
    keeps it low. Seams outside (0, T) are skipped; the flow of each pair is computed once,
    or not at all when ``magnitudes`` (T-1,) of :func:`warp_errors` are given.
    """
    video = _check_video(video)
    window = _check_int("window", window, 0)
    T = video.shape[0]
    valid = _valid_seams(seams, T)
    magnitude: dict[int, float] = {}
    if magnitudes is not None:
        magnitudes = np.asarray(magnitudes, np.float64)
        if magnitudes.shape != (T - 1,):
            raise ValueError(f"magnitudes must be ({T - 1},), one per pair, got {magnitudes.shape}")
        magnitude = dict(enumerate(magnitudes.tolist()))

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


# --- text alignment -----------------------------------------------------------------


def text_alignment(
    video: np.ndarray,
    caption: str,
    frame_encoder: FrameEncoder,
    every: int = 4,
    batch_size: int = 64,
) -> float:
    """How well the frames match a caption, by a frame encoder's attribute heads, in [0, 1].

    The caption is parsed with :func:`longseq.data.videoworld.parse_caption`, which reads
    the shape, motion and speed a caption names (appearance is never in a caption); for
    frames 0, ``every``, 2 * ``every``, ... the encoder's softmax probability of the class
    the caption names is averaged over those frames and over the attributes that both the
    caption names and the encoder knows (attribute and class name), so an encoder with a
    shape head only scores the shape. Higher is better. Frames go through the encoder
    ``batch_size`` at a time, without gradients.
    """
    import torch

    video = _check_video(video, min_frames=1)
    every = _check_int("every", every, 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    named = vw.parse_caption(caption)
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


# --- prompt fidelity ----------------------------------------------------------------

TRACK_LAG = 4  # frames between the displacements whose turn angles describe the motion
FIDELITY_BLOCK = 8  # frames per block of the fidelity curves (the base model's chunk)


def object_track(video: np.ndarray, margin: float = COLOR_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The object's centre per frame, by the world's luma rule (object pixels have luma
    above ``LUMA_SPLIT + margin``): centres (T, 2) as (x, y) in frame widths (the mean
    position of the object pixels, weighted by how far their luma exceeds the threshold;
    NaN without object pixels) and the count of object pixels per frame (T,)."""
    video = _check_video(video, min_frames=1)
    margin = _check_margin(margin)
    lum = video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    w = np.clip(lum - (vw.LUMA_SPLIT + margin), 0, None)
    count = (w > 0).sum(axis=(1, 2))
    total = w.sum(axis=(1, 2))
    _, h, wd = lum.shape
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(wd) + 0.5) / wd
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.einsum("thw,w->t", w, xs) / total
        cy = np.einsum("thw,h->t", w, ys) / total
    centres = np.where(total[:, None] > 0, np.stack([cx, cy], 1), np.nan)
    return centres.astype(np.float64), count


def track_steps(centres: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Distance (T - 1,) the centre moves from each frame to the next, in frame widths;
    NaN unless the object is visible in both."""
    d = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    return np.where(visible[1:] & visible[:-1], d, np.nan)


def track_features(centres: np.ndarray, visible: np.ndarray, lag: int = TRACK_LAG) -> np.ndarray:
    """Five numbers that describe how a track moves (the motion head's input), from the
    frames where the object is visible: the mean absolute turn between consecutive
    ``lag``-frame displacements (radians), the absolute mean signed turn (an orbit turns
    one way), the share of turns above 0.5 rad (bounces turn sharply), the coefficient
    of variation of the per-frame steps (a wandering object changes speed) and the
    vertical share of the motion (mean |dy| / (mean |dx| + mean |dy|)). NaN where fewer
    than 3 turns or 3 steps are seen."""
    steps = track_steps(centres, visible)
    steps = steps[np.isfinite(steps)]
    t = np.arange(len(centres) - 2 * lag)
    ok = visible[t] & visible[t + lag] & visible[t + 2 * lag]
    d1 = centres[t + lag] - centres[t]
    d2 = centres[t + 2 * lag] - centres[t + lag]
    moving = (np.linalg.norm(d1, axis=1) > 1e-6) & (np.linalg.norm(d2, axis=1) > 1e-6)
    ok &= moving
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    turn = np.arctan2(cross, (d1 * d2).sum(1))[ok]
    if len(turn) < 3 or len(steps) < 3 or steps.mean() <= 0:
        return np.full(5, np.nan)
    pairs = visible[1:] & visible[:-1]
    dx, dy = np.abs(np.diff(centres, axis=0)[pairs]).mean(0)
    return np.array(
        [
            np.abs(turn).mean(),
            abs(turn.mean()),
            (np.abs(turn) > 0.5).mean(),
            steps.std() / steps.mean(),
            dy / (dx + dy),
        ]
    )


@dataclass
class PromptFidelity:
    """What :func:`prompt_fidelity` reads in a video of T frames against its caption.

    Per frame: ``visible`` (T,) whether at least half the object is in view (object pixels
    at the classifier's size >= its ``visible_pixels``), ``object_pixels`` (T,) the count
    of object pixels (any object at all: >= ``MIN_OBJECT_PIXELS``), ``shape`` (T,) the classifier's
    shape (None where not visible), ``shape_correct`` (T,) 1.0 / 0.0 where visible, NaN
    elsewhere, ``steps`` (T - 1,) the track's per-frame motion in frame widths (NaN unless
    visible in both frames). Per video: ``speed`` and ``motion`` read from the track (None
    when too little of it is seen) and ``target`` (the caption's shape, motion, speed).
    """

    visible: np.ndarray
    object_pixels: np.ndarray
    shape: list[str | None]
    shape_correct: np.ndarray
    steps: np.ndarray
    speed: str | None
    motion: str | None
    target: dict[str, str]
    speed_split: float

    def blocks(self, size: int = FIDELITY_BLOCK) -> dict[str, np.ndarray]:
        """Per block of ``size`` frames (the last may be shorter): ``visible`` (share of
        frames in view), ``shape_accuracy`` (among visible frames; NaN without any),
        ``mean_step`` (frame widths per frame; NaN without a visible pair) and
        ``speed_correct`` (the block's mean step on the caption's side of the split)."""
        size = _check_int("size", size, 1)
        n = len(self.visible)
        starts = range(0, n, size)
        vis = np.array([self.visible[s : s + size].mean() for s in starts])
        acc = np.array([_nanmean(self.shape_correct[s : s + size]) for s in starts])
        step = np.array([_nanmean(self.steps[s : s + size - 1]) for s in starts])
        want_quick = self.target.get("speed") == "quickly"
        speed_ok = np.where(np.isfinite(step), (step > self.speed_split) == want_quick, np.nan)
        return {"visible": vis, "shape_accuracy": acc, "mean_step": step, "speed_correct": speed_ok}

    def summary(self, start: int = 0, stop: int | None = None) -> dict[str, float]:
        """Frames ``start:stop``: share visible, share with any object pixels
        (``any_object``), shape accuracy among visible frames, mean step; over the whole
        video: speed and motion agreement (1.0 / 0.0, NaN when not read or not named)."""
        sl = slice(start, stop)
        n = len(self.visible[sl])
        return {
            "visible": float(self.visible[sl].mean()) if n else math.nan,
            "any_object": float((self.object_pixels[sl] >= MIN_OBJECT_PIXELS).mean())
            if n
            else math.nan,
            "shape_accuracy": _nanmean(self.shape_correct[sl]),
            "mean_step": _nanmean(self.steps[sl]),
            "speed_correct": _agree(self.speed, self.target.get("speed")),
            "motion_correct": _agree(self.motion, self.target.get("motion")),
        }


def _agree(read: str | None, named: str | None) -> float:
    return math.nan if read is None or named is None else float(read == named)


def prompt_fidelity(
    video: np.ndarray, caption: str, classifier: AttributeCNN, batch_size: int = 256
) -> PromptFidelity:
    """Does a video show what its caption names? Read with an attribute classifier
    (:class:`longseq.models.attribute_cnn.AttributeCNN`, shipped as
    ``fidelity-classifier``), on frames resized to its size.

    The object is visible in a frame when it has at least ``visible_pixels`` object
    pixels (the world's luma rule, :func:`object_track`): about half of it in view. The
    shape is the classifier's answer on visible frames. The speed is "quickly" when the
    mean per-frame step of the track exceeds ``speed_split``; the motion is the motion
    head's answer on :func:`track_features`. The caption is parsed with
    :func:`longseq.data.videoworld.parse_caption` and must name a shape.
    """
    import torch

    video = _check_video(video, min_frames=1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = vw.parse_caption(caption)
    if "shape" not in target:
        raise ValueError(f"caption {caption!r} names no shape (one of {', '.join(vw.SHAPES)})")
    cfg = classifier.config
    if target["shape"] not in cfg.shapes:
        raise ValueError(f"the classifier knows the shapes {cfg.shapes}, not {target['shape']!r}")
    if video.shape[1:3] != (cfg.size, cfg.size):
        from longseq.media import resize_video

        video = resize_video(video, (cfg.size, cfg.size))
    centres, count = object_track(video)
    visible = count >= cfg.visible_pixels
    param = next(classifier.parameters())
    pred = np.full(len(video), -1)
    idx = np.flatnonzero(visible)
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            rows = idx[s : s + batch_size]
            x = classifier.luma(video[rows]).to(param.device, param.dtype)
            pred[rows] = classifier(x).argmax(-1).cpu().numpy()
    shape = [cfg.shapes[i] if i >= 0 else None for i in pred]
    correct = np.where(visible, pred == cfg.shapes.index(target["shape"]), np.nan)
    steps = track_steps(centres, visible)
    speed = None
    if np.isfinite(steps).sum() >= 3:
        speed = "quickly" if np.nanmean(steps) > cfg.speed_split else "slowly"
    feats = track_features(centres, visible)
    motion = None
    if np.isfinite(feats).all():
        with torch.no_grad():
            f = torch.as_tensor(feats, dtype=param.dtype, device=param.device)[None]
            motion = cfg.motions[int(classifier.motion_logits(f).argmax())]
    return PromptFidelity(
        visible=visible,
        object_pixels=count,
        shape=shape,
        shape_correct=correct.astype(np.float64),
        steps=steps,
        speed=speed,
        motion=motion,
        target=target,
        speed_split=cfg.speed_split,
    )
