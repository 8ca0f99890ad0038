import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("scenedetect")

from longseq.data import videoworld as vw  # noqa: E402
from longseq.media import resize_video  # noqa: E402
from longseq.streaming.evaluate import real_clip_metrics, video_metrics  # noqa: E402
from longseq.streaming.metrics import (  # noqa: E402
    appearance_drift,
    mawe,
    palette_error,
    seam_flow_std,
    seam_jumps,
)

CAPTION = "a triangle bounces quickly"
BASE = {
    "mawe",
    "warp_error",
    "flow_magnitude",
    "scuts",
    "frame_change",
    "object_drift",
    "background_drift",
    "reappear_drift",
    "n_reappear",
    "object_visible",
    "object_palette_error",
    "background_palette_error",
    "palette_error",
}
SEAMS = {"seam_change", "within_change", "seam_jump_ratio", "seam_share_above_p95", "n_seams"}


def test_resize_video_keeps_constant_colours_and_shape():
    v = np.zeros((3, 16, 16, 3), np.uint8) + np.array([10, 200, 30], np.uint8)
    big = resize_video(v, (64, 64))
    assert big.shape == (3, 64, 64, 3) and (big == v[0, 0, 0]).all()
    np.testing.assert_array_equal(resize_video(v, (16, 16)), v)


def test_video_metrics_are_the_metrics_of_each_function():
    v = vw.clip_for_caption(CAPTION, seed=0).render(40, 16)
    seams = [8, 16, 24, 32]
    m = video_metrics(v, CAPTION, seams=seams)
    assert set(m) == BASE | SEAMS | {"seam_flow_std"}
    assert all(isinstance(x, float) for x in m.values())
    big = resize_video(v, (64, 64))
    ref = mawe(big)
    assert m["mawe"] == pytest.approx(ref["mawe"]) and m["warp_error"] == pytest.approx(
        ref["warp_error"]
    )
    assert m["seam_flow_std"] == pytest.approx(seam_flow_std(big, seams))
    for key, value in seam_jumps(v, seams).items():
        assert m[key] == value
    for key, value in palette_error(v).summary().items():
        assert m[key] == value
    assert m["object_drift"] == appearance_drift(v).summary()["object_drift"] == 0
    assert m["scuts"] == 0
    # without seams, no seam metrics; the flow size changes MAWE only
    small = video_metrics(v, flow_size=32)
    assert set(small) == BASE
    assert small["palette_error"] == m["palette_error"] and small["mawe"] != m["mawe"]


def test_video_metrics_see_a_generator_that_recolours_each_chunk():
    real = vw.clip_for_caption(CAPTION, seed=1).render(48, 16)
    seams = list(range(8, 48, 8))
    scales = ([1.0, 1.0, 1.0], [1.2, 0.9, 0.8], [0.85, 1.0, 1.2])
    chunks = [
        np.clip(np.round(real[s : s + 8] * np.array(scales[k % 3])), 0, 255).astype(np.uint8)
        for k, s in enumerate(range(0, 48, 8))
    ]
    good = video_metrics(real, seams=seams)
    bad = video_metrics(np.concatenate(chunks), seams=seams)
    assert good["palette_error"] < 1 and bad["palette_error"] > 5
    assert good["object_drift"] == 0 and bad["object_drift"] > 5
    assert bad["seam_jump_ratio"] > 3 * good["seam_jump_ratio"]
    assert bad["seam_share_above_p95"] == 1.0


def test_video_metrics_count_a_hard_cut_to_another_clip():
    clip, other = vw.sample_clip(2), vw.sample_clip(9)
    assert other.attrs["bg_color"] != clip.attrs["bg_color"]
    cut = np.concatenate([clip.render(30, 16), other.render(30, 16)])
    assert video_metrics(cut, clip.caption)["scuts"] == 1


def test_video_metrics_reject_a_bad_flow_size():
    v = vw.sample_clip(0).render(4, 16)
    with pytest.raises(ValueError, match="flow_size"):
        video_metrics(v, flow_size=4)
    with pytest.raises(ValueError, match="flow_size"):
        video_metrics(v, flow_size=32.0)


def test_real_clip_metrics_render_the_world_at_the_generators_size():
    captions = list(vw.HELD_OUT[:2])
    rows = real_clip_metrics(captions, 40, 16, seams=[10, 20, 30])
    assert len(rows) == 2
    for seed, (caption, row) in enumerate(zip(captions, rows, strict=True)):
        video = vw.clip_for_caption(caption, seed=seed).render(40, 16)
        assert row == video_metrics(video, caption, seams=[10, 20, 30])
        # what a generator's numbers are read against
        assert row["palette_error"] < 1 and row["object_drift"] == 0 and row["scuts"] == 0
    other = real_clip_metrics(captions[:1], 40, 16, seeds=[5], flow_size=32)[0]
    video = vw.clip_for_caption(captions[0], seed=5).render(40, 16)
    assert other == video_metrics(video, captions[0], flow_size=32)
    with pytest.raises(ValueError, match="one seed per caption"):
        real_clip_metrics(captions, 40, 16, seeds=[1])


def test_video_metrics_align_text_only_with_a_caption_and_an_encoder():
    import torch

    from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig

    torch.manual_seed(0)
    config = FrameEncoderConfig(size=16, channels=[8], dim=8, attributes={"shape": list(vw.SHAPES)})
    encoder = FrameEncoder(config)
    with torch.no_grad():
        encoder.heads["shape"].weight.zero_()
        encoder.heads["shape"].bias.zero_()
        encoder.heads["shape"].bias[vw.SHAPES.index("triangle")] = 30.0
    v = vw.clip_for_caption(CAPTION, seed=0).render(8, 16)
    assert video_metrics(v, CAPTION, encoder)["text_alignment"] == pytest.approx(1.0, abs=1e-6)
    assert "text_alignment" not in video_metrics(v, None, encoder)
    assert "text_alignment" not in video_metrics(v, CAPTION)


def test_gates_measure_a_pipeline_on_held_out_prompts():
    """On a pipeline whose model returns the clean video it is given as conditioning (an
    oracle), the re-make error is 0; the base model's chunks are checked for colours."""
    from longseq.streaming.evaluate import gate_prompts, gates

    class Oracle:
        cond_frames, chunk_frames = 4, 8

        def _pixel_size(self, unet):
            return 16

        unet = None

        def __call__(self, caption, n, seed=0, **kw):
            clip = vw.clip_for_caption(caption, seed=seed)

            class Out:
                frames = clip.render(n, 16)

            return Out()

        def continue_chunk(self, caption, cond, anchor, seed=0, **kw):
            start = 8 * (seed % 8)
            return vw.clip_for_caption(caption, seed=seed).render(8, 16, start)

    res = gates(Oracle(), n=3)
    assert res["remake_error"] == res["remake_last_error"] == res["continue_colour_error"] == 0
    assert res["base_colour_error"] < 1.0 and res["passed"]

    class Recolouring(Oracle):  # the failure the gates exist for: every chunk shifted in colour
        def __call__(self, caption, n, seed=0, **kw):
            out = super().__call__(caption, n, seed)
            out.frames = np.clip(out.frames.astype(int) + [20, -15, 10], 0, 255).astype(np.uint8)
            return out

        def continue_chunk(self, caption, cond, anchor, seed=0, **kw):
            x = super().continue_chunk(caption, cond, anchor, seed).astype(int)
            return np.clip(x + [20, -15, 10], 0, 255).astype(np.uint8)

    bad = gates(Recolouring(), n=3)
    assert bad["base_colour_error"] > 4 and bad["remake_error"] > 6 and not bad["passed"]
    assert [c for c, _ in gate_prompts(3)] == [c for c, _ in gate_prompts(5)][:3]

    class Holding(Oracle):  # a memory model: the frames it re-makes off by 30 levels when free
        mode, defaults = "cam", {"hold_cond": True}

        def continue_chunk(self, caption, cond, anchor, seed=0, hold_cond=None, **kw):
            x = super().continue_chunk(caption, cond, anchor, seed).astype(int)
            if not (self.defaults["hold_cond"] if hold_cond is None else hold_cond):
                x[:4] += 30
            return np.clip(x, 0, 255).astype(np.uint8)

    held = Holding()
    res = gates(held, n=3)  # the re-make is read free, the new frames as the pipeline samples
    assert res["remake_error"] > 20 and res["continue_colour_error"] == 0 and not res["passed"]
    held.defaults["hold_cond"] = False
    assert gates(held, n=3)["remake_error"] == res["remake_error"]
    held.mode = "replace"  # without memory the frames are held: there is no free re-make
    held.defaults["hold_cond"] = True
    assert gates(held, n=3)["remake_error"] == 0
    assert all(vw.caption_split(vw.parse_caption(c)) == "test" for c, _ in gate_prompts(5))
