import numpy as np
import pytest
import torch

from longseq import hub
from longseq.data import videoworld as vw
from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig
from longseq.streaming import StreamingT2VPipeline
from longseq.streaming.critic import CRITIC, CaptionCritic, critic_pairs, standardise

from .conftest import clip_text_config, clip_tokenizer


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


def test_a_shipped_generator_takes_the_first_chunk_base_with_its_critic(t2v_folders):
    default = StreamingT2VPipeline.from_pretrained("streaming-t2v", enhancer=None)
    assert default.first_unet is default.unet and default.first_chunk_scorer is None
    assert default.defaults["first_chunk_candidates"] == 1  # as trained: its own base
    first, _ = hub.load("streaming-first")
    for name in ("streaming-t2v", "streaming-naive"):
        pipe = StreamingT2VPipeline.from_pretrained(name, None, first_chunk="streaming-first")
        assert isinstance(pipe.first_chunk_scorer, CaptionCritic)
        assert pipe.defaults["first_chunk_candidates"] == 2  # streaming-first's config
        assert pipe.defaults["num_inference_steps"] == 50  # the generator's own settings
        for k, v in first.state_dict().items():
            torch.testing.assert_close(pipe.first_unet.state_dict()[k], v)
    with pytest.raises(ValueError, match="'streaming-naive' is not a text-to-video model"):
        StreamingT2VPipeline.from_pretrained("streaming-t2v", None, first_chunk="streaming-naive")
    with pytest.raises(ValueError, match="not a text-to-video model"):
        StreamingT2VPipeline.from_pretrained("streaming-t2v", None, first_chunk="streaming-critic")
    with pytest.raises(ValueError, match="first_chunk applies to longseq checkpoints"):
        StreamingT2VPipeline.from_pretrained(
            t2v_folders["pixel"], None, first_chunk="streaming-first"
        )


def tiny_clip_folder(path):
    """A tiny random transformers CLIPModel with its processor (character vocabulary),
    saved with save_pretrained: the layout of a real CLIP checkpoint."""
    transformers = pytest.importorskip("transformers")
    tok, n = clip_tokenizer(32)
    cfg = transformers.CLIPConfig(
        text_config=clip_text_config(n, 32, 32),
        vision_config=dict(
            image_size=16,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(path)
    size = {"shortest_edge": 16}
    image = transformers.CLIPImageProcessor(size=size, crop_size={"height": 16, "width": 16})
    transformers.CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(path)
    return path


def test_the_clip_scorer_is_the_mean_text_frame_cosine_of_transformers_clip(tmp_path):
    from transformers import AutoProcessor, CLIPModel

    from longseq.streaming import ClipScorer

    folder = tiny_clip_folder(tmp_path / "clip")
    scorer = ClipScorer.from_pretrained(folder)
    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 16, 16, 3), dtype=np.uint8)
    scores = scorer(frames, "a red circle")
    model, proc = CLIPModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    ref = []
    for chunk in frames:  # one frame at a time, as transformers' own model reads it
        cos = []
        for frame in chunk:
            with torch.no_grad():
                out = model(**proc(text=["a red circle"], images=[frame], return_tensors="pt"))
            img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
            txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
            cos.append(float(img @ txt.T))
        ref.append(np.mean(cos))
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    assert len(set(np.round(scores, 6))) == 3  # the chunks differ
    with pytest.raises(FileNotFoundError, match="not a CLIP folder"):
        ClipScorer.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"\(K, F, H, W, 3\)"):
        scorer(frames[0], "a red circle")


def test_a_pipeline_keeps_the_first_chunk_clip_scores_best(tmp_path):
    from longseq.models.video_unet import VideoUNet, VideoUNetConfig
    from longseq.streaming import ClipScorer

    diffusers = pytest.importorskip("diffusers")
    scorer = ClipScorer.from_pretrained(tiny_clip_folder(tmp_path / "clip"))
    seen = []

    def spy(candidates, prompt):
        seen.append((candidates, scorer(candidates, prompt)))
        return seen[-1][1]

    torch.manual_seed(0)
    unet = VideoUNet(
        VideoUNetConfig(sample_size=16, channels=[8, 16], attn_levels=[False, True], heads=2)
    ).eval()
    text = VideoUNetConfig().ctx_dim
    pipe = StreamingT2VPipeline(
        unet,
        diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2"),
        lambda prompts: torch.ones(len(prompts), 4, text),
        chunk_frames=6,
        cond_frames=2,
        first_chunk_scorer=spy,
    )
    video = pipe("a red circle", 6, num_inference_steps=2, first_chunk_candidates=3, progress=False)
    ((candidates, scores),) = seen
    np.testing.assert_array_equal(video.frames, candidates[int(np.argmax(scores))])
