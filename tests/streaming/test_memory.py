"""CAM and APM: one implementation, on the shipped VideoUNet and on diffusers UNets."""

from pathlib import Path

import numpy as np
import pytest
import torch

from longseq import hub
from longseq.streaming import StreamingT2VPipeline, attach_memory, load_memory

from .conftest import TEXT_DIM, tiny_unet3d

diffusers = pytest.importorskip("diffusers")

D = TEXT_DIM  # text width
N_TEXT = 4


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 8, 8, generator=g)
    text = torch.randn(2, N_TEXT, D, generator=g)
    cond = torch.randn(2, 4, 2, 8, 8, generator=g)
    anchor = torch.randn(2, 8, generator=g)
    return x, text, cond, anchor


def open_gates(model) -> None:
    """Give every zero-initialised output of CAM and APM a non-zero value."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("cam.", "apm.")) and not p.any():
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.ndim == 0 else 0))


@pytest.mark.parametrize("cam, apm", [(True, True), (True, False), (False, True)])
def test_fresh_cam_and_apm_leave_a_diffusers_unet_unchanged(cam, apm):
    unet = tiny_unet3d(4, 8)
    x, text, cond, anchor = inputs()
    with torch.no_grad():
        ref = unet(x, 400, encoder_hidden_states=text).sample
    model = attach_memory(unet, cam=cam, apm=apm, image_dim=8, n_text_tokens=N_TEXT)
    with torch.no_grad():
        out = model(x, 400, text, cond_frames=cond, anchor_embeds=anchor).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    open_gates(model)
    with torch.no_grad():
        opened = model(x, 400, text, cond_frames=cond, anchor_embeds=anchor).sample
        other = model(x, 400, text, cond_frames=-cond, anchor_embeds=-anchor).sample
    assert (opened - ref).abs().max() > 1e-3  # the memories now act ...
    assert (opened - other).abs().max() > 1e-3  # ... and read their inputs
    if apm:  # prompt states of another length than APM mixes: named, not misread
        with pytest.raises(ValueError, match=f"APM mixes {N_TEXT} text tokens, the prompt"):
            model(x, 400, text[:, :-1], cond_frames=cond, anchor_embeds=anchor)


def test_cam_is_a_copy_of_the_encoder_and_injects_through_the_controlnet_hooks():
    unet = tiny_unet3d(4, 8)
    model = attach_memory(unet, apm=False)
    base = dict(unet.named_parameters())
    for name, p in model.cam.named_parameters():
        if name.startswith(("conv_in", "transformer_in", "down_blocks", "mid_block")):
            torch.testing.assert_close(p, base[name], rtol=0, atol=0)
            assert p.data_ptr() != base[name].data_ptr()  # its own, trainable copy
    open_gates(model)
    x, text, cond, _ = inputs()
    down, mid = model.cam(unet, x, 400, text, cond, text)
    with torch.no_grad():
        via_hooks = unet(
            x, 400, text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        out = model(x, 400, text, cond_frames=cond).sample
    torch.testing.assert_close(out, via_hooks)
    assert len(down) == 4  # conv_in, one resnet + downsampler, one resnet


def test_memory_parameters_are_cam_and_apm_and_round_trip(tmp_path: Path):
    unet = tiny_unet3d(4, 8)
    model = attach_memory(unet, image_dim=8, n_text_tokens=N_TEXT, chunk_frames=6, cond_frames=2)
    mem = {id(p) for p in model.memory_parameters()}
    assert not mem & {id(p) for p in unet.parameters()}
    assert mem == {id(p) for n, p in model.named_parameters() if not n.startswith("unet.")}
    open_gates(model)
    model.save_memory(tmp_path / "streaming")
    again = load_memory(tiny_unet3d(4, 8), tmp_path / "streaming")
    assert again.settings["chunk_frames"] == 6 and again.config.cam and again.config.apm
    x, text, cond, anchor = inputs()
    with torch.no_grad():
        a = model(x, 400, text, cond_frames=cond, anchor_embeds=anchor).sample
        b = again(x, 400, text, cond_frames=cond, anchor_embeds=anchor).sample
    torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="memory.safetensors"):
        (tmp_path / "streaming" / "memory.safetensors").unlink()
        load_memory(tiny_unet3d(4, 8), tmp_path / "streaming")
    with pytest.raises(TypeError, match="UNet3DConditionModel"):
        attach_memory(torch.nn.Linear(2, 2))


def test_a_diffusers_unet_with_cam_and_apm_streams_in_the_pipeline():
    from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig

    model = attach_memory(tiny_unet3d(3, 8), image_dim=8, n_text_tokens=N_TEXT)
    open_gates(model)
    torch.manual_seed(1)
    enc = FrameEncoder(FrameEncoderConfig(size=8, channels=[8], dim=8, attributes={"a": ["x"]}))
    pipe = StreamingT2VPipeline(
        model,
        diffusers.DDIMScheduler(num_train_timesteps=1000),
        lambda ps: torch.stack([torch.full((N_TEXT, D), float(len(p))) for p in ps]),
        image_encoder=enc,
        chunk_frames=6,
        cond_frames=2,
    )
    assert pipe.mode == "cam" and pipe.apm
    out = pipe("a red circle", 10, num_inference_steps=2, progress=False)
    assert out.frames.shape == (10, 8, 8, 3) and out.seams == [6]


SHIPPED = Path(__file__).parent / "data" / "shipped_outputs.npz"


@pytest.mark.parametrize("name", ["streaming-t2v", "streaming-cam", "streaming-naive-apm"])
def test_shipped_models_give_the_outputs_they_gave_before_the_shared_components(name):
    """Reference: the shipped checkpoints through the VideoUNet as it was before its CAM and
    APM moved to longseq.streaming.memory (same input, same seed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 16, 16, generator=g)
    text = torch.randn(1, 16, 384, generator=g)
    cond = torch.randn(1, 3, 4, 16, 16, generator=g).clamp(-1, 1)
    anchor = torch.randn(1, 64, generator=g)
    m, _ = hub.load(name, "cpu")
    kw = dict(cond_frames=cond, anchor_embeds=anchor) if m.config.apm else dict(cond_frames=cond)
    with torch.no_grad():
        out = m(x, torch.tensor(500), text, **kw).sample.float().numpy()
    np.testing.assert_allclose(out, np.load(SHIPPED)[name], rtol=0, atol=1e-5)


def test_a_fresh_naive_model_computes_the_unet_and_reads_the_last_frame():
    from longseq.streaming.memory import ConcatUNet

    unet = tiny_unet3d(4, 8)
    x, text, cond, _ = inputs()
    with torch.no_grad():
        ref = unet(x, 400, encoder_hidden_states=text).sample
        naive = ConcatUNet(unet)
        out = naive(x, 400, text, cond_frames=cond).sample
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        naive.unet.conv_in.weight[:, 4:].normal_()
        a = naive(x, 400, text, cond_frames=cond).sample
        b = naive(x, 400, text, cond_frames=torch.cat([-cond[:, :, :1], cond[:, :, 1:]], 2)).sample
        c = naive(x, 400, text, cond_frames=-cond).sample
    torch.testing.assert_close(a, b)  # only the last conditioning frame is read
    assert (a - c).abs().max() > 1e-3
    assert naive.config.in_channels == 4 and naive.unet.config.in_channels == 8
