"""scripts/train_streaming.py on the shipped world: the shape loss, the shape stage and
fine-tunes of shipped memory models on a new base."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longseq import hub
from longseq.data import videoworld as vw
from longseq.models.video_unet import UNetOutput

diffusers = pytest.importorskip("diffusers")
SCRIPT = Path(__file__).parents[2] / "scripts" / "train_streaming.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("train_streaming_recipe", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


class Oracle(torch.nn.Module):
    """Predicts the exact velocity of the clean frames it was given."""

    def __init__(self, sched, x0):
        super().__init__()
        self.sched, self.x0 = sched, x0

    def forward(self, xt, t, text, **cond):
        ab = self.sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        noise = (xt - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return UNetOutput(self.sched.get_velocity(self.x0, noise, t))


def batch(n=6, visibility=True):
    return vw.clip_batch(np.random.default_rng(3), n, 4, 16, 0, visibility=visibility)


def test_the_denoised_estimate_of_a_perfect_prediction_is_the_clean_video(mod):
    frames, _, caps, _ = batch()
    x0 = vw.to_tensor(frames)
    sched = mod.scheduler()
    loss, x0_hat, ab = mod.diffusion_loss(
        Oracle(sched, x0), sched, x0, None, torch.Generator().manual_seed(0), return_x0=True
    )
    assert loss.item() < 1e-6 and ab.shape == (len(caps),) and ((ab > 0) & (ab <= 1)).all()
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=0)


def run_script(mod, monkeypatch, run, *args):
    argv = ["train_streaming.py", "--run-dir", str(run), "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", [*argv, *args])
    mod.main()


@pytest.fixture(scope="module")
def critic_run(mod, tmp_path_factory):
    """A run folder with a briefly trained shape critic (stage critic), stopped one step
    before the end of its schedule so that nothing is exported."""
    run = tmp_path_factory.mktemp("run")
    args = ("--steps", "301", "--stop-at", "300", "--batch", "32", "--lr", "3e-3")
    with pytest.MonkeyPatch.context() as mp:
        run_script(mod, mp, run, "--stage", "critic", *args)
    return run


def test_the_critic_learns_the_shapes_and_refuses_a_missing_run(mod, critic_run, tmp_path):
    acc = mod.critic_accuracy(mod.load_critic(critic_run, "cpu"), "cpu", n=400)
    # 150 steps, chance 0.25 (the recipe's 800 steps: 0.996 shape, 0.999 speed); the speed
    # head needs longer (early on it guesses the speed from the shape, which held-out
    # captions pair differently)
    assert acc.keys() == {"shape", "speed"} and acc["shape"] > 0.6
    with pytest.raises(SystemExit, match="no critic"):
        mod.load_critic(tmp_path, "cpu")


def test_the_critic_sees_scrambled_colours_so_its_loss_has_no_colour_to_ask_for(mod):
    x, targets = mod.critic_batch(np.random.default_rng(0), 48, "cpu")
    assert x.shape == (48, 6, 16, 16) and targets["shape"].shape == targets["speed"].shape == (48,)
    grey = [bool((x[i, 0] == x[i, 1]).all() and (x[i, 1] == x[i, 2]).all()) for i in range(48)]
    assert 5 < sum(grey) < 43  # about a third in grey (without noise), the rest in colour
    pairs, caps = mod.critic_frames(np.random.default_rng(0), 48)
    assert pairs.shape == (48, 2, 16, 16, 3) and len(caps) == 48


def test_the_critic_loss_reads_the_prompted_shape_where_the_object_is_in_view(mod, critic_run):
    frames, _, caps, visible = batch(8)
    critic = mod.load_critic(critic_run, "cpu")
    x0 = vw.to_tensor(frames)
    ab, keep = torch.ones(len(caps)), torch.ones(len(caps), dtype=torch.bool)
    right = mod.critic_loss(critic, x0, ab, caps, visible, keep).item()
    other = {"circle": "cross", "square": "circle", "triangle": "square", "cross": "triangle"}
    wrong_caps = [c.replace(s, other[s]) for c in caps for s in [vw.parse_caption(c)["shape"]]]
    wrong = mod.critic_loss(critic, x0, ab, wrong_caps, visible, keep).item()
    assert 2 * right < wrong
    quick = {"slowly": "quickly", "quickly": "slowly"}
    wrong_speed = [c.replace(s, quick[s]) for c in caps for s in [vw.parse_caption(c)["speed"]]]
    assert right + 0.2 < mod.critic_loss(critic, x0, ab, wrong_speed, visible, keep).item()
    # frames out of view, dropped captions and pure noise (alpha-bar 0) carry nothing
    assert mod.critic_loss(critic, x0, ab, caps, np.zeros_like(visible), keep).item() == 0
    assert mod.critic_loss(critic, x0, ab, caps, visible, ~keep).item() == 0
    assert (
        mod.critic_loss(critic, x0, torch.zeros(len(caps)), wrong_caps, visible, keep).item() == 0
    )


def test_the_shape_stage_and_a_memory_fine_tune_start_from_shipped_weights(
    mod, critic_run, tmp_path, monkeypatch
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(critic_run / "critic", run / "critic")
    common = ("--batch", "2", "--gate-every", "0")
    run_script(
        mod,
        monkeypatch,
        run,
        "--stage",
        "shape",
        "--init-from",
        "streaming-t2v",
        "--steps",
        "1",
        *common,
    )
    # the recipe's learning rate for the shape stage, the command line's steps and batch
    ran = json.loads((run / "shape" / "args.json").read_text())
    assert (ran["lr"], ran["steps"], ran["batch"]) == (mod.LR["shape"], 1, 2) == (1e-4, 1, 2)
    base = torch.load(run / "shape" / "state.pt")["model"]
    shipped = mod.base_weights(run, "cpu", "streaming-t2v")
    assert base.keys() == shipped.keys()
    assert any(not torch.equal(base[k], shipped[k]) for k in base)  # one step moved it
    # a CAM fine-tune, stopped before its end (so nothing is exported): the run's base
    # under the shipped CAM
    before = hub.sha256_file(hub.weights_file("streaming-cam"))
    cam_args = ("--init-from", "streaming-cam", "--steps", "2", "--stop-at", "1", *common)
    run_script(mod, monkeypatch, run, "--stage", "cam", *cam_args)
    state = torch.load(run / "cam" / "state.pt")["model"]
    for k, v in base.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)  # frozen, and the run's
    cam, _ = hub.load("streaming-cam")
    ref = {k: v.float() for k, v in cam.state_dict().items() if k.startswith("cam_")}
    diffs = [(state[k] - v).abs().max().item() for k, v in ref.items()]
    assert 0 < max(diffs) < 0.05  # the shipped CAM, one step on
    assert hub.sha256_file(hub.weights_file("streaming-cam")) == before
    with pytest.raises(SystemExit, match="not a naive model"):
        run_script(mod, monkeypatch, run, "--stage", "naive", *cam_args)


def test_the_recipe_tunes_the_base_for_shape_before_any_memory_model_is_trained(mod):
    order = list(mod.ORDER)
    assert set(order) <= set(mod.STAGES)  # seeds come from STAGES, which only grows
    for stage in mod.MEMORY:
        assert (
            order.index("base") < order.index("critic") < order.index("shape") < order.index(stage)
        )


def test_a_shifted_schedule_multiplies_the_snr_and_keeps_the_denoised_estimate_exact(
    mod, monkeypatch
):
    plain = mod.scheduler().alphas_cumprod.double()
    monkeypatch.setattr(mod, "SNR_SHIFT", 4.0)
    sched = mod.scheduler()
    shifted = sched.alphas_cumprod.double()
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    keep = plain < 0.999  # where the SNR is not numerically infinite
    torch.testing.assert_close(
        snr(shifted)[keep] / snr(plain)[keep], torch.full_like(plain[keep], 4.0), rtol=1e-3, atol=0
    )
    assert (shifted > plain).all()  # less noise at every step
    frames, _, caps, _ = batch()
    x0 = vw.to_tensor(frames)
    _, x0_hat, _ = mod.diffusion_loss(
        Oracle(sched, x0), sched, x0, None, torch.Generator().manual_seed(0), return_x0=True
    )
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=0)


def test_the_object_weight_counts_only_the_object_pixels_more(mod):
    frames, _, caps, _, masks = vw.clip_batch(
        np.random.default_rng(3), 4, 4, 16, 0, visibility=True, masks=True
    )
    x0 = vw.to_tensor(frames)
    sched = mod.scheduler()

    class Zero(torch.nn.Module):
        def forward(self, xt, t, text, **cond):
            return UNetOutput(torch.zeros_like(xt))

    def loss(weight=None):
        gen = torch.Generator().manual_seed(0)
        return mod.diffusion_loss(Zero(), sched, x0, None, gen, weight=weight).item()

    fg = torch.from_numpy(masks).float()[:, None]
    assert loss(torch.ones_like(fg)) == pytest.approx(loss())
    # weight 1 + (k - 1) * mask adds (k - 1) times the error on the object's pixels alone
    assert loss(1 + 4 * fg) == pytest.approx(loss() + 4 * loss(fg))
    assert 0 < loss(fg) < loss()


def test_new_attention_levels_start_as_the_base_and_wrong_weights_are_refused(mod):
    from longseq.models.video_unet import VideoUNet, VideoUNetConfig

    small = dict(sample_size=8, ctx_dim=8, n_text_tokens=4)
    torch.manual_seed(0)
    base = VideoUNet(
        VideoUNetConfig(**small, channels=[16, 16, 16], attn_levels=[False, True, True])
    )
    grown = VideoUNet(VideoUNetConfig(**small, channels=[16, 16, 16], attn_levels=[True] * 3))
    new = mod.load_grown(grown, base.state_dict())
    assert new == ["encoder.levels.0.attn", "up_levels.0.attn"]
    x, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 4, 8)
    t = torch.tensor([900, 50])
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(x, t, text).sample, base.eval()(x, t, text).sample)
    other = VideoUNet(VideoUNetConfig(**small, channels=[16, 16, 24], attn_levels=[True] * 3))
    with pytest.raises(SystemExit, match="do not fit"):
        mod.load_grown(other, base.state_dict())


def test_bad_base_options_are_refused_in_one_line(mod, monkeypatch, tmp_path, capsys):
    for args, msg in (
        (("--base-attn", "1,1"), "--base-attn takes 3 flags"),
        (("--base-attn", "1,2,1"), "--base-attn takes 3 flags"),
        (("--base-size", "18"), "--base-size must be a multiple of 4"),
        (("--snr-shift", "0"), "--snr-shift must be positive"),
        (("--critic-absent", "1"), "--critic-absent must be in [0, 1)"),
        (("--text-pool", "--base", str(tmp_path / "f")), "--text-pool is an option of the"),
    ):
        with pytest.raises(SystemExit):
            run_script(mod, monkeypatch, tmp_path, "--stage", "base", *args)
        assert msg in capsys.readouterr().err


def test_the_critic_can_be_taught_no_object_and_to_read_contrast(mod, monkeypatch, critic_run):
    monkeypatch.setattr(mod, "CRITIC_ABSENT", 0.5)
    monkeypatch.setitem(
        mod.CRITIC, "attributes", {**mod.CRITIC["attributes"], "shape": [*vw.SHAPES, "none"]}
    )
    x, targets = mod.critic_batch(np.random.default_rng(0), 64, "cpu")
    none = targets["shape"] == len(vw.SHAPES)
    assert 10 < int(none.sum()) < 54 and x.shape == (64, 6, 16, 16)
    assert (targets["speed"][none] == -100).all() and (targets["speed"][~none] >= 0).all()
    # a critic trained without the "none" class does not fit: one line, not a size mismatch
    with pytest.raises(SystemExit, match="another --critic-absent"):
        mod.load_critic(critic_run, "cpu")
    frame = torch.rand(2, 3, 16, 16)
    faint = frame.mean((-2, -1), keepdim=True) + 0.5 * (frame - frame.mean((-2, -1), keepdim=True))
    torch.testing.assert_close(mod.standardise(faint), mod.standardise(frame), atol=1e-2, rtol=0)
    monkeypatch.setattr(mod, "CRITIC_CONTRAST", True)
    torch.testing.assert_close(mod.standardise(faint), 0.5 * mod.standardise(frame))


def test_the_pooled_text_path_reads_the_mean_of_the_tokens_that_are_not_padding(
    mod, monkeypatch, tmp_path
):
    from longseq.models.video_unet import VideoUNet, VideoUNetConfig

    small = dict(sample_size=8, ctx_dim=8, n_text_tokens=4, channels=[16, 16])
    torch.manual_seed(0)
    model = VideoUNet(VideoUNetConfig(**small, attn_levels=[False, False], text_pool=True))
    seen = []
    model.text_pool.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    text = torch.randn(2, 4, 8)
    text[0, 2:] = 0  # two padding rows in the first prompt, none in the second
    x, t = torch.randn(2, 3, 2, 8, 8), torch.tensor([500, 500])
    out = model(x, t, text).sample
    torch.testing.assert_close(seen[0], torch.stack([text[0, :2].mean(0), text[1].mean(0)]))
    # it is added to the time embedding: zeroing its last layer gives the model without it
    plain = VideoUNet(VideoUNetConfig(**small, attn_levels=[False, False]))
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain(x, t, text).sample, out)
    torch.nn.init.zeros_(model.text_pool[2].weight)
    torch.nn.init.zeros_(model.text_pool[2].bias)
    torch.testing.assert_close(model(x, t, text).sample, plain(x, t, text).sample)
    # the option reaches the config of the base the stage trains
    monkeypatch.setitem(mod.BASE, "text_pool", False)
    built = []

    def train(stage, args):
        built.append(VideoUNetConfig(**mod.BASE))
        (tmp_path / stage).mkdir()

    monkeypatch.setattr(mod, "train", train)
    run_script(mod, monkeypatch, tmp_path, "--stage", "base", "--text-pool")
    assert built[0].text_pool is True


def test_the_first_chunk_stages_export_the_base_and_the_critic_that_chooses_its_samples(
    mod, monkeypatch, tmp_path
):
    """--stage critic and --stage first export streaming-critic and streaming-first (into
    a copy of the checkpoint folder here); once both exist the first-chunk base's config
    names the critic and the number of samples, which a pipeline given it as its first
    chunk takes; the memory models' configs are left as they are. The first-chunk base
    trains on video starts only, object pixels weighted."""
    import shutil

    from longseq.streaming import StreamingT2VPipeline
    from longseq.streaming.critic import CaptionCritic

    ckpt = tmp_path / "checkpoints"
    shutil.copytree(hub.CHECKPOINT_DIR, ckpt)
    reg = json.loads((ckpt / "registry.json").read_text())
    for name in ("streaming-first", "streaming-critic"):
        reg.pop(name, None)
        shutil.rmtree(ckpt / name, ignore_errors=True)
    (ckpt / "registry.json").write_text(json.dumps(reg))
    memory = {
        m: (ckpt / m / "config.json").read_text() for m in ("streaming-t2v", "streaming-naive")
    }
    monkeypatch.setattr(hub, "CHECKPOINT_DIR", ckpt)
    monkeypatch.setattr(hub, "REGISTRY_FILE", ckpt / "registry.json")
    batches = []
    real = mod.vw.clip_batch

    def spy(rng, batch, n, size, max_start, **kw):
        batches.append((max_start, kw.get("masks")))
        return real(rng, batch, n, size, max_start, **kw)

    monkeypatch.setattr(mod.vw, "clip_batch", spy)
    run = tmp_path / "run"
    args = ("--steps", "2", "--batch", "2", "--gate-every", "0")
    run_script(mod, monkeypatch, run, "--stage", "first", *args)
    assert batches == [(0, True), (0, True)]  # video starts, object pixels weighted
    first_cfg = ckpt / "streaming-first" / "config.json"
    assert "first_chunk_scorer" not in json.loads(first_cfg.read_text())["streaming"]
    run_script(mod, monkeypatch, run, "--stage", "critic", "--steps", "1", "--batch", "4")
    cfg = json.loads(first_cfg.read_text())["streaming"]
    assert cfg["first_chunk_scorer"] == "streaming-critic"
    assert cfg["sampling"]["first_chunk_candidates"] == mod.FIRST_CANDIDATES == 2
    for m, text in memory.items():
        assert (ckpt / m / "config.json").read_text() == text
    pipe = StreamingT2VPipeline.from_pretrained(
        "streaming-naive", None, first_chunk="streaming-first"
    )
    first, _ = hub.load("streaming-first")
    for k, v in first.state_dict().items():
        torch.testing.assert_close(pipe.first_unet.state_dict()[k], v)
    assert isinstance(pipe.first_chunk_scorer, CaptionCritic)
    assert pipe.defaults["first_chunk_candidates"] == 2


def test_partial_captions_name_part_of_a_caption_in_its_order(mod):
    full = {vw.caption_of(a) for a in vw.all_captions()}
    parts = mod.partial_captions()
    sizes = [len(v) for v in vw.CAPTION_ATTRIBUTES.values()]  # 4 shapes, 3 motions, 2 speeds
    # every strict, non-empty subset of the three words of every caption, once
    expected = sizes[0] + sizes[1] + sizes[2] + sizes[0] * sizes[1]
    expected += sizes[0] * sizes[2] + sizes[1] * sizes[2]
    assert len(parts) == len(set(parts)) == expected and not full & set(parts)
    rng = np.random.default_rng(0)
    kept = np.zeros(3)
    for _ in range(600):
        cap = "a triangle bounces quickly"
        part = mod.partial_caption(rng, cap)
        named = mod.vw.parse_caption(part)
        assert part in parts and 0 < len(named) < 3
        assert part == "a " + " ".join(named.values())  # shape, motion, speed order
        kept += [k in named for k in ("shape", "motion", "speed")]
    # each word kept with probability 1/2, given that one to two of three are kept: 1/2
    np.testing.assert_allclose(kept / 600, 0.5, atol=0.07)


def test_partial_captions_reach_the_first_chunk_base_and_not_the_memory_stages(
    mod, monkeypatch, tmp_path
):
    told = []
    real = mod.partial_caption
    monkeypatch.setattr(mod, "partial_caption", lambda rng, c: told.append(c) or real(rng, c))
    args = ("--steps", "3", "--stop-at", "2", "--batch", "4", "--gate-every", "0")
    run_script(
        mod, monkeypatch, tmp_path / "a", "--stage", "first", *args, "--partial-captions", "1"
    )
    assert len(told) == 8  # every caption of 2 batches of 4 cut
    told.clear()
    run_script(mod, monkeypatch, tmp_path / "b", "--stage", "base", *args)
    assert told == []  # the base's recipe: whole captions
    with pytest.raises(SystemExit):
        run_script(mod, monkeypatch, tmp_path / "c", "--stage", "first", "--partial-captions", "2")


def test_held_out_captions_given_on_the_command_line_are_never_trained_on(
    mod, monkeypatch, tmp_path
):
    monkeypatch.setattr(vw, "HELD_OUT", vw.HELD_OUT)  # restored after the test
    drawn = []
    real = mod.vw.clip_batch

    def spy(*a, **kw):
        out = real(*a, **kw)
        drawn.extend(out[2])
        return out

    monkeypatch.setattr(mod.vw, "clip_batch", spy)
    val = "a circle bounces slowly"
    args = ("--steps", "3", "--stop-at", "2", "--batch", "64", "--gate-every", "0")
    run_script(mod, monkeypatch, tmp_path / "a", "--stage", "base", *args, "--hold-out", val)
    assert val not in drawn and len(set(drawn)) == 24 - 4 - 1  # every other caption drawn
    assert val in vw.HELD_OUT and vw.caption_split(vw.parse_caption(val)) == "test"
    with pytest.raises(SystemExit):
        run_script(mod, monkeypatch, tmp_path / "b", "--stage", "base", "--hold-out", "a blob")
