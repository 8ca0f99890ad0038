import itertools

import numpy as np
import pytest

from longseq.data import videoworld as vw

APPEARANCE_WORDS = {w for values in vw.APPEARANCE.values() for w in values}


def hidden_runs(visibility: np.ndarray) -> list[int]:
    """Lengths of the stretches fully out of view that end in a return (not cut by the
    clip's end)."""
    runs, t, n = [], 0, len(visibility)
    while t < n:
        if visibility[t] == 0:
            start = t
            while t < n and visibility[t] == 0:
                t += 1
            if t < n and start > 0:
                runs.append(t - start)
        else:
            t += 1
    return runs


def clips_of(motion: str, n: int = 30) -> list[vw.Clip]:
    return [
        vw.clip_for_caption(f"a {shape} {motion} {speed}", seed=seed)
        for seed, (shape, speed) in zip(
            range(n), itertools.cycle(itertools.product(vw.SHAPES, vw.SPEEDS)), strict=False
        )
    ]


# --- captions and splits ------------------------------------------------------------


def test_captions_name_shape_motion_and_speed_only_and_parse_back():
    caps = vw.all_captions()
    assert len(caps) == len(vw.SHAPES) * len(vw.MOTIONS) * len(vw.SPEEDS)
    assert len({vw.caption_of(a) for a in caps}) == len(caps)
    for a in caps:
        text = vw.caption_of(a)
        assert vw.parse_caption(text) == a
        assert not set(text.split()) & APPEARANCE_WORDS
    clip = vw.sample_clip(4)
    assert set(clip.attrs) == set(vw.ATTRIBUTES)
    assert vw.parse_caption(clip.caption) == {k: clip.attrs[k] for k in vw.CAPTION_ATTRIBUTES}
    # words outside the caption vocabulary are ignored, appearance words included
    assert vw.parse_caption("A yellow Circle, over navy. circles quickly") == {
        "shape": "circle",
        "motion": "circles",
        "speed": "quickly",
    }


def test_held_out_captions_are_new_combinations_of_words_seen_in_training():
    caps = vw.all_captions()
    test = [a for a in caps if vw.caption_split(a) == "test"]
    train = [a for a in caps if vw.caption_split(a) == "train"]
    assert {vw.caption_of(a) for a in test} == set(vw.HELD_OUT)
    assert sorted(a["shape"] for a in test) == sorted(vw.SHAPES)  # one per shape
    for a in test:  # every pair of its words appears in some training caption
        for k1, k2 in itertools.combinations(vw.CAPTION_ATTRIBUTES, 2):
            assert any(b[k1] == a[k1] and b[k2] == a[k2] for b in train), (a, k1, k2)
    train_seen = {vw.sample_clip(i, "train").caption for i in range(200)}
    val_seen = {vw.sample_clip(i, "val").caption for i in range(100)}
    test_seen = {vw.sample_clip(i, "test").caption for i in range(60)}
    assert test_seen == set(vw.HELD_OUT)
    assert not (train_seen | val_seen) & set(vw.HELD_OUT)
    assert len(train_seen) == len(train)
    # val draws from the training captions with its own seeds
    assert vw.sample_clip(0, "val").seed != vw.sample_clip(0, "train").seed


def test_appearance_is_drawn_uniformly_per_clip():
    clips = [vw.sample_clip(i) for i in range(600)]
    for key, values in vw.APPEARANCE.items():
        counts = np.array([sum(c.attrs[key] == v for c in clips) for v in values])
        expected = len(clips) / len(values)
        assert (np.abs(counts - expected) < 0.35 * expected).all(), (key, counts)
    # the same caption comes in several appearances
    a = vw.clip_for_caption(vw.HELD_OUT[0], seed=0)
    looks = {
        tuple(vw.clip_for_caption(vw.HELD_OUT[0], seed=s).attrs[k] for k in vw.APPEARANCE)
        for s in range(20)
    }
    assert len(looks) > 5
    fixed = vw.clip_for_caption(vw.HELD_OUT[0], seed=0, color="lime", pattern="checkered")
    assert fixed.attrs == a.attrs | {"color": "lime", "pattern": "checkered"}


# --- rendering ----------------------------------------------------------------------


def test_render_is_deterministic_and_windows_agree():
    clip = vw.sample_clip(5)
    a, b = clip.render(40, 16), vw.sample_clip(5).render(40, 16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clip.render(10, 16, start=25), a[25:35])
    assert a.shape == (40, 16, 16, 3) and a.dtype == np.uint8
    pos, angles = clip.trajectory(40)
    pos10, angles10 = clip.trajectory(10)
    np.testing.assert_array_equal(pos[:10], pos10)
    np.testing.assert_array_equal(angles[:10], angles10)
    assert not np.array_equal(a, vw.sample_clip(6).render(40, 16))


@pytest.mark.parametrize("shape", vw.SHAPES)
def test_object_has_its_drawn_colour(shape):
    for seed, colour in enumerate(vw.COLORS):
        clip = vw.clip_for_caption(f"a {shape} bounces slowly", seed=seed, color=colour)
        pos, _ = clip.trajectory(60)
        video = clip.render(60, 32)
        vis = clip.visibility(60)
        for t in np.flatnonzero(vis > 0.999)[::10]:
            x, y = (pos[t] * 32).astype(int)
            np.testing.assert_array_equal(video[t, y, x], vw.COLORS[colour])


@pytest.mark.parametrize("pattern", vw.PATTERNS)
def test_background_has_its_drawn_colour_and_pattern(pattern):
    for seed, bg_color in enumerate(vw.BG_COLORS):
        clip = vw.clip_for_caption(
            "a square circles quickly", seed=seed, bg_color=bg_color, pattern=pattern
        )
        vis = clip.visibility(120)
        assert (vis == 0).any()
        t = int(np.argmax(vis == 0))  # a frame without the object: the background alone
        frame = clip.render(1, 32, start=t)[0].astype(int)
        bg = np.array(vw.BG_COLORS[bg_color])
        shade = np.round(bg * vw.PATTERN_SHADE)
        light = (frame == bg).all(-1)
        dark = (frame == shade).all(-1)
        if pattern == "plain":
            assert light.all()
            continue
        assert 0.3 < light.mean() < 0.7 and 0.3 < dark.mean() < 0.7
        if pattern == "checkered":  # 4 x 4 squares of 8 px, light at the top left
            assert light[:8, :8].all() and dark[:8, 8:16].all() and dark[8:16, :8].all()
            assert light[8:16, 8:16].all()
        else:  # diagonal stripes: the tone depends on row + column only
            for s in range(63):
                values = {tuple(frame[i, s - i]) for i in range(max(0, s - 31), min(31, s) + 1)}
                assert len(values) == 1


def test_every_object_colour_is_far_brighter_than_every_background_tone():
    objects = [vw.luma(c) for c in vw.COLORS.values()]
    tones = [
        vw.luma(np.round(np.multiply(c, s)))
        for c in vw.BG_COLORS.values()
        for s in (1, vw.PATTERN_SHADE)
    ]
    assert min(objects) >= 160 and max(tones) <= 75
    assert min(objects) > vw.LUMA_SPLIT > max(tones)
    assert min(objects) - max(tones) >= 70  # no near-isoluminant pair, even in grayscale
    # in rendered frames, for every colour pair: pure object pixels above, background below
    for (colour, bg_color), pattern in itertools.product(
        itertools.product(vw.COLORS, vw.BG_COLORS), vw.PATTERNS
    ):
        clip = vw.clip_for_caption(
            "a circle bounces slowly", seed=1, color=colour, bg_color=bg_color, pattern=pattern
        )
        frame = clip.render(1, 16)[0]
        lum = vw.luma(frame)
        is_object = (frame == vw.COLORS[colour]).all(-1)
        assert is_object.sum() > 10
        assert (lum[is_object] > vw.LUMA_SPLIT).all()
        bg_tones = (frame == vw.BG_COLORS[bg_color]).all(-1) | (
            frame == np.round(np.multiply(vw.BG_COLORS[bg_color], vw.PATTERN_SHADE))
        ).all(-1)
        assert bg_tones.sum() > 100 and (lum[bg_tones] < vw.LUMA_SPLIT).all()


# --- motion -------------------------------------------------------------------------


@pytest.mark.parametrize("motion", vw.MOTIONS)
def test_speed_follows_the_caption(motion):
    steps = {speed: [] for speed in vw.SPEEDS}
    for clip in clips_of(motion, 16):
        pos, _ = clip.trajectory(120)
        steps[clip.attrs["speed"]].append(np.linalg.norm(np.diff(pos, axis=0), axis=1).mean())
    for speed, values in steps.items():
        nominal = vw.SPEEDS[speed]
        assert 0.6 * nominal < min(values) and max(values) < 1.5 * nominal, (speed, values)
    assert min(steps["quickly"]) > 1.5 * max(steps["slowly"])


def test_the_object_starts_in_view():
    for split in ("train", "test"):
        for seed in range(40):
            clip = vw.sample_clip(seed, split)
            assert clip.visibility(1)[0] > 0.999
            frame = clip.render(1, 16)[0]
            assert (frame == vw.COLORS[clip.attrs["color"]]).all(-1).sum() >= 4


@pytest.mark.parametrize("motion", ["bounces", "circles", "wanders"])
def test_the_object_leaves_for_at_least_the_hidden_time_and_comes_back(motion):
    for clip in clips_of(motion, 40):
        vis = clip.visibility(240)
        runs = hidden_runs(vis)
        assert runs, (clip.caption, clip.seed)  # leaves and comes back within 240 frames
        assert min(runs) >= vw.HIDDEN[0], (clip.caption, clip.seed, runs)
        pos, _ = clip.trajectory(240)
        assert ((pos[:, 1] >= vw.RADIUS - 1e-9) & (pos[:, 1] <= 1 - vw.RADIUS + 1e-9)).all()


def test_out_of_view_means_no_object_pixel_and_the_background_is_still():
    clip = vw.clip_for_caption("a triangle bounces quickly", seed=2)
    vis = clip.visibility(120)
    video = clip.render(120, 16)
    hidden = np.flatnonzero(vis == 0)
    assert len(hidden) >= vw.HIDDEN[0]
    colour = np.array(vw.COLORS[clip.attrs["color"]])
    assert not (video[hidden] == colour).all(-1).any()
    assert (video[hidden] == video[hidden[0]]).all()
    assert (video[vis == 1] == colour).all(-1).sum(axis=(1, 2)).min() >= 8


# --- tensors and batches ------------------------------------------------------------


def test_tensor_round_trip_and_clip_batch():
    frames, first, caps = vw.clip_batch(np.random.default_rng(0), 3, 5, 16, max_start=10)
    assert frames.shape == (3, 5, 16, 16, 3) and first.shape == (3, 16, 16, 3) and len(caps) == 3
    assert frames.dtype == first.dtype == np.uint8
    x = vw.to_tensor(frames)
    assert x.shape == (3, 3, 5, 16, 16) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(vw.to_uint8(x), frames)
    again = vw.clip_batch(np.random.default_rng(0), 3, 5, 16, max_start=10)
    np.testing.assert_array_equal(again[0], frames)
    assert again[2] == caps
    for cap in caps:
        assert vw.caption_split(vw.parse_caption(cap)) == "train"
    # `first` is frame 0 of each clip: the static background makes most pixels agree
    for i in range(3):
        assert (first[i] == frames[i, 0]).all(-1).mean() > 0.6
    test_caps = vw.clip_batch(np.random.default_rng(1), 6, 1, 8, split="test")[2]
    assert set(test_caps) <= set(vw.HELD_OUT)


def test_clip_batch_can_say_how_much_of_the_object_is_in_view():
    frames, _, caps, vis = vw.clip_batch(
        np.random.default_rng(4), 6, 12, 16, max_start=150, visibility=True
    )
    again = vw.clip_batch(np.random.default_rng(4), 6, 12, 16, max_start=150)
    np.testing.assert_array_equal(frames, again[0])  # the same draws as without it
    assert vis.shape == (6, 12) and ((vis >= 0) & (vis <= 1)).all()
    lum = frames.astype(float) @ np.array([0.299, 0.587, 0.114])
    bright = (lum > vw.LUMA_SPLIT).sum((2, 3))
    assert (bright[vis == 0] == 0).all() and (bright[vis == 1] > 0).all()
    assert (vis == 0).any() and (vis == 1).any()


def test_clip_batch_windows_can_hold_a_reappearance():
    n, hidden_before = 24, 4
    frames, _, _ = vw.clip_batch(
        np.random.default_rng(3), 8, n, 16, max_start=200, reappear=1.0, hidden_before=hidden_before
    )
    bright = (vw.luma(frames) > vw.LUMA_SPLIT).sum(axis=(2, 3))  # (B, T) object pixels
    returns = (bright[:, hidden_before - 1] == 0) & (bright[:, -1] > 0)
    assert returns.sum() >= 6, bright


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="split"):
        vw.sample_clip(0, "dev")
    with pytest.raises(ValueError, match="does not name: motion, speed"):
        vw.clip_for_caption("a yellow circle over a plain navy background")
    with pytest.raises(ValueError, match="unknown appearance"):
        vw.clip_for_caption("a circle bounces slowly", color="red")
    with pytest.raises(ValueError, match="unknown appearance"):
        vw.clip_for_caption("a circle bounces slowly", shade="dark")
