"""A diffusers text-to-video folder through the API and the CLI."""

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.streaming import StreamingT2VPipeline, attach_memory
from longseq.streaming.memory import StreamingUNet

from .conftest import TEXT_TOKENS

diffusers = pytest.importorskip("diffusers")


def test_a_latent_folder_loads_and_streams(t2v_folders):
    pipe = StreamingT2VPipeline.from_pretrained(t2v_folders["latent"])
    assert pipe.vae is not None and pipe.mode == "replace" and pipe.enhancer is None
    assert (pipe.chunk_frames, pipe.cond_frames) == (16, 8)  # the paper's
    tokens = pipe.text_encoder(["a red circle"])
    assert tokens.shape == (1, TEXT_TOKENS, 32)
    # the folder's own text encoder and tokenizer, as diffusers computes the states
    ids = pipe.text_encoder.tokenizer(
        ["a red circle"],
        padding="max_length",
        truncation=True,
        max_length=TEXT_TOKENS,
        return_tensors="pt",
    ).input_ids
    torch.testing.assert_close(tokens, pipe.text_encoder.model(ids)[0])
    pipe.chunk_frames, pipe.cond_frames = 4, 2
    out = pipe("a red circle", 6, num_inference_steps=2, progress=False)
    assert out.frames.shape == (6, 8, 8, 3)  # 4x4 latents through the 2x VAE


def test_a_folder_with_trained_cam_and_apm_beside_it(t2v_copy):
    folder = t2v_copy("pixel")
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet")
    model = attach_memory(
        unet, image_dim=64, n_text_tokens=TEXT_TOKENS, chunk_frames=4, cond_frames=2
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("apm.") and n.endswith("alpha"):
                p.fill_(1.0)
    model.save_memory(folder / "streaming")
    pipe = StreamingT2VPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, StreamingUNet) and pipe.mode == "cam" and pipe.apm
    assert (pipe.chunk_frames, pipe.cond_frames) == (4, 2)
    assert pipe.unet.apm.mixers[0].alpha.item() == 1.0
    out = pipe("a red circle", 6, num_inference_steps=2, progress=False)
    assert out.frames.shape == (6, 8, 8, 3) and out.seams == [4]


def test_what_a_folder_lacks_is_named_in_one_line(t2v_copy, tmp_path):
    folder = t2v_copy("latent")
    shutil.rmtree(folder / "tokenizer")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        Exception, match="missing unet/diffusion_pytorch_model.safetensors, tokenizer/"
    ) as e:
        StreamingT2VPipeline.from_pretrained(folder)
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="neither a longseq checkpoint"):
        StreamingT2VPipeline.from_pretrained(empty)


def test_the_cli_generates_from_a_folder(t2v_folders, tmp_path):
    out = tmp_path / "v.gif"
    r = CliRunner().invoke(
        app,
        [
            "streaming",
            "generate",
            "a red circle",
            "--model",
            str(t2v_folders["pixel"]),
            "--frames",
            "18",
            "--steps",
            "1",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "no enhancer" in r.output and out.exists()
    bad = tmp_path / "bad"
    shutil.copytree(t2v_folders["pixel"], bad)
    shutil.rmtree(bad / "scheduler")
    r = CliRunner().invoke(
        app, ["streaming", "generate", "x", "--model", str(bad), "-o", str(tmp_path / "w.gif")]
    )
    assert r.exit_code == 2 and "missing scheduler/scheduler_config.json" in r.output
    assert "Traceback" not in r.output


def test_a_folder_with_a_naive_model_makes_its_first_chunk_with_the_base(t2v_copy):
    from longseq.streaming.memory import ConcatUNet

    folder = t2v_copy("pixel")
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet")
    ConcatUNet(unet, dict(chunk_frames=4, cond_frames=2)).save_memory(folder / "streaming")
    pipe = StreamingT2VPipeline.from_pretrained(folder)
    assert pipe.mode == "concat" and isinstance(pipe.unet, ConcatUNet)
    assert pipe.first_unet.config.in_channels == 3  # the folder's own UNet
    out = pipe("a red circle", 6, num_inference_steps=1, progress=False)
    assert out.frames.shape == (6, 8, 8, 3)


def test_memory_picks_one_of_several_models_trained_on_one_base(t2v_copy, tmp_path):
    from longseq.streaming.memory import ConcatUNet

    folder = t2v_copy("pixel")
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet")
    attach_memory(unet, apm=False, chunk_frames=4, cond_frames=2).save_memory(folder / "streaming")
    ConcatUNet(unet, dict(chunk_frames=4, cond_frames=2)).save_memory(tmp_path / "naive")
    assert StreamingT2VPipeline.from_pretrained(folder).mode == "cam"  # streaming/ by default
    naive = StreamingT2VPipeline.from_pretrained(folder, memory=tmp_path / "naive")
    assert naive.mode == "concat" and naive.chunk_frames == 4
    alone = StreamingT2VPipeline.from_pretrained(folder, memory=False)
    assert alone.mode == "replace" and isinstance(alone.unet, diffusers.UNet3DConditionModel)
    with pytest.raises(Exception, match="holds no trained CAM/APM or naive weights") as e:
        StreamingT2VPipeline.from_pretrained(folder, memory=tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="memory applies to a diffusers folder"):
        StreamingT2VPipeline.from_pretrained("streaming-t2v", None, memory=tmp_path / "naive")
    common = ["streaming", "generate", "a red circle", "--model", str(folder), "--frames", "6"]
    common += ["--steps", "1", "--no-enhance"]
    for extra in (["--memory", "none"], ["--hold-cond"]):
        r = CliRunner().invoke(app, [*common, *extra, "-o", str(tmp_path / "a.gif")])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*common, "--memory", str(tmp_path), "-o", str(tmp_path / "b.gif")])
    assert r.exit_code == 2 and "holds no trained CAM/APM" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "b.gif").exists()


def test_hold_cond_holds_the_conditioning_frames_as_replace_does(t2v_copy):
    """A fresh CAM computes the base: held (the default), it streams exactly what the base
    alone does in "replace" mode; free, exactly what the base does with its chunks left
    unconditioned."""
    folder = t2v_copy("pixel")
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet")
    attach_memory(unet, n_text_tokens=TEXT_TOKENS, chunk_frames=4, cond_frames=2).save_memory(
        folder / "streaming"
    )
    cam = StreamingT2VPipeline.from_pretrained(folder)
    alone = StreamingT2VPipeline.from_pretrained(folder, memory=False)
    alone.chunk_frames, alone.cond_frames = 4, 2
    run = dict(num_inference_steps=2, seed=3, progress=False, guidance_scale=1.0)
    held, free = cam("a red circle", 8, **run), cam("a red circle", 8, hold_cond=False, **run)
    np.testing.assert_allclose(held.frames, alone("a red circle", 8, **run).frames, atol=1)
    np.testing.assert_allclose(
        free.frames, alone("a red circle", 8, hold_cond=False, **run).frames, atol=1
    )
    assert np.abs(held.frames[4:].astype(int) - free.frames[4:]).mean() > 1  # it matters
    np.testing.assert_array_equal(cam("a red circle", 8, hold_cond=True, **run).frames, held.frames)
    cam.defaults["hold_cond"] = False  # the pipeline's default, as a checkpoint may set it
    np.testing.assert_array_equal(cam("a red circle", 8, **run).frames, free.frames)
    cam.defaults["hold_cond"] = None  # the model's way: free for a model with memory ...
    np.testing.assert_array_equal(cam("a red circle", 8, **run).frames, free.frames)
    alone.defaults["hold_cond"] = None  # ... held without it
    np.testing.assert_array_equal(alone("a red circle", 8, **run).frames, held.frames)
    with pytest.raises(ValueError, match="hold_cond must be True, False or None"):
        cam("a red circle", 8, hold_cond="yes", **run)


def test_a_folder_enhancer_refines_with_the_generators_vae_and_text(t2v_folders, tmp_path):
    pipe = StreamingT2VPipeline.from_pretrained(
        t2v_folders["latent"], enhancer=t2v_folders["latent"]
    )
    assert isinstance(pipe.enhancer, diffusers.UNet3DConditionModel)
    video = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    out = pipe.enhance(
        video, "a red circle", num_inference_steps=2, chunk_frames=4, overlap=2, progress=False
    )
    assert out.frames.shape == (6, 8, 8, 3) and out.seams == [3]
    with pytest.raises(ValueError, match="must be a diffusers folder"):
        StreamingT2VPipeline.from_pretrained(t2v_folders["latent"], enhancer="streaming-t2v")


def test_a_new_folder_holds_an_untrained_unet_with_the_given_text_encoder(tmp_path):
    from longseq.streaming.folder import created_here, new_folder, small_unet3d

    from .conftest import TEXT_DIM, tiny_clip

    text, tok = tiny_clip()
    enc = tmp_path / "encoder"
    text.save_pretrained(enc)
    tok.save_pretrained(enc)
    unet = small_unet3d(8, (16, 16), (True, False), cross_attention_dim=TEXT_DIM)
    folder = new_folder(tmp_path / "new", unet, enc, max_tokens=5)
    assert created_here(folder) and not created_here(enc)
    pipe = StreamingT2VPipeline.from_pretrained(folder, None, "cpu")
    assert pipe.text_encoder(["a red circle"]).shape == (1, 5, TEXT_DIM)
    loaded = dict(pipe.unet.named_parameters())
    for name, p in unet.named_parameters():
        torch.testing.assert_close(loaded[name], p, rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        new_folder(folder, unet, enc)
    wide = small_unet3d(8, (16, 16), (True, False), cross_attention_dim=TEXT_DIM + 1)
    with pytest.raises(ValueError, match="33-wide text states, the text encoder .* gives 32"):
        new_folder(tmp_path / "other", wide, enc)
    with pytest.raises(ValueError, match="one attention flag per level"):
        small_unet3d(8, (16, 16), (True,))
