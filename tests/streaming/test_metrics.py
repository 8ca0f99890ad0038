import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from longseq.data import videoworld as vw  # noqa: E402
from longseq.flow import color_dis_flow, dis_flow  # noqa: E402
from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig  # noqa: E402
from longseq.streaming.metrics import (  # noqa: E402
    MAWE_COEFF,
    appearance,
    appearance_drift,
    forward_warp,
    frame_changes,
    mawe,
    mawe_score,
    palette_error,
    scene_cuts,
    seam_flow_std,
    seam_jumps,
    text_alignment,
    warp_errors,
    world_palette,
)

CAPTION = "a square bounces quickly"


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


def constant_flow(dx: float, dy: float):
    return lambda f0, f1: np.broadcast_to(np.array([dx, dy]), (*f0.shape[:2], 2)).copy()


def recolour(video: np.ndarray, scale) -> np.ndarray:
    return np.clip(np.round(video * np.asarray(scale, float)), 0, 255).astype(np.uint8)


# --- seam jumps ---------------------------------------------------------------------


def test_frame_changes_is_the_mean_absolute_difference_in_levels():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    expected = [
        np.mean(
            [
                abs(int(a) - int(b))
                for a, b in zip(video[t + 1].ravel(), video[t].ravel(), strict=True)
            ]
        )
        for t in range(4)
    ]
    np.testing.assert_allclose(frame_changes(video), expected)


def test_seam_jumps_by_hand():
    # flat frames: the change of pair t is |value[t+1] - value[t]|
    values = [0, 1, 2, 12, 13, 15, 16, 36, 37]  # pairs change 1 1 10 1 2 1 20 1
    video = np.repeat(np.array(values, np.uint8)[:, None, None, None], 3, axis=3)
    video = np.broadcast_to(video, (len(values), 4, 4, 3))
    out = seam_jumps(video, [3, 7])  # pairs 2 and 6
    within = [1, 1, 1, 2, 1, 1]
    assert out["seam_change"] == pytest.approx(15.0)
    assert out["within_change"] == pytest.approx(np.mean(within))
    assert out["seam_jump_ratio"] == pytest.approx(15.0 / np.mean(within))
    assert out["seam_share_above_p95"] == 1.0 and out["n_seams"] == 2
    # seams 2, 3, 7 (pairs changing 1, 10, 20); within 1 1 2 1 1, whose 95th percentile
    # is 1.8 (linear interpolation): two of the three seams are above it
    out = seam_jumps(video, [2, 3, 7])
    assert out["seam_jump_ratio"] == pytest.approx((31 / 3) / 1.2)
    assert out["seam_share_above_p95"] == pytest.approx(2 / 3)


def test_seam_jumps_see_chunks_that_recolour_the_scene_and_not_a_real_clip():
    clip = vw.clip_for_caption(CAPTION, seed=1)
    real = clip.render(64, 16)
    seams = list(range(8, 64, 8))
    ok = seam_jumps(real, seams)
    assert 0.5 < ok["seam_jump_ratio"] < 1.5 and ok["seam_share_above_p95"] <= 2 / 7
    chunks = [recolour(real[s : s + 8], 1 + 0.15 * (k % 2)) for k, s in enumerate(range(0, 64, 8))]
    bad = seam_jumps(np.concatenate(chunks), seams)
    assert bad["seam_jump_ratio"] > 3 and bad["seam_share_above_p95"] == 1.0


def test_seam_jumps_skip_invalid_seams_and_name_bad_ones():
    video = constant_pan(6)
    assert seam_jumps(video, [0, 3, 3, 6, 99]) == seam_jumps(video, [3])
    with pytest.raises(ValueError, match="no valid seam"):
        seam_jumps(video, [0, 6])
    with pytest.raises(ValueError, match="no pair within a chunk"):
        seam_jumps(video[:3], [1, 2])
    with pytest.raises(ValueError, match="frame indices"):
        seam_jumps(video, ["a"])


# --- appearance ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("seed", range(4))
def test_appearance_reads_the_drawn_colours(size, seed):
    clip = vw.sample_clip(seed, "test")
    video = clip.render(80, size)
    a = appearance(video)
    read = ~np.isnan(a.object_color[:, 0])
    assert read[0] and read.sum() > 20
    np.testing.assert_array_equal(
        a.object_color[read], [vw.COLORS[clip.attrs["color"]]] * read.sum()
    )
    # no object pixels counted while the object is out of view
    assert (a.object_pixels[clip.visibility(80) == 0] == 0).all()
    bg = np.array(vw.BG_COLORS[clip.attrs["bg_color"]], float)
    if clip.attrs["pattern"] == "plain":  # within half a level (blended pixels at the border)
        np.testing.assert_allclose(a.background_color, bg[None].repeat(80, 0), atol=0.5)
    else:  # the mean of the two tones, whatever the object hides
        tones = (1 + vw.PATTERN_SHADE) / 2 * bg
        assert np.abs(a.background_color - tones).max() < 0.15 * bg.max()


def test_world_palette_holds_every_drawn_colour():
    objects, backgrounds = world_palette(16)
    np.testing.assert_array_equal(objects, list(vw.COLORS.values()))
    assert backgrounds.shape == (len(vw.BG_COLORS) * len(vw.PATTERNS), 3)
    plain = backgrounds[[i * len(vw.PATTERNS) + vw.PATTERNS.index("plain") for i in range(4)]]
    np.testing.assert_array_equal(plain, list(vw.BG_COLORS.values()))
    assert not backgrounds.flags.writeable


@pytest.mark.parametrize("size", [16, 32])
def test_real_clips_score_near_zero_on_the_palette_gate(size):
    for bg_color in vw.BG_COLORS:
        for k, pattern in enumerate(vw.PATTERNS):
            colour = list(vw.COLORS)[(k + len(bg_color)) % len(vw.COLORS)]
            clip = vw.clip_for_caption(
                "a cross wanders quickly", seed=k, color=colour, bg_color=bg_color, pattern=pattern
            )
            out = palette_error(clip.render(30, size)).summary()
            assert out["palette_error"] <= 1.0, (bg_color, pattern, out)


def test_palette_error_measures_a_colour_shift():
    video = vw.clip_for_caption(CAPTION, seed=2).render(30, 32)
    shifted = palette_error(np.clip(video.astype(int) + 3, 0, 255).astype(np.uint8)).summary()
    assert shifted["object_palette_error"] == pytest.approx(3.0)
    # the mean of a patterned background moves with what the object hides: about 3
    assert 2.0 < shifted["background_palette_error"] < 3.5
    for scale in ([0.8, 1.0, 1.2], [1.2, 0.85, 1.0]):
        assert palette_error(recolour(video, scale)).summary()["palette_error"] > 6


def test_drift_is_zero_on_a_real_clip_and_finds_its_reappearances():
    clip = vw.clip_for_caption("a triangle bounces quickly", seed=0)
    video = clip.render(120, 32)
    d = appearance_drift(video)
    s = d.summary()
    assert d.anchor_frame == 0
    assert s["object_drift"] == 0 and s["reappear_drift"] == 0 and s["background_drift"] < 1.5
    # the world's returns: visible after >= MIN_HIDDEN frames fully out of view
    vis = clip.visibility(120) > 0
    returns = [r for r in range(8, 120) if vis[r] and not vis[r - 8 : r].any()]
    assert len(returns) >= 1 and len(d.reappearances) == len(returns)
    for found, true in zip(d.reappearances, returns, strict=True):
        assert 0 <= found - true <= 4  # a sliver at the edge is not counted as in view
    assert 0.3 < s["object_visible"] < 1


def test_drift_after_a_reappearance_in_another_colour():
    caption = "a circle bounces quickly"
    a = vw.clip_for_caption(caption, seed=0, color="yellow", bg_color="navy")
    b = vw.clip_for_caption(caption, seed=0, color="cyan", bg_color="navy")
    vis = a.visibility(120)
    hidden = int(np.argmax(vis == 0))  # the object leaves; it comes back in the other colour
    video = np.concatenate([a.render(hidden, 32), b.render(120 - hidden, 32, start=hidden)])
    d = appearance_drift(video)
    jump = np.abs(np.subtract(vw.COLORS["yellow"], vw.COLORS["cyan"])).mean()
    assert d.reappearances and d.reappear_drift[0] == pytest.approx(jump)
    read = ~np.isnan(d.object_drift)
    np.testing.assert_allclose(d.object_drift[read & (np.arange(120) < hidden)], 0)
    np.testing.assert_allclose(d.object_drift[read & (np.arange(120) > hidden)], jump)
    assert d.summary()["background_drift"] == pytest.approx(0, abs=0.01)
    # a window of 1 and a longer minimum hidden stretch
    assert appearance_drift(video, window=1).reappear_drift[0] == pytest.approx(jump)
    assert appearance_drift(video, min_hidden=60).reappearances == []
    assert np.isnan(appearance_drift(video, min_hidden=60).summary()["reappear_drift"])


def test_drift_follows_a_background_that_darkens():
    clip = vw.clip_for_caption(CAPTION, seed=3, pattern="plain")
    video = clip.render(20, 16)
    dark = vw.luma(video[10:]) < vw.LUMA_SPLIT
    video[10:][dark] = np.round(video[10:][dark] * 0.8).astype(np.uint8)
    d = appearance_drift(video)
    bg = np.array(vw.BG_COLORS[clip.attrs["bg_color"]])
    np.testing.assert_allclose(d.background_drift[:10], 0, atol=0.01)
    np.testing.assert_allclose(
        d.background_drift[10:], np.abs(np.round(bg * 0.8) - bg).mean(), atol=0.3
    )
    np.testing.assert_allclose(d.object_drift[~np.isnan(d.object_drift)], 0)


def test_a_video_without_an_object_has_no_anchor():
    video = np.full((6, 16, 16, 3), 40, np.uint8)
    d = appearance_drift(video)
    assert d.anchor_frame == -1 and np.isnan(d.object_drift).all()
    s = d.summary()
    assert np.isnan(s["object_drift"]) and s["object_visible"] == 0 and s["background_drift"] == 0


def test_appearance_rejects_bad_input():
    video = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="margin"):
        appearance(video, margin=120)
    with pytest.raises(ValueError, match="min_pixels"):
        appearance(video, min_pixels=0)
    with pytest.raises(ValueError, match="min_hidden"):
        appearance_drift(video, min_hidden=0)
    with pytest.raises(ValueError, match="square"):
        palette_error(np.zeros((3, 8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        appearance(video.astype(np.float32))


# --- scene cuts ---------------------------------------------------------------------


def test_scene_cuts_none_in_real_clips():
    for seed in range(3):
        assert scene_cuts(vw.sample_clip(seed, "test").render(120, 16)) == 0


def test_scene_cuts_find_every_seam_between_different_clips():
    clips = [vw.sample_clip(seed) for seed in range(20, 26)]
    video = np.concatenate([c.render(8, 16, start=40) for c in clips])  # seams every 8 frames
    assert scene_cuts(video) == 5
    assert scene_cuts(video, min_scene_len=15) < 5  # the old default hid seams


def test_scene_cuts_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        scene_cuts(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        scene_cuts(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        scene_cuts(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="min_scene_len"):
        scene_cuts(np.zeros((4, 32, 32, 3), np.uint8), min_scene_len=-1)


# --- colour-aware flow --------------------------------------------------------------


def isoluminant_pair(shift: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A red square moving right by ``shift`` px over a gray of the same luma."""
    red, gray = (220, 30, 30), (87, 87, 87)  # both luma 87 (OpenCV's RGB2GRAY)
    frames = []
    for x in (20, 20 + shift):
        f = np.zeros((64, 64, 3), np.uint8) + np.array(gray, np.uint8)
        f[20:40, x : x + 16] = red
        frames.append(f)
    return frames[0], frames[1]


def test_color_flow_sees_motion_between_colours_of_equal_luma():
    import cv2

    f0, f1 = isoluminant_pair(3)
    g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (f0, f1))
    assert (g0 == g1).all()  # nothing moves in grayscale
    assert np.abs(dis_flow(f0, f1)).max() < 0.1
    inside = color_dis_flow(f0, f1)[24:36, 24:34]
    assert np.abs(np.median(inside[..., 0]) - 3) < 0.5 and np.abs(np.median(inside[..., 1])) < 0.5


def test_color_flow_matches_luma_flow_on_a_gray_translation():
    video = constant_pan(2)
    gray = np.repeat(video.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    flow = color_dis_flow(gray[0], gray[1])
    np.testing.assert_array_equal(flow, dis_flow(gray[0], gray[1]))
    assert np.abs(np.median(flow[16:-16, 16:-16], axis=(0, 1)) - [-2, -1]).max() < 0.3


def test_color_flow_of_identical_flat_frames_is_zero():
    frame = np.full((16, 16, 3), 90, np.uint8)
    np.testing.assert_array_equal(color_dis_flow(frame, frame), 0)
    with pytest.raises(ValueError, match="preset"):
        color_dis_flow(frame, frame, preset="slow")


# --- warp error and MAWE ------------------------------------------------------------


def test_forward_warp_moves_pixels_and_marks_where_they_land():
    frame = np.arange(5 * 6 * 1).reshape(5, 6, 1).astype(np.uint8)
    warped, known = forward_warp(frame, constant_flow(2, 1)(frame, frame))
    np.testing.assert_array_equal(warped[1:, 2:], frame[:-1, :-2])
    assert known[1:, 2:].all() and not known[0].any() and not known[:, :2].any()
    assert (warped[~known] == 0).all()


def test_forward_warp_rounds_half_to_even_and_the_last_pixel_wins():
    frame = np.arange(8).reshape(1, 8, 1).astype(np.uint8)
    # x + 0.5 rounds to 0, 2, 2, 4, 4, 6, 6, 8 (outside): x=2 lands after x=1 on 2
    warped, known = forward_warp(frame, constant_flow(0.5, 0)(frame, frame))
    np.testing.assert_array_equal(known[0], [1, 0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(warped[0, [0, 2, 4, 6], 0], [0, 2, 4, 6])
    # everything onto pixel (0, 0): the last pixel in row-major order wins
    square = np.arange(9).reshape(3, 3, 1).astype(np.uint8)
    flow = -np.stack(np.meshgrid(np.arange(3), np.arange(3)), axis=-1).astype(float)
    warped, known = forward_warp(square, flow)
    assert warped[0, 0, 0] == 8 and known.sum() == 1


def test_warp_error_is_zero_on_a_known_translation_and_counts_known_pixels_only():
    base = texture(64)
    video = np.stack([base, np.roll(base, (1, 2), axis=(0, 1))])
    video[1, 0, :] = 255  # the uncovered row and column differ, but are not known
    video[1, :, :2] = 0
    errors, magnitudes = warp_errors(video, flow_fn=constant_flow(2, 1))
    np.testing.assert_allclose(errors, 0)
    np.testing.assert_allclose(magnitudes, np.hypot(2, 1))
    # zero flow: every pixel is known, the error is the mean squared frame difference
    errors, _ = warp_errors(video, flow_fn=constant_flow(0, 0))
    np.testing.assert_allclose(errors, np.mean((video[1].astype(float) - video[0]) ** 2))


def test_mawe_is_the_mean_of_per_pair_ratios_with_the_authors_coefficient():
    video = constant_pan(4, step=(0, 2))
    flows = iter([(2.0, 0.0), (0.5, 0.0), (0.0, 0.0)])
    fixed = {}

    def flow_fn(f0, f1):
        key = f0.tobytes()
        if key not in fixed:
            fixed[key] = constant_flow(*next(flows))(f0, f1)
        return fixed[key]

    errors, magnitudes = warp_errors(video, flow_fn)
    out = mawe(video, flow_fn=flow_fn)
    floor = np.maximum(magnitudes, 0.01)
    assert out["mawe"] == pytest.approx(np.mean(errors / (MAWE_COEFF * floor)))
    assert out["mawe"] != pytest.approx(errors.mean() / (MAWE_COEFF * magnitudes.mean()))
    assert (out["warp_error"], out["flow_magnitude"]) == (errors.mean(), magnitudes.mean())
    assert mawe(video, c=1.0, flow_fn=flow_fn)["mawe"] == pytest.approx(9.5 * out["mawe"])
    assert mawe_score(errors, magnitudes) == out


def test_mawe_of_still_and_flickering_frames():
    still = np.repeat(constant_pan(1), 5, axis=0)
    out = mawe(still)
    assert out == {"mawe": 0.0, "warp_error": 0.0, "flow_magnitude": 0.0}
    flicker = still.copy()
    flicker[1::2] = 255 - flicker[1::2]
    zero = constant_flow(0, 0)
    w = np.mean((255 - 2 * still[0].astype(float)) ** 2)
    got = mawe(flicker, flow_fn=zero, min_motion=0.5)["mawe"]
    assert got == pytest.approx(w / (MAWE_COEFF * 0.5))


def test_mawe_is_worse_for_an_inconsistent_video():
    moving = constant_pan(8)
    flicker = moving.copy()
    flicker[1::2] = 255 - flicker[1::2]  # same motion, every other frame inverted
    assert mawe(flicker)["mawe"] > 3 * mawe(moving)["mawe"]


def test_mawe_sees_an_object_move_between_colours_of_equal_luma():
    video = np.stack(isoluminant_pair(2))
    colour, gray = mawe(video), mawe(video, flow_fn=dis_flow)
    assert colour["flow_magnitude"] > 0.05 and gray["flow_magnitude"] < 1e-3
    assert colour["mawe"] < 0.1 * gray["mawe"]


def test_mawe_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        mawe(constant_pan(1))
    with pytest.raises(ValueError, match="c must be"):
        mawe(constant_pan(3), c=0.0)
    with pytest.raises(ValueError, match="min_motion"):
        mawe(constant_pan(3), min_motion=0)
    with pytest.raises(ValueError, match="flow_fn"):
        warp_errors(constant_pan(3), flow_fn=lambda f0, f1: np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="one length"):
        mawe_score(np.ones(3), np.ones(2))


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
    # given magnitudes, no flow is computed
    calls.clear()
    got = seam_flow_std(video, [1], window=2, flow_fn=flow, magnitudes=np.arange(1.0, 10.0))
    assert not calls and got == pytest.approx(np.std([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="magnitudes"):
        seam_flow_std(video, [1], magnitudes=np.ones(3))


def test_seam_flow_std_skips_invalid_seams_and_rejects_none_valid():
    video = constant_pan(6)
    assert seam_flow_std(video, [0, 3, 6, 99]) == pytest.approx(seam_flow_std(video, [3]))
    with pytest.raises(ValueError, match="no valid seam"):
        seam_flow_std(video, [0, 6])
    with pytest.raises(ValueError, match="no valid seam"):
        seam_flow_std(video, [])


# --- text alignment -----------------------------------------------------------------


def fixed_encoder(**predicted: str) -> FrameEncoder:
    """A frame encoder whose heads predict the given classes whatever the frame."""
    torch.manual_seed(0)
    attributes = {k: list(vw.ATTRIBUTES[k]) for k in predicted}
    config = FrameEncoderConfig(size=16, channels=[8, 8], dim=8, attributes=attributes)
    model = FrameEncoder(config)
    with torch.no_grad():
        for key, name in predicted.items():
            head = model.heads[key]
            head.weight.zero_()
            head.bias.zero_()
            head.bias[attributes[key].index(name)] = 30.0
    return model


def test_text_alignment_scores_the_attributes_the_encoder_knows():
    video = vw.sample_clip(0).render(9, 32)
    shape_only = fixed_encoder(shape="square", color="yellow")
    # the caption names shape, motion and speed; this encoder knows shape (and colour)
    assert text_alignment(video, CAPTION, shape_only) == pytest.approx(1.0, abs=1e-6)
    assert text_alignment(video, "a circle bounces quickly", shape_only) == pytest.approx(
        0.0, abs=1e-6
    )
    both = fixed_encoder(shape="square", speed="slowly")
    # half right: the shape matches, the speed does not
    got = text_alignment(video, CAPTION, both, every=1, batch_size=2)
    assert got == pytest.approx(0.5, abs=1e-6)


def test_text_alignment_averages_over_frames():
    model = fixed_encoder(shape="square", speed="quickly")
    video = np.zeros((8, 16, 16, 3), np.uint8)
    with torch.no_grad():
        model.heads["shape"].weight.zero_()
        model.heads["shape"].bias.zero_()  # shape: uniform over the shapes
    got = text_alignment(video, CAPTION, model)
    assert got == pytest.approx((1.0 + 1 / len(vw.SHAPES)) / 2, abs=1e-6)


def test_text_alignment_needs_an_attribute_the_encoder_knows():
    model = fixed_encoder(shape="square")
    video = vw.sample_clip(0).render(4, 32)
    with pytest.raises(ValueError, match="names none"):
        text_alignment(video, "something bounces quickly", model)
    with pytest.raises(ValueError, match="every"):
        text_alignment(video, CAPTION, model, every=0)


def test_mean_colour_error_is_zero_on_the_world_and_sees_a_recolouring():
    from longseq.streaming.metrics import mean_colour_error

    for seed in range(6):
        video = vw.sample_clip(seed, "test").render(40, 16)
        assert mean_colour_error(video).max() < 1.0
    washed = vw.sample_clip(1, "test").render(8, 16).astype(float) * 0.7 + 50  # washed out
    assert mean_colour_error(washed.clip(0, 255).astype(np.uint8)).min() > 4.0
    with pytest.raises(ValueError, match="square"):
        mean_colour_error(np.zeros((2, 8, 10, 3), np.uint8))
