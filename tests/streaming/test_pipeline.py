import numpy as np
import pytest
import torch

from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from longseq.models.video_unet import UNetOutput, VideoUNet, VideoUNetConfig
from longseq.streaming import StreamingT2VPipeline, chunk_starts

from .conftest import tiny_unet3d

diffusers = pytest.importorskip("diffusers")

D = 32  # text token width of the fake encoder


def fake_text(prompts):
    """Deterministic token states: a hash of each prompt, padding-free, 4 tokens."""
    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(map(ord, p)) + 7 * len(p))
        out.append(torch.randn(4, D, generator=g) * (len(p) > 0))
    return torch.stack(out)


def tiny(**kw) -> VideoUNet:
    cfg = VideoUNetConfig(
        sample_size=8,
        channels=[8, 16],
        attn_levels=[False, True],
        heads=2,
        ctx_dim=D,
        n_text_tokens=4,
        image_dim=8,
        n_anchor_tokens=2,
        **kw,
    )
    torch.manual_seed(0)
    return VideoUNet(cfg).eval()


def scheduler():
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def encoder() -> FrameEncoder:
    torch.manual_seed(1)
    return FrameEncoder(
        FrameEncoderConfig(size=8, channels=[8], dim=8, attributes={"a": ["x", "y"]})
    )


def pipe(unet=None, **kw) -> StreamingT2VPipeline:
    unet = unet or tiny(cam=True, apm=True)
    return StreamingT2VPipeline(
        unet, scheduler(), fake_text, image_encoder=encoder(), chunk_frames=6, cond_frames=2, **kw
    )


def test_chunk_starts_cover_with_the_overlap():
    for n, c, o in [(240, 24, 8), (30, 12, 4), (7, 12, 4), (25, 6, 2), (12, 12, 0)]:
        s = chunk_starts(n, c, o)
        assert s[0] == 0 and min(s[-1] + c, n) == n
        assert all(b - a == c - o for a, b in zip(s[:-2], s[1:-1], strict=True))
        assert all(0 < b - a <= c - o for a, b in zip(s, s[1:], strict=False))
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(10, 4, 4)


def test_fresh_cam_and_apm_leave_the_base_model_unchanged():
    """CAM's output projections and APM's gates start at zero: whatever the conditioning
    frames and anchor, a fresh memory model computes exactly the base model."""
    base = tiny()
    mem = tiny(cam=True, apm=True)
    missing, unexpected = mem.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing
    mem.init_cam_from_base()
    x, text = torch.randn(2, 3, 6, 8, 8), torch.randn(2, 4, D)
    cond, anchor = torch.randn(2, 3, 2, 8, 8), torch.randn(2, 8)
    ref = base(x, 500, text).sample
    out = mem(x, 500, text, cond_frames=cond, anchor_embeds=anchor).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # once the gates open, the conditioning matters
    with torch.no_grad():
        for m in mem.modules():
            if hasattr(m, "attn") and hasattr(m, "norm_kv"):
                m.attn.o.weight.normal_()
    assert (mem(x, 500, text, cond_frames=cond).sample - ref).abs().max() > 1e-3


def test_memory_parameters_are_only_cam_and_apm():
    m = tiny(cam=True, apm=True)
    names = {n for n, p in m.named_parameters() if any(p is q for q in m.memory_parameters())}
    assert names and all(n.startswith(("cam_", "apm_")) or ".apm." in n for n in names)
    assert any(".apm.alpha" in n for n in names)


def test_guidance_is_the_compositional_formula():
    p = pipe()
    unet = p.unet
    with torch.no_grad():
        for n, prm in unet.named_parameters():
            if "apm.alpha" in n:
                prm.fill_(1.0)  # let the anchor matter
    x, t = torch.randn(1, 3, 6, 8, 8), torch.tensor(300)
    text, null = fake_text(["a red circle"]), fake_text([""])
    cond, anchor = torch.randn(1, 3, 2, 8, 8), torch.randn(1, 8)
    z = torch.zeros(1, 8)
    with torch.no_grad():
        e00 = unet(x, t, null, cond_frames=cond, anchor_embeds=z).sample
        ec0 = unet(x, t, text, cond_frames=cond, anchor_embeds=z).sample
        eca = unet(x, t, text, cond_frames=cond, anchor_embeds=anchor).sample
        separate = p._eps(unet, x, t, text, null, 3.0, cond, anchor, 2.0)
        joint = p._eps(unet, x, t, text, null, 3.0, cond, anchor)
    torch.testing.assert_close(
        separate, e00 + 3.0 * (ec0 - e00) + 2.0 * (eca - ec0), rtol=1e-4, atol=1e-5
    )
    # the default, the authors' setting: one scale over text and anchor together
    torch.testing.assert_close(joint, e00 + 3.0 * (eca - e00), rtol=1e-4, atol=1e-5)
    assert (joint - separate).abs().max() > 1e-4


class Spy(torch.nn.Module):
    """Wraps a denoiser and records the shapes it is called with (and the conditioning
    frames and anchors it gets)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls, self.kwargs = inner, inner.config, [], []

    def forward(self, sample, t, encoder_hidden_states, **kw):
        self.calls.append((tuple(sample.shape), kw.get("cond_frames") is not None))
        self.kwargs.append(kw)
        return self.inner(sample, t, encoder_hidden_states, **kw)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_continuing_given_frames_conditions_on_them_and_remakes_them():
    spy = Spy(tiny(cam=True, apm=True))
    p = pipe(spy)
    cond = _frames(2)
    out = p.continue_chunk("a red circle", cond, num_inference_steps=2)
    assert out.shape == (6, 8, 8, 3) and out.dtype == np.uint8
    given = spy.kwargs[0]["cond_frames"][0]  # (3, F_cond, H, W) in [-1, 1]
    np.testing.assert_allclose(((given + 1) * 127.5).round().permute(1, 2, 3, 0), cond)
    # the anchor is the first conditioning frame unless one is given
    a0 = spy.kwargs[0]["anchor_embeds"][-1]
    p.continue_chunk("a red circle", cond, anchor_frame=_frames(1, 5)[0], num_inference_steps=2)
    assert not torch.equal(spy.kwargs[-1]["anchor_embeds"][-1], a0)
    with pytest.raises(ValueError, match="2 conditioning frames"):
        p.continue_chunk("a red circle", _frames(3), num_inference_steps=2)
    with pytest.raises(ValueError, match="model's resolution"):
        p.continue_chunk("a red circle", np.zeros((2, 16, 16, 3), np.uint8))


def test_a_video_continues_given_init_frames():
    spy = Spy(tiny(cam=True, apm=True))
    init = _frames(5, 1)
    chunks = list(
        pipe(spy).stream(
            "a red circle", 13, num_inference_steps=2, progress=False, init_frames=init
        )
    )
    np.testing.assert_array_equal(chunks[0], init)  # yielded as they are, then continued
    assert [len(c) for c in chunks] == [5, 4, 4]
    given = spy.kwargs[0]["cond_frames"][0]
    np.testing.assert_allclose(((given + 1) * 127.5).round().permute(1, 2, 3, 0), init[-2:])
    with pytest.raises(ValueError, match="at least 2"):
        next(pipe().stream("a red circle", 9, init_frames=init[:1], progress=False))


def test_joint_space_time_attention_is_an_option_of_the_same_weights():
    """Joint attention uses the same modules (so the same checkpoint layout) but lets every
    position of every frame attend to the whole chunk: the outputs differ."""
    factorised, joint = tiny(), tiny(joint_attention=True)
    joint.load_state_dict(factorised.state_dict())
    x, text = torch.randn(1, 3, 6, 8, 8), torch.randn(1, 4, D)
    with torch.no_grad():
        a, b = factorised(x, 10, text).sample, joint(x, 10, text).sample
    assert a.shape == b.shape and (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("n", [1, 6, 7, 10, 23])
def test_any_length_in_constant_size_chunks(n):
    spy = Spy(tiny(cam=True, apm=True))
    out = pipe(spy)("a red circle", n, num_inference_steps=2, progress=False)
    assert out.frames.shape == (n, 8, 8, 3) and out.frames.dtype == np.uint8
    n_chunks = 1 + max(0, -(-(n - 6) // 4))
    assert out.seams == [6 + 4 * i for i in range(n_chunks - 1)]
    assert len(spy.calls) == 2 * n_chunks  # two steps a chunk
    assert {c[0][2:] for c in spy.calls} == {(6, 8, 8)}  # same work per chunk, any length
    assert [c[1] for c in spy.calls] == [False] * 2 + [True] * 2 * (n_chunks - 1)


def test_generation_is_deterministic_by_seed_and_stream_matches_call():
    p = pipe()
    a = p("a red circle", 14, num_inference_steps=2, seed=3, progress=False)
    b = p("a red circle", 14, num_inference_steps=2, seed=3, progress=False)
    c = p("a red circle", 14, num_inference_steps=2, seed=4, progress=False)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    chunks = list(p.stream("a red circle", 14, num_inference_steps=2, seed=3, progress=False))
    np.testing.assert_array_equal(np.concatenate(chunks), a.frames)


def test_without_apm_the_anchor_changes_nothing_only_with_apm():
    p = pipe()
    with torch.no_grad():
        for n, prm in p.unet.named_parameters():
            if "apm.alpha" in n:
                prm.fill_(2.0)
    kw = dict(num_inference_steps=2, seed=0, progress=False)
    full = p("a red circle", 10, **kw).frames
    no_apm = p("a red circle", 10, use_anchor=False, **kw).frames
    np.testing.assert_array_equal(full[:6], no_apm[:6])  # first chunk has no anchor yet
    assert not np.array_equal(full[6:], no_apm[6:])


def test_naive_model_needs_a_first_chunk_model():
    naive = tiny(concat_cond=True)
    with pytest.raises(ValueError, match="first_unet"):
        StreamingT2VPipeline(naive, scheduler(), fake_text, chunk_frames=6, cond_frames=2)
    p = StreamingT2VPipeline(
        naive, scheduler(), fake_text, first_unet=tiny(), chunk_frames=6, cond_frames=2
    )
    assert p("a red circle", 11, num_inference_steps=2, progress=False).frames.shape[0] == 11


def test_bad_arguments_are_named():
    p = pipe()
    with pytest.raises(ValueError, match="prompt"):
        p("", 10)
    with pytest.raises(ValueError, match="num_frames"):
        p("a red circle", 0)
    with pytest.raises(ValueError, match="cond_frames"):
        StreamingT2VPipeline(tiny(), scheduler(), fake_text, chunk_frames=4, cond_frames=4)
    with pytest.raises(ValueError, match="image_encoder"):
        StreamingT2VPipeline(tiny(cam=True, apm=True), scheduler(), fake_text)
    with pytest.raises(ValueError, match="enhancer"):
        p.enhance(np.zeros((8, 8, 8, 3), np.uint8), "a red circle")


class FrameLocal(torch.nn.Module):
    """A denoiser that treats every frame on its own (eps = 0.3 x)."""

    def __init__(self, size=8):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.config = VideoUNetConfig(sample_size=size)

    def forward(self, sample, t, encoder_hidden_states, **kw):
        return UNetOutput(0.3 * sample + 0 * self.w)


def enhancer_pipe(enhancer, unet=None, **kw) -> StreamingT2VPipeline:
    """Chunks of 6 (2 conditioning) and enhancer chunks of 6 (overlap 2); the chunk
    model defaults to a tiny VideoUNet."""
    return StreamingT2VPipeline(
        tiny() if unet is None else unet,
        scheduler(),
        fake_text,
        chunk_frames=6,
        cond_frames=2,
        enhancer=enhancer,
        enhancer_chunk_frames=6,
        enhancer_overlap=2,
        **kw,
    )


def test_shared_noise_makes_chunked_enhancing_equal_to_one_pass():
    """With noise shared on the overlaps, a frame-local denoiser gives exactly the
    one-chunk result: no seams. Independent noise does not."""
    video = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    p = enhancer_pipe(FrameLocal())
    kw = dict(num_inference_steps=5, strength=0.6, seed=1, progress=False)
    one = p.enhance(video, "a red circle", chunk_frames=16, **kw).frames
    for blending in ("random", "shared"):
        out = p.enhance(video, "a red circle", blending=blending, **kw)
        np.testing.assert_array_equal(out.frames, one)
        assert out.frames.shape == (16, 8, 8, 3)
    ind = p.enhance(video, "a red circle", blending="independent", **kw)
    assert not np.array_equal(ind.frames, one)
    assert ind.seams == [5, 9, 12]  # middles of the overlaps [4,6), [8,10), [10,14)


class Smoother(torch.nn.Module):
    """A denoiser that mixes frames (eps = mean over the chunk's frames)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.config = VideoUNetConfig(sample_size=8)

    def forward(self, sample, t, encoder_hidden_states, **kw):
        return UNetOutput(sample.mean(2, keepdim=True).expand_as(sample) + 0 * self.w)


def test_randomized_blending_differs_from_a_fixed_cut():
    video = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    p = enhancer_pipe(Smoother())
    kw = dict(num_inference_steps=6, strength=1.0, seed=1, progress=False)
    rnd = p.enhance(video, "a red circle", blending="random", **kw).frames
    shared = p.enhance(video, "a red circle", blending="shared", **kw).frames
    assert not np.array_equal(rnd, shared)
    with pytest.raises(ValueError, match="blending"):
        p.enhance(video, "a red circle", blending="mean")
    with pytest.raises(ValueError, match="strength"):
        p.enhance(video, "a red circle", strength=0)
    with pytest.raises(ValueError, match="uint8"):
        p.enhance(video.astype(np.float32), "a red circle")


def test_a_plain_diffusers_unet_plugs_in():
    """Any diffusers 3-D UNet runs: chunks tied by replacing the conditioning frames;
    it also serves as the enhancer."""
    unet = tiny_unet3d(3, 8)
    p = enhancer_pipe(unet, unet=unet)
    assert p.mode == "replace"
    out = p("a red circle", 10, num_inference_steps=2, progress=False)
    assert out.frames.shape == (10, 8, 8, 3) and out.seams == [6]
    enh = p.enhance(out.frames, "a red circle", num_inference_steps=3, progress=False)
    assert enh.frames.shape == (10, 8, 8, 3)


def test_latent_models_work_through_a_vae():
    """A latent text-to-video UNet (4 channels) with a diffusers AutoencoderKL: chunks are
    made in latent space and decoded per frame; the enhancer encodes, refines, decodes."""
    unet = tiny_unet3d(4, 4)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    ).eval()
    p = enhancer_pipe(unet, unet=unet, vae=vae)
    out = p("a red circle", 9, num_inference_steps=2, progress=False)
    assert out.frames.shape == (9, 8, 8, 3)  # 4x4 latents, 2x vae
    # decoding is per frame: a chunk's frames equal the vae's decoding of each latent frame
    lat = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        dec = p._decode(lat)
        ref = vae.decode(lat[:, :, 1] / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(dec[:, :, 1], ref)
    enh = p.enhance(
        out.frames, "a red circle", num_inference_steps=2, progress=False, chunk_batch=1
    )
    assert enh.frames.shape == (9, 8, 8, 3)
    with pytest.raises(ValueError, match="chunk_batch"):
        p.enhance(out.frames, "a red circle", chunk_batch=0)


def test_a_guidance_interval_guides_only_its_steps():
    """Steps outside the interval are the conditional output alone (one model pass);
    the interval covering the whole schedule is plain guidance."""
    spy = Spy(tiny())
    p = StreamingT2VPipeline(spy, scheduler(), fake_text, chunk_frames=6, cond_frames=2)
    kw = dict(num_inference_steps=10, guidance_scale=3.0, seed=2, progress=False)
    ref = p("a red circle", 6, **kw).frames
    assert [c[0][0] for c in spy.calls] == [2] * 10  # every step guided: two branches
    spy.calls.clear()
    torch.testing.assert_close(p("a red circle", 6, guidance_interval=(0, 1), **kw).frames, ref)
    spy.calls.clear()
    half = p("a red circle", 6, guidance_interval=(0.0, 0.5), **kw).frames
    p.scheduler.set_timesteps(10)
    guided = [float(t) / 1000 <= 0.5 for t in p.scheduler.timesteps]
    assert 0 < sum(guided) < 10
    assert [c[0][0] for c in spy.calls] == [2 if g else 1 for g in guided]
    assert not np.array_equal(half, ref)
    # nowhere guided is scale 1, which is the conditional output in one pass
    one = p("a red circle", 6, **(kw | {"guidance_scale": 1.0})).frames
    spy.calls.clear()
    none = p("a red circle", 6, guidance_interval=(0.995, 1.0), **kw).frames
    assert [c[0][0] for c in spy.calls] == [1] * 10
    np.testing.assert_array_equal(none, one)
    # the pipeline's default applies when the call gives none
    p.defaults["guidance_interval"] = (0.0, 0.5)
    np.testing.assert_array_equal(p("a red circle", 6, **kw).frames, half)
    for bad in ((0.5, 0.2), (-0.1, 0.5), (0, 2), "x", (0.1,)):
        with pytest.raises(ValueError, match="guidance_interval"):
            p("a red circle", 6, guidance_interval=bad, **kw)


def test_the_first_chunk_is_the_best_of_its_candidates_by_the_scorer():
    """K candidates are K first chunks drawn one after another from the call's generator;
    the scorer sees all of them with the prompt and the video starts with the one it
    scores highest."""
    seen = []

    def scorer(candidates, prompt):
        seen.append((candidates.copy(), prompt))
        return -np.abs(np.arange(len(candidates)) - 2.0)  # prefers the third

    p = pipe(first_chunk_scorer=scorer)
    kw = dict(num_inference_steps=2, seed=5, progress=False)
    one = p("a red circle", 6, **kw).frames
    assert not seen  # one candidate: no choice, the scorer is not asked
    out = p("a red circle", 10, first_chunk_candidates=4, **kw)
    ((cands, prompt),) = seen
    assert prompt == "a red circle" and cands.shape == (4, 6, 8, 8, 3)
    np.testing.assert_array_equal(cands[0], one)  # the first candidate is the plain sample
    assert len({c.tobytes() for c in cands}) == 4  # each candidate its own noise
    np.testing.assert_array_equal(out.frames[:6], cands[2])
    assert out.frames.shape == (10, 8, 8, 3)
    # the pipeline's default applies when the call gives none
    p.defaults["first_chunk_candidates"] = 4
    seen.clear()
    np.testing.assert_array_equal(p("a red circle", 10, **kw).frames, out.frames)
    assert len(seen) == 1


def test_every_later_chunk_is_the_best_of_its_candidates_by_the_scorer():
    """With chunk_candidates=K each later chunk is sampled K times from the same
    conditioning frames; the scorer reads each candidate as a chunk (the conditioning
    frames as yielded, then its new frames) and the video goes on from the one it scores
    highest, so the next chunk is conditioned on the chosen frames."""
    seen = []

    def scorer(candidates, prompt):
        seen.append(candidates.copy())
        return candidates[:, -2:].astype(float).mean((1, 2, 3, 4))  # the brightest new frames

    p = pipe(first_chunk_scorer=scorer)
    kw = dict(num_inference_steps=2, seed=5, progress=False)
    one = p("a red circle", 14, **kw).frames
    assert not seen  # one candidate per chunk: the scorer is not asked
    out = p("a red circle", 14, chunk_candidates=3, **kw).frames
    assert out.shape == one.shape == (14, 8, 8, 3)  # chunks of 6 on 2: 6 + 4 + 4
    assert len(seen) == 2 and all(c.shape == (3, 6, 8, 8, 3) for c in seen)
    np.testing.assert_array_equal(out[:6], one[:6])  # the first chunk is made once
    for i, cands in enumerate(seen):
        start = 6 + 4 * i  # where this chunk's new frames go in the video
        np.testing.assert_array_equal(
            cands[:, :2], np.broadcast_to(out[start - 2 : start], (3, 2, 8, 8, 3))
        )
        assert len({c.tobytes() for c in cands}) == 3  # each candidate its own noise
        best = int(np.argmax(cands[:, -2:].astype(float).mean((1, 2, 3, 4))))
        np.testing.assert_array_equal(out[start : start + 4], cands[best, 2:])
    # the pipeline's default applies when the call gives none; one chunk needs no scorer
    p.defaults["chunk_candidates"] = 3
    seen.clear()
    np.testing.assert_array_equal(p("a red circle", 14, **kw).frames, out)
    assert len(seen) == 2
    p.defaults["chunk_candidates"] = 1
    with pytest.raises(ValueError, match="chunk_candidates=2 needs a first_chunk_scorer"):
        pipe()("a red circle", 14, chunk_candidates=2, **kw)
    pipe()("a red circle", 6, chunk_candidates=2, **kw)  # no later chunk: nothing to choose
    with pytest.raises(ValueError, match="chunk_candidates=2 needs a first_chunk_scorer"):
        pipe()("a red circle", 6, chunk_candidates=2, init_frames=out[:2], **kw)  # continues
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunk_candidates must be an integer"):
            p("a red circle", 14, chunk_candidates=bad, **kw)


def test_first_chunk_candidates_are_checked():
    kw = dict(num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="needs a first_chunk_scorer"):
        pipe()("a red circle", 6, first_chunk_candidates=2, **kw)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="first_chunk_candidates must be an integer"):
            pipe(first_chunk_scorer=lambda c, p: np.zeros(len(c)))(
                "a red circle", 6, first_chunk_candidates=bad, **kw
            )
    with pytest.raises(TypeError, match="first_chunk_scorer must be a callable"):
        pipe(first_chunk_scorer="critic")
    for wrong in (lambda c, p: np.zeros(1), lambda c, p: [np.nan, 0.0], lambda c, p: 3.0):
        with pytest.raises(ValueError, match="must return 2 finite scores"):
            pipe(first_chunk_scorer=wrong)("a red circle", 6, first_chunk_candidates=2, **kw)
