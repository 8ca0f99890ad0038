"""Any denoiser: the protocol, the callable adapter, latents left unbounded, and the
enhancer's blending as functions."""

import numpy as np
import pytest
import torch

from longseq.data.videoworld import to_tensor, to_uint8
from longseq.streaming import (
    StreamingT2VPipeline,
    as_denoiser,
    chunk_starts,
    join_chunks,
    randomized_blending,
)

from .conftest import tiny_vae

diffusers = pytest.importorskip("diffusers")


def text(prompts):
    return torch.stack([torch.full((3, 8), float(len(p))) for p in prompts])


def ddim(**kw):
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, set_alpha_to_one=True, clip_sample=False, **kw
    )


def test_latents_outside_the_unit_interval_are_not_clamped():
    """A denoiser that predicts the clean latent 3.0 everywhere leads DDIM to 3.0; the video
    is the VAE's decoding of 3.0 (scaled back by the VAE's factor), pixels clamped after."""
    vae = tiny_vae()
    assert vae.config.scaling_factor != 1
    unet = as_denoiser(lambda x, t, ctx: torch.full_like(x, 3.0), sample_size=4, in_channels=4)
    pipe = StreamingT2VPipeline(
        unet, ddim(prediction_type="sample"), text, vae=vae, chunk_frames=3, cond_frames=1
    )
    frames = pipe("a red circle", 3, num_inference_steps=3, progress=False).frames

    def decoded(value):
        z = torch.full((1, 4, 4, 4), value / vae.config.scaling_factor)
        with torch.no_grad():
            return to_uint8(vae.decode(z).sample.clamp(-1, 1)[:, :, None])[0]

    np.testing.assert_array_equal(frames, np.repeat(decoded(3.0), 3, 0))
    assert not np.array_equal(decoded(3.0), decoded(1.0))  # a clamp would have shown


def test_conditioning_frames_reach_the_denoiser_as_scaled_latents():
    seen = []

    def fn(x, t, ctx, cond_frames=None):
        seen.append(cond_frames)
        return torch.zeros_like(x)

    vae = tiny_vae()
    unet = as_denoiser(fn, sample_size=4, in_channels=4, cam=True)
    pipe = StreamingT2VPipeline(unet, ddim(), text, vae=vae, chunk_frames=3, cond_frames=1)
    frame = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    pipe.continue_chunk("a red circle", frame, num_inference_steps=1)
    with torch.no_grad():
        ref = (
            vae.encode(to_tensor(frame)[None][:, :, 0]).latent_dist.mode()
            * vae.config.scaling_factor
        )
    torch.testing.assert_close(seen[0][0, :, 0], ref[0])


def test_a_plain_callable_is_a_denoiser_through_the_adapter():
    calls = []

    def fn(x, t, ctx):
        calls.append(tuple(x.shape))
        return 0.1 * x

    pipe = StreamingT2VPipeline(
        as_denoiser(fn, sample_size=8, in_channels=3), ddim(), text, chunk_frames=4, cond_frames=2
    )
    out = pipe("a red circle", 7, num_inference_steps=2, progress=False)
    assert out.frames.shape == (7, 8, 8, 3) and out.seams == [4, 6]
    assert set(calls) == {(2, 3, 4, 8, 8)}  # guidance batch of 2, 4-frame chunks
    with pytest.raises(TypeError, match="as_denoiser"):
        StreamingT2VPipeline(fn, ddim(), text)
    with pytest.raises(ValueError, match="returned shape"):
        bad = as_denoiser(lambda x, t, c: x[:, :, :1], sample_size=8, in_channels=3)
        StreamingT2VPipeline(bad, ddim(), text, chunk_frames=4, cond_frames=2)("a", 4)
    with pytest.raises(ValueError, match="sample_size"):
        as_denoiser(fn, sample_size=0, in_channels=3)


def test_randomized_blending_takes_each_overlap_from_left_then_right_at_a_random_cut():
    starts = [0, 4, 7, 10]  # overlaps 2, 3, 3 of 6-frame chunks
    cuts = {i: set() for i in range(len(starts) - 1)}
    rng = np.random.default_rng(0)
    for _ in range(60):
        chunks = [torch.full((1, 1, 6, 1, 1), float(i)) for i in range(len(starts))]
        out = randomized_blending(chunks, starts, rng)
        for i in range(len(starts) - 1):
            o = starts[i] + 6 - starts[i + 1]
            left, right = out[i][0, 0, 6 - o :, 0, 0], out[i + 1][0, 0, :o, 0, 0]
            torch.testing.assert_close(left, right)  # both chunks hold the same overlap
            cut = int((left == i).sum())
            assert left.tolist() == [i] * cut + [i + 1] * (o - cut)
            cuts[i].add(cut)
        assert out[0][0, 0, :4].flatten().tolist() == [0] * 4  # outside overlaps: kept
    assert cuts == {0: {0, 1, 2}, 1: {0, 1, 2, 3}, 2: {0, 1, 2, 3}}
    fixed = randomized_blending(chunks, starts, rng, fixed_cut=True)
    assert fixed[1][0, 0, 3:, 0, 0].tolist() == [1, 2, 2]


def test_join_chunks_takes_each_frame_from_the_chunk_whose_half_it_lies_in():
    starts = chunk_starts(14, 6, 3)
    chunks = [
        torch.arange(s, s + 6).float().view(1, 1, 6, 1, 1) + 100 * i for i, s in enumerate(starts)
    ]
    video, seams = join_chunks(chunks, starts)
    owner = []
    for f in range(14):  # naive: the last chunk whose overlap middle is at or before f
        i = max(i for i, s in enumerate(starts) if i == 0 or f >= (starts[i - 1] + 6 + s) // 2)
        owner.append(i)
    assert video.flatten().tolist() == [f + 100 * owner[f] for f in range(14)]
    assert seams == [f for f in range(1, 14) if owner[f] != owner[f - 1]]


def tiny_svd():
    torch.manual_seed(0)
    return diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=6,
        out_channels=3,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 32),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 2),
        num_frames=4,
    ).eval()


def test_an_svd_layout_unet_continues_each_chunk_from_the_last_frame_before_it():
    from longseq.streaming import ImageToVideoDenoiser

    unet = tiny_svd()
    calls = []
    unet.register_forward_pre_hook(lambda m, args: calls.append([a.clone() for a in args]))
    embeds = torch.randn(1, 1, 32)
    pipe = StreamingT2VPipeline(
        ImageToVideoDenoiser(unet, fps=7, motion_bucket_id=127, noise_aug_strength=0.02),
        diffusers.EulerDiscreteScheduler(prediction_type="v_prediction"),
        lambda prompts: embeds.expand(len(prompts), -1, -1),
        chunk_frames=4,
        cond_frames=1,
    )
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    kw = dict(num_inference_steps=2, guidance_scale=1.5, progress=False)
    chunks = list(pipe.stream("continue", 7, init_frames=image, **kw))
    assert [len(c) for c in chunks] == [1, 3, 3]
    assert len(calls) == 4  # two chunks of two steps
    sample, t, ctx, ids = calls[0]
    assert sample.shape == (2, 4, 6, 8, 8)  # SVD's (B, F, 2C, H, W), guidance batch of 2
    torch.testing.assert_close(ids, torch.tensor([[6.0, 127.0, 0.02]] * 2))
    torch.testing.assert_close(ctx, embeds.expand(2, -1, -1))
    # the image channels of every frame: the given image, then the last frame made before
    img = to_tensor(image)[:, 0]  # (3, H, W) in [-1, 1]
    torch.testing.assert_close(sample[:, :, 3:], img.expand(2, 4, -1, -1, -1))
    last = to_tensor(chunks[1][-1:])[:, 0]
    torch.testing.assert_close(
        calls[2][0][:, :, 3:], last.expand(2, 4, -1, -1, -1), atol=0.01, rtol=0
    )
    # Euler's input scaling: the noise starts at sigma_max and enters the UNet scaled to ~1
    assert 0.5 < sample[:, :, :3].std() < 2
    with pytest.raises(ValueError, match="init_frames"):
        next(pipe.stream("continue", 7, **kw))
    with pytest.raises(TypeError, match="SVD-layout"):
        ImageToVideoDenoiser(as_denoiser(lambda x, t, c: x, sample_size=8, in_channels=3))


def test_an_svd_layout_latent_model_decodes_through_its_temporal_vae():
    from longseq.streaming import ImageToVideoDenoiser

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLTemporalDecoder(block_out_channels=(32,), latent_channels=3)
    calls = []
    vae.decoder.register_forward_pre_hook(
        lambda m, args, kw: calls.append(kw.get("num_frames")), with_kwargs=True
    )
    pipe = StreamingT2VPipeline(
        ImageToVideoDenoiser(tiny_svd(), image_latent_scale=1 / vae.config.scaling_factor),
        diffusers.EulerDiscreteScheduler(),
        lambda prompts: torch.zeros(len(prompts), 1, 32),
        vae=vae.eval(),
        chunk_frames=4,
        cond_frames=1,
    )
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    out = pipe("continue", 4, init_frames=image, num_inference_steps=1, progress=False)
    assert out.frames.shape == (4, 8, 8, 3)
    assert calls == [3]  # the new frames of the chunk, decoded as one video
