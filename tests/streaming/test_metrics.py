import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from longseq.data.videoworld import COLORS, SHAPES, clip_for_caption, sample_clip  # noqa: E402
from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig  # noqa: E402
from longseq.streaming.metrics import (  # noqa: E402
    mawe,
    scene_cuts,
    seam_flow_std,
    text_alignment,
    warp_errors,
)

CAPTION_A = "a red circle bounces quickly over a striped gray background"
CAPTION_B = "a yellow square wanders slowly over a checkered teal background"


def texture(size: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth, high-contrast random RGB texture that optical flow can lock onto."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)), (0, 0), 2.0)
    return np.clip((noise - noise.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def panning(offsets: list[tuple[int, int]], size: int = 64) -> np.ndarray:
    """Windows of a texture at the given (dy, dx) offsets: a camera pan, content moves by
    minus the window's step."""
    big = texture()
    return np.stack([big[16 + dy : 16 + dy + size, 16 + dx : 16 + dx + size] for dy, dx in offsets])


def constant_pan(n: int, step: tuple[int, int] = (1, 2)) -> np.ndarray:
    return panning([(t * step[0], t * step[1]) for t in range(n)])


# --- scene cuts ---------------------------------------------------------------------


def test_scene_cuts_none_in_one_clip_and_one_at_a_hard_cut():
    a = clip_for_caption(CAPTION_A, seed=0).render(60, 32)
    b = clip_for_caption(CAPTION_B, seed=1).render(60, 32)
    assert scene_cuts(a) == 0
    assert scene_cuts(b) == 0
    assert scene_cuts(np.concatenate([a[:30], b[30:]])) == 1


def test_scene_cuts_counts_boundaries_and_respects_min_scene_len():
    a = clip_for_caption(CAPTION_A, seed=0).render(30, 32)
    b = clip_for_caption(CAPTION_B, seed=1).render(30, 32)
    video = np.concatenate([a, b, a])  # cuts at frames 30 and 60: three scenes, two cuts
    assert scene_cuts(video) == 2
    assert scene_cuts(video, min_scene_len=40) == 1


def test_scene_cuts_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        scene_cuts(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        scene_cuts(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        scene_cuts(np.zeros((4, 32, 32), np.uint8))


# --- warp error and MAWE ------------------------------------------------------------


def test_warp_error_of_a_pure_translation_is_near_zero_and_magnitude_is_the_shift():
    video = constant_pan(6, step=(1, 2))
    errors, magnitudes = warp_errors(video)
    assert errors.shape == magnitudes.shape == (5,)
    raw = ((video[1:].astype(float) - video[:-1]) ** 2).mean(axis=(1, 2, 3))
    # only the strip of content entering the frame cannot be warped back
    assert np.all(errors < 0.05 * raw)
    np.testing.assert_allclose(magnitudes, np.hypot(1, 2), atol=0.15)


def test_warp_errors_with_zero_flow_is_the_frame_difference():
    video = constant_pan(4)
    errors, magnitudes = warp_errors(video, flow_fn=lambda f0, f1: np.zeros((*f0.shape[:2], 2)))
    raw = ((video[1:].astype(float) - video[:-1]) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(errors, raw)
    np.testing.assert_array_equal(magnitudes, 0.0)


def test_warp_errors_rejects_a_flow_of_the_wrong_shape():
    with pytest.raises(ValueError, match="flow_fn"):
        warp_errors(constant_pan(3), flow_fn=lambda f0, f1: np.zeros((4, 4, 2)))


def test_mawe_punishes_a_still_video_and_scores_smooth_motion_finite():
    moving = constant_pan(6)
    still = np.repeat(moving[:1], 6, axis=0)
    out = mawe(moving)
    assert set(out) == {"warp_error", "flow_magnitude", "mawe"}
    assert np.isfinite(out["mawe"])
    assert out["mawe"] == pytest.approx(out["warp_error"] / out["flow_magnitude"])
    assert mawe(moving, c=2.0)["mawe"] == pytest.approx(out["mawe"] / 2)
    assert mawe(still)["mawe"] == float("inf")


def test_mawe_is_worse_for_an_inconsistent_video():
    moving = constant_pan(8)
    flicker = moving.copy()
    flicker[1::2] = 255 - flicker[1::2]  # same motion, every other frame inverted
    assert mawe(flicker)["mawe"] > 3 * mawe(moving)["mawe"]


def test_mawe_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        mawe(constant_pan(1))
    with pytest.raises(ValueError, match="c must be"):
        mawe(constant_pan(3), c=0.0)


# --- seam flow std ------------------------------------------------------------------


def test_seam_flow_std_is_larger_with_a_jump_at_the_seam():
    n, seam = 12, 6
    smooth = [(t, 2 * t) for t in range(n)]
    jump = [(t, 2 * t + (8 if t >= seam else 0)) for t in range(n)]
    s_smooth = seam_flow_std(panning(smooth), [seam])
    s_jump = seam_flow_std(panning(jump), [seam])
    assert s_smooth < 0.2
    assert s_jump > 1.0
    assert s_jump > 5 * s_smooth


def test_seam_flow_std_computes_each_pair_once_and_clips_windows():
    calls = []

    def flow(f0, f1):
        calls.append(1)
        return np.full((*f0.shape[:2], 2), float(len(calls)))  # pair k (k-th call) -> k

    video = np.zeros((10, 4, 4, 3), np.uint8)
    # seams 4 and 5 with window 2 need pairs 1..6 (overlapping windows), each once
    seam_flow_std(video, [4, 5], window=2, flow_fn=flow)
    assert len(calls) == 6
    calls.clear()
    # seam 1: pairs [-2, 2] clipped to [0, 2]; magnitudes sqrt(2) * (1, 2, 3)
    got = seam_flow_std(video, [1], window=2, flow_fn=flow)
    assert got == pytest.approx(np.std(np.sqrt(2) * np.arange(1, 4)))


def test_seam_flow_std_skips_invalid_seams_and_rejects_none_valid():
    video = constant_pan(6)
    assert seam_flow_std(video, [0, 3, 6, 99]) == pytest.approx(seam_flow_std(video, [3]))
    with pytest.raises(ValueError, match="no valid seam"):
        seam_flow_std(video, [0, 6])
    with pytest.raises(ValueError, match="no valid seam"):
        seam_flow_std(video, [])


# --- text alignment -----------------------------------------------------------------


def fixed_encoder(shape: str, color: str) -> FrameEncoder:
    """A frame encoder that predicts ``shape`` and ``color`` whatever the frame."""
    torch.manual_seed(0)
    config = FrameEncoderConfig(
        size=16, channels=[8, 8], dim=8, attributes={"shape": list(SHAPES), "color": list(COLORS)}
    )
    model = FrameEncoder(config)
    with torch.no_grad():
        for key, name in (("shape", shape), ("color", color)):
            head = model.heads[key]
            head.weight.zero_()
            head.bias.zero_()
            head.bias[config.attributes[key].index(name)] = 30.0
    return model


def test_text_alignment_is_one_for_the_predicted_caption_and_zero_for_another():
    video = sample_clip(0).render(9, 32)
    model = fixed_encoder("circle", "red")
    assert text_alignment(video, CAPTION_A, model) == pytest.approx(1.0, abs=1e-6)
    assert text_alignment(video, CAPTION_B, model) == pytest.approx(0.0, abs=1e-6)
    # half right: the shape matches, the colour does not
    half = "a blue circle bounces quickly over a plain gray background"
    assert text_alignment(video, half, model, every=1, batch_size=2) == pytest.approx(0.5, abs=1e-6)


def test_text_alignment_averages_over_frames():
    model = fixed_encoder("circle", "red")
    video = np.zeros((8, 16, 16, 3), np.uint8)
    with torch.no_grad():
        model.heads["shape"].weight.zero_()
        model.heads["shape"].bias.zero_()  # shape: uniform over three classes
    got = text_alignment(video, "a red circle", model)
    assert got == pytest.approx((1.0 + 1 / 3) / 2, abs=1e-6)


def test_text_alignment_needs_an_attribute_the_encoder_knows():
    model = fixed_encoder("circle", "red")
    video = sample_clip(0).render(4, 32)
    with pytest.raises(ValueError, match="names none"):
        text_alignment(video, "something bounces quickly over a plain background", model)
    with pytest.raises(ValueError, match="every"):
        text_alignment(video, CAPTION_A, model, every=0)
