import numpy as np
import pytest

from longseq.data import videoworld as vw


def test_captions_parse_back_and_split_by_caption():
    caps = vw.all_captions()
    assert len(caps) == np.prod([len(v) for v in vw.ATTRIBUTES.values()])
    for a in caps:
        assert vw.parse_caption(vw.caption_of(a)) == a
    test = {vw.caption_of(a) for a in caps if vw.caption_split(a) == "test"}
    assert 0.08 < len(test) / len(caps) < 0.25
    train_seen = {vw.sample_clip(i, "train").caption for i in range(300)}
    test_seen = {vw.sample_clip(i, "test").caption for i in range(100)}
    assert test_seen <= test and not (train_seen & test)


def test_render_is_deterministic_and_windows_agree():
    clip = vw.sample_clip(5)
    a, b = clip.render(40, 16), vw.sample_clip(5).render(40, 16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clip.render(10, 16, start=25), a[25:35])
    assert a.shape == (40, 16, 16, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, vw.sample_clip(6).render(40, 16))


@pytest.mark.parametrize("seed", range(6))
def test_object_has_the_caption_colour_and_moves(seed):
    clip = vw.sample_clip(seed)
    pos, _ = clip.trajectory(60)
    video = clip.render(60, 32)
    colour = np.array(vw.COLORS[clip.attrs["color"]])
    for t in (0, 30, 59):
        x, y = (pos[t] * 32).astype(int)
        assert np.abs(video[t, y, x].astype(int) - colour).max() <= 2
    assert ((pos >= vw.RADIUS - 1e-9) & (pos <= 1 - vw.RADIUS + 1e-9)).all()
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1).mean()
    speed = vw.SPEEDS[clip.attrs["speed"]]
    assert 0.5 * speed < step < 1.7 * speed


def test_background_pattern_and_colour_follow_the_caption():
    for pattern in vw.PATTERNS:
        clip = vw.clip_for_caption(f"a red circle bounces slowly over a {pattern} teal background")
        frame = clip.render(1, 32)[0].reshape(-1, 3)
        teal = np.array(vw.BG_COLORS["teal"])
        n_colours = len({tuple(c) for c in frame if np.abs(c.astype(int) - teal * 0.55).max() <= 1})
        assert (n_colours > 0) == (pattern != "plain")
        assert (np.abs(frame.astype(int) - teal).max(1) <= 1).mean() > 0.3


def test_tensor_round_trip_and_clip_batch():
    rng = np.random.default_rng(0)
    frames, first, caps = vw.clip_batch(rng, 3, 5, 16, max_start=10)
    assert frames.shape == (3, 5, 16, 16, 3) and first.shape == (3, 16, 16, 3) and len(caps) == 3
    x = vw.to_tensor(frames)
    assert x.shape == (3, 3, 5, 16, 16) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(vw.to_uint8(x), frames)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="split"):
        vw.sample_clip(0, "dev")
    with pytest.raises(ValueError, match="does not name: motion, speed"):
        vw.clip_for_caption("a red circle over a plain gray background")
