import numpy as np
import pytest
import torch

from longseq.data import videoworld as vw
from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from longseq.streaming import StreamingT2VPipeline
from longseq.streaming.critic import CRITIC, CaptionCritic, critic_pairs, standardise


def clip(shape: str, seed: int) -> np.ndarray:
    """8 frames of the world's clip for a caption naming ``shape``, at 16 px."""
    c = vw.clip_for_caption(f"a {shape} wanders slowly", seed=seed)
    start = int(np.argmax(c.visibility(40) >= 1.0))  # from a frame with the object in view
    return c.render(8, 16, start)


def test_the_shipped_critic_prefers_the_clip_of_the_captions_shape():
    critic = CaptionCritic.from_pretrained()
    wins = []
    for i, shape in enumerate(vw.SHAPES):
        for j, other in enumerate(vw.SHAPES):
            if other != shape:
                scores = critic(np.stack([clip(shape, 10 + i), clip(other, 20 + j)]), f"a {shape}")
                assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
                wins.append(scores[0] > scores[1])
    assert all(wins)


def test_pairs_stack_each_frame_with_the_one_three_later():
    video = torch.arange(2 * 3 * 5 * 2 * 2, dtype=torch.float).view(2, 3, 5, 2, 2)
    pairs = critic_pairs(video)
    assert pairs.shape == (2, 2, 6, 2, 2)
    torch.testing.assert_close(pairs[1, 1, :3], video[1, :, 1])
    torch.testing.assert_close(pairs[1, 1, 3:], video[1, :, 4])
    x = torch.randn(4, 6, 8, 8) * 3 + 2
    s = standardise(x)
    torch.testing.assert_close(s.mean((-2, -1)), torch.zeros(4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std((-2, -1), unbiased=False), torch.ones(4, 6), atol=1e-3, rtol=0)
    torch.testing.assert_close(standardise(x, contrast=True), x - x.mean((-2, -1), keepdim=True))


def test_bad_critic_and_inputs_are_named():
    one_frame = FrameEncoder(
        FrameEncoderConfig(size=16, in_channels=3, attributes={"shape": ["a"]})
    )
    with pytest.raises(ValueError, match="in_channels 6"):
        CaptionCritic(one_frame)
    with pytest.raises(ValueError, match="not a frame-pair critic"):
        CaptionCritic.from_pretrained("streaming-frame-encoder")
    critic = CaptionCritic(FrameEncoder(FrameEncoderConfig(**CRITIC)))
    frames = np.random.default_rng(0).integers(0, 255, (3, 8, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(critic(frames, "a dog runs"), np.zeros(3))  # no shape named
    with pytest.raises(ValueError, match=r"\(K, F, H, W, 3\)"):
        critic(np.zeros((8, 16, 16, 3), np.uint8), "a circle")
    with pytest.raises(ValueError, match=r"\(K, F, H, W, 3\)"):
        critic(np.zeros((2, 3, 16, 16, 3), np.uint8), "a circle")


def test_the_shipped_generators_make_their_first_chunk_with_the_first_chunk_base():
    pipe = StreamingT2VPipeline.from_pretrained("streaming-t2v", enhancer=None)
    assert pipe.first_unet is not pipe.unet
    assert isinstance(pipe.first_chunk_scorer, CaptionCritic)
    assert pipe.defaults["first_chunk_candidates"] == 2
    naive = StreamingT2VPipeline.from_pretrained("streaming-naive", enhancer=None)
    first = {k: v for k, v in naive.first_unet.state_dict().items()}
    for k, v in pipe.first_unet.state_dict().items():
        torch.testing.assert_close(first[k], v)
