"""Prompt fidelity: the shipped attribute classifier on hand-built and rendered clips, the
track helpers against hand-computed values, and the base-model prompt gate."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")

from longseq import hub  # noqa: E402
from longseq.data import videoworld as vw  # noqa: E402
from longseq.streaming.evaluate import base_prompt_gate, prompt_gate  # noqa: E402
from longseq.streaming.metrics import (  # noqa: E402
    PromptFidelity,
    object_track,
    prompt_fidelity,
    track_features,
    track_steps,
)


@pytest.fixture(scope="module")
def classifier():
    model, _ = hub.load("fidelity-classifier")
    return model


def test_object_track_finds_a_hand_drawn_block():
    video = np.zeros((2, 16, 16, 3), np.uint8)
    video[0, 2:4, 6:10] = 255  # rows 2-3, columns 6-9
    # frame 1 stays empty
    centres, count = object_track(video)
    assert count.tolist() == [8, 0]
    np.testing.assert_allclose(centres[0], [8 / 16, 3 / 16])  # (x, y) of the block's centre
    assert np.isnan(centres[1]).all()


def test_track_steps_and_features_by_hand():
    centres = np.array([[0.1, 0.5], [0.2, 0.5], [0.3, 0.5], [0.5, 0.5]])
    visible = np.array([True, True, False, True])
    steps = track_steps(centres, visible)
    np.testing.assert_allclose(steps[:1], [0.1])
    assert np.isnan(steps[1:]).all()  # a pair with a hidden frame is not a step
    # a straight track at constant speed: no turns, no speed change, no vertical motion
    line = np.stack([np.linspace(0, 0.5, 30), np.full(30, 0.4)], 1)
    f = track_features(line, np.ones(30, bool))
    np.testing.assert_allclose(f, [0, 0, 0, 0, 0], atol=1e-9)
    # a circle traversed at constant angular speed turns one way, by lag * omega
    t = np.arange(40)
    orbit = 0.5 + 0.3 * np.stack([np.cos(0.1 * t), np.sin(0.1 * t)], 1)
    f = track_features(orbit, np.ones(40, bool), lag=4)
    np.testing.assert_allclose(f[:2], [0.4, 0.4], atol=1e-9)
    assert f[2] == 0 and f[3] < 1e-9
    assert np.isnan(track_features(orbit, np.zeros(40, bool))).all()


def test_blocks_and_summary_by_hand():
    fid = PromptFidelity(
        visible=np.array([1, 1, 0, 1, 0, 0], bool),
        object_pixels=np.array([20, 12, 5, 30, 0, 0]),
        shape=["square", "circle", None, "square", None, None],
        shape_correct=np.array([1.0, 0.0, np.nan, 1.0, np.nan, np.nan]),
        steps=np.array([0.01, np.nan, np.nan, np.nan, np.nan]),
        speed="slowly",
        motion=None,
        target={"shape": "square", "motion": "bounces", "speed": "slowly"},
        speed_split=0.02,
    )
    b = fid.blocks(3)
    np.testing.assert_allclose(b["visible"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(b["shape_accuracy"], [0.5, 1.0])
    np.testing.assert_allclose(b["mean_step"][:1], [0.01])
    assert np.isnan(b["mean_step"][1]) and np.isnan(b["speed_correct"][1])
    assert b["speed_correct"][0] == 1.0
    s = fid.summary()
    assert s["visible"] == 0.5 and s["shape_accuracy"] == pytest.approx(2 / 3)
    assert s["any_object"] == pytest.approx(4 / 6)
    assert s["speed_correct"] == 1.0 and math.isnan(s["motion_correct"])
    assert math.isnan(fid.summary(2, 3)["shape_accuracy"])  # no visible frame


@pytest.mark.parametrize("caption", vw.HELD_OUT)
def test_a_rendered_world_clip_scores_high(classifier, caption):
    clip = vw.clip_for_caption(caption, seed=5)
    video = clip.render(96, 16)
    fid = prompt_fidelity(video, caption, classifier)
    s = fid.summary()
    assert s["shape_accuracy"] >= 0.9
    assert s["speed_correct"] == 1.0
    # visibility read from pixels agrees with the world's own (at least half in view)
    truth = clip.visibility(96) >= 0.5
    assert (fid.visible == truth).mean() >= 0.85


def test_a_clip_of_the_wrong_shape_scores_low(classifier):
    video = vw.clip_for_caption("a triangle bounces slowly", seed=2).render(64, 16)
    s = prompt_fidelity(video, "a square bounces slowly", classifier).summary()
    assert s["visible"] > 0.3
    assert s["shape_accuracy"] <= 0.1


def test_an_empty_clip_is_not_visible(classifier):
    clip = vw.clip_for_caption("a circle bounces quickly", seed=0)
    video = np.repeat(clip.render_background(16)[None], 24, 0)
    fid = prompt_fidelity(video, clip.caption, classifier)
    assert not fid.visible.any()
    assert fid.shape == [None] * 24
    assert math.isnan(fid.summary()["shape_accuracy"])
    assert fid.speed is None and fid.motion is None


def test_speed_is_read_from_the_track(classifier):
    for speed in vw.SPEEDS:
        caption = f"a circle bounces {speed}"
        video = vw.clip_for_caption(caption, seed=7).render(96, 16)
        assert prompt_fidelity(video, caption, classifier).speed == speed


def test_larger_frames_are_resized_to_the_classifier(classifier):
    video = vw.clip_for_caption("a cross wanders slowly", seed=1).render(48, 32)
    assert prompt_fidelity(video, "a cross wanders slowly", classifier).summary()[
        "shape_accuracy"
    ] >= (0.9)


def test_shape_accuracy_on_fresh_world_frames(classifier):
    """Frames the training never saw (the validation seed stream): at least half in view."""
    rng = np.random.default_rng(123)
    frames, labels = [], []
    for _ in range(40):
        clip = vw.sample_clip(int(rng.integers(2**31)), "val")
        video = clip.render(120, 16)
        rows = rng.choice(np.flatnonzero(clip.visibility(120) >= 0.5), 5)
        frames.append(video[rows])
        labels += [classifier.config.shapes.index(clip.attrs["shape"])] * 5
    with torch.no_grad():
        pred = classifier(classifier.luma(np.concatenate(frames))).argmax(-1).numpy()
    assert (pred == np.array(labels)).mean() >= 0.97


def test_bad_input_is_refused(classifier):
    video = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="names no shape"):
        prompt_fidelity(video, "something moves", classifier)
    with pytest.raises(ValueError, match="uint8"):
        prompt_fidelity(video.astype(np.float32), "a square bounces slowly", classifier)
    with pytest.raises(ValueError, match="one first chunk per caption"):
        prompt_gate([video], [], classifier)


class _WorldPipe:
    """A stand-in pipeline whose 'first chunk' is the world's clip, or one of another
    shape, or an empty background."""

    chunk_frames = 8

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, caption, n_frames, seed=0, progress=False, **kw):
        class Out:
            pass

        clip = vw.clip_for_caption(caption, seed=seed)
        if self.kind == "wrong":
            other = vw.SHAPES[(vw.SHAPES.index(clip.attrs["shape"]) + 1) % 4]
            clip = vw.Clip(attrs=clip.attrs | {"shape": other}, seed=clip.seed)
        out = Out()
        # start where the object is in view, as generated first chunks mostly are
        start = int(np.argmax(clip.visibility(200) == 1))
        out.frames = clip.render(n_frames, 16, start)
        if self.kind == "empty" or (self.kind == "no-triangle" and "triangle" in caption):
            out.frames[:] = clip.render_background(16)
        return out


def test_base_prompt_gate_passes_the_world_and_fails_wrong_or_empty(classifier):
    good = base_prompt_gate(_WorldPipe("world"), classifier, n=4)
    assert good["passed"] and good["shape_accuracy"] >= 0.9 and good["n"] == 4
    assert good["n_speed_read"] == 4 and good["speed_agreement"] >= 0.75
    wrong = base_prompt_gate(_WorldPipe("wrong"), classifier, n=4)
    assert not wrong["passed"] and wrong["shape_accuracy"] < 0.2
    empty = base_prompt_gate(_WorldPipe("empty"), classifier, n=4)
    assert not empty["passed"] and empty["visible"] == 0 and empty["n_visible"] == 0
    assert empty["n_speed_read"] == 0 and math.isnan(empty["speed_agreement"])


def test_base_prompt_gate_fails_a_shape_that_is_never_drawn(classifier):
    # perfect among the frames that show an object, but triangles are never drawn: the
    # accuracy among visible frames cannot see it, the per-shape visibility does
    res = base_prompt_gate(_WorldPipe("no-triangle"), classifier, n=4)
    assert res["shape_accuracy"] >= 0.9 and res["speed_agreement"] >= 0.75
    assert set(res["per_shape"]) == set(vw.SHAPES)
    assert res["per_shape"]["triangle"]["visible"] == 0 == res["least_visible"]
    assert math.isnan(res["per_shape"]["triangle"]["shape_accuracy"])
    assert min(res["per_shape"][s]["visible"] for s in ("circle", "square", "cross")) > 0.5
    assert not res["passed"]
