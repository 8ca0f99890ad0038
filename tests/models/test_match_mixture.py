import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longseq import hub
from longseq.data.flowworld import sample_world
from longseq.kltrace import check_model
from longseq.models.match_mixture import HEADS, MatchMixture, MatchMixtureConfig


def _model(**kw) -> MatchMixture:
    torch.manual_seed(0)
    m = MatchMixture(MatchMixtureConfig(codebook_size=64, **kw)).eval()
    g = torch.Generator().manual_seed(1)
    m.quantizer.codebook.copy_(torch.rand(64, 48, generator=g))
    return m


def _shifted(shift: tuple[float, float], seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured 32 px frame and the same content moved by ``shift`` (dx, dy) pixels,
    both resampled (bilinear) from a 64 px render, so the motion is exact."""
    img = torch.from_numpy(sample_world(seed, 64, 2).render()[0]).float().permute(2, 0, 1)[None]
    yy, xx = torch.meshgrid(torch.arange(32) + 16.5, torch.arange(32) + 16.5, indexing="ij")

    def at(px, py):
        grid = torch.stack([px / 64 * 2 - 1, py / 64 * 2 - 1], -1)[None]
        return F.grid_sample(img, grid, align_corners=False)[0].permute(1, 2, 0)

    return at(xx, yy), at(xx - shift[0], yy - shift[1])


@pytest.mark.parametrize("shift", [(2.0, -1.0), (2.25, -1.5), (-3.5, 0.75)])
def test_matching_recovers_subpixel_translation(shift):
    m = _model()
    f0, f1 = _shifted(shift)
    slots = torch.arange(64)[None]
    disp, cost, _ = m.match(f0.permute(2, 0, 1)[None] / 255, m.quantizer.patchify(f1[None]), slots)
    inner = [r * 8 + c for r in range(1, 7) for c in range(1, 7)]  # sources inside the frame
    err = np.abs(disp[0, inner].numpy() - np.array(shift)).max(1)
    assert (err <= 0.13).mean() >= 0.9  # a patch of plain texture may match elsewhere
    assert np.median(cost[0, inner].numpy()) < 1e-3


def test_patches_are_sampled_in_the_quantizers_layout():
    """At zero displacement the copy hypothesis reads exactly the frame's own patches."""
    m = _model()
    f0, _ = _shifted((0.0, 0.0))
    centres = m.slot_centres(torch.device("cpu"))[None]
    got = m.sample_patches(f0.permute(2, 0, 1)[None] / 255, centres)
    torch.testing.assert_close(got, m.quantizer.patchify(f0[None]), rtol=0, atol=1e-6)


def test_fast_mixture_equals_the_logsumexp_formula():
    m = _model()
    with torch.no_grad():
        m.new_logit.fill_(-1.0)  # give the new-content component visible weight
    f0, f1 = _shifted((1.5, 2.0))
    f0, f1 = f0[None].repeat(3, 1, 1, 1), f1[None].repeat(3, 1, 1, 1)
    revealed = torch.zeros(3, 64, dtype=torch.bool)
    for i in range(3):
        revealed[i, torch.randperm(64, generator=torch.Generator().manual_seed(i))[:7]] = True
    with torch.no_grad():
        fast = m.frame1_logprobs(f0, f1, revealed)
        image0 = f0.permute(0, 3, 1, 2) / 255
        disp, w = m.hypotheses(image0, f1, revealed)
        assert disp.shape == (3, 64, 8, 2) and w.shape == (3, 64, 8)  # null + 7 revealed
        src = m.slot_centres(torch.device("cpu"))[None, :, None] - disp
        patches = m.sample_patches(image0, src.reshape(3, -1, 2)).view(3, 64, 8, -1)
        cb = m.quantizer.codebook
        d2 = ((patches[..., None, :] - cb) ** 2).sum(-1)  # (B, S, H, K), written out
        lq = (-m.log_beta.exp() * d2 + m.code_bias).log_softmax(-1)
        logw = torch.cat([w, m.new_logit.expand(3, 64, 1)], -1).log_softmax(-1)
        comps = torch.cat([lq, m.code_bias.log_softmax(-1).expand(3, 64, 1, -1)], 2)
        naive = torch.logsumexp(logw[..., None] + comps, 2)
    keep = naive > -60  # the fast path floors far-off codes
    torch.testing.assert_close(fast[keep], naive[keep], rtol=1e-4, atol=1e-4)
    assert (fast[~keep] <= -60).all()


@pytest.mark.parametrize("head", HEADS)
def test_heads_give_distributions(head):
    m = _model(head=head)
    f0, f1 = _shifted((1.0, 1.0))
    revealed = torch.zeros(1, 64, dtype=torch.bool)
    revealed[0, ::9] = True
    with torch.no_grad():
        lp = m.frame1_logprobs(f0[None], f1[None], revealed)
    assert lp.shape == (1, 64, 64)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1, 64), rtol=0, atol=1e-5)


def test_the_shift_is_predicted_and_copying_is_the_fallback():
    """Revealed patches of a moved frame make the model predict the moved content; with
    random-access conditioning off it predicts frame 0 in place."""
    m = _model()
    m.quantizer.codebook.copy_(
        m.quantizer.patchify(_shifted((0.0, 0.0))[0][None])[0]  # every patch its own code
    )
    f0, f1 = _shifted((4.0, 0.0))  # one whole patch to the right
    revealed = torch.zeros(1, 64, dtype=torch.bool)
    revealed[0, [9, 20, 35, 50]] = True
    target = m.quantizer.encode(f1[None])[0]
    in_place = m.quantizer.encode(f0[None])[0]
    hidden = (~revealed[0]).nonzero()[:, 0]
    hidden = hidden[hidden % 8 > 0]  # sources inside the frame
    with torch.no_grad():
        moved = m.frame1_logprobs(f0[None], f1[None], revealed)[0].argmax(-1)
        off = _model(reveal_conditioning=False)
        off.quantizer.codebook.copy_(m.quantizer.codebook)
        still = off.frame1_logprobs(f0[None], f1[None], revealed)[0].argmax(-1)
    assert (moved[hidden] == target[hidden]).float().mean() > 0.9
    assert (still[hidden] == in_place[hidden]).float().mean() > 0.9


def test_protocol_checkpoint_round_trip_and_errors(tmp_path):
    m = _model()
    assert check_model(m) is m
    path = hub.save_pretrained(m, tmp_path / "mm", "match_mixture")
    loaded, _ = hub.load(path)
    f0, f1 = _shifted((1.0, -2.0))
    revealed = torch.zeros(2, 64, dtype=torch.bool)
    revealed[:, :5] = True
    args = (f0[None].repeat(2, 1, 1, 1), f1[None].repeat(2, 1, 1, 1), revealed)
    with torch.no_grad():
        torch.testing.assert_close(loaded.frame1_logprobs(*args), m.frame1_logprobs(*args))
    bad = revealed.clone()
    bad[0, 10] = True
    with pytest.raises(ValueError, match="same number"):
        m.frame1_logprobs(args[0], args[1], bad)
    with pytest.raises(ValueError, match="head"):
        MatchMixture(MatchMixtureConfig(head="median"))
    with pytest.raises(TypeError, match="not a frame-pair model"):
        check_model(torch.nn.Linear(2, 2))


def test_training_lowers_the_loss_on_moving_frames():
    m = _model()
    m.train()
    f0, f1 = _shifted((2.5, -1.0))
    frames0, frames1 = f0[None].repeat(4, 1, 1, 1), f1[None].repeat(4, 1, 1, 1)
    revealed = torch.zeros(4, 64, dtype=torch.bool)
    revealed[:, ::8] = True
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = m(frames0, frames1, revealed)[1].item()
    for _ in range(15):
        loss = m(frames0, frames1, revealed)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.1


def test_camera_fit_recovers_an_affine_motion_despite_outliers():
    """Weighted least squares with Geman-McClure reweighting: matches of a rotation + scale +
    translation, a fifth of them replaced by wrong matches, give back the motion."""
    m = _model(camera=True)
    with torch.no_grad():
        m.log_camera_ridge.fill_(-20.0)  # no pull towards a translation
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 40, 2, generator=g) * 32
    ang, s = 0.08, 1.05
    a = s * torch.tensor([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).float()
    centre = torch.tensor([16.0, 16.0])
    truth = (xy - centre) @ a.T + centre + torch.tensor([1.5, -2.0]) - xy
    disp = truth.clone()
    disp[:, ::5] = torch.rand(2, 8, 2, generator=g) * 16 - 8  # wrong matches
    with torch.no_grad():
        coef = m.fit_camera(xy, disp, torch.ones(2, 40), iters=6)
    x = torch.cat([xy / 32 - 0.5, torch.ones(2, 40, 1)], -1)
    torch.testing.assert_close(x @ coef, truth, atol=0.1, rtol=0)
    with torch.no_grad():
        plain = m.fit_camera(xy, disp, torch.ones(2, 40), iters=0)  # least squares alone
    assert (x @ plain - truth).abs().max() > 0.5


@pytest.mark.parametrize("shift", [(2.5, -1.5), (-3.75, 3.25)])
def test_camera_hypothesis_moves_every_slot_with_the_frame(shift):
    """A global translation: the camera hypothesis gives every slot, revealed or not,
    the shift to sub-pixel precision, and every slot weighs it above the null
    hypothesis."""
    m = _model(camera=True)
    f0, f1 = _shifted(shift)
    revealed = torch.zeros(1, 64, dtype=torch.bool)
    revealed[0, torch.randperm(64, generator=torch.Generator().manual_seed(2))[:12]] = True
    with torch.no_grad():
        disp, w = m.hypotheses(f0.permute(2, 0, 1)[None] / 255, f1[None], revealed)
    assert disp.shape == (1, 64, 14, 2) and w.shape == (1, 64, 14)  # null, 12, camera
    torch.testing.assert_close(disp[0, :, -1], torch.tensor(shift).expand(64, 2), atol=0.15, rtol=0)
    torch.testing.assert_close(disp[0, :, 0], torch.zeros(64, 2))  # the null hypothesis
    assert (w[0, :, -1] > w[0, :, 0]).all()  # the camera outweighs "nothing moved"


def test_camera_checkpoint_round_trip(tmp_path):
    m = _model(camera=True)
    with torch.no_grad():
        m.camera_logit.fill_(2.5)
    path = hub.save_pretrained(m, tmp_path / "cam", "match_mixture")
    loaded, _ = hub.load(path)
    assert loaded.config.camera and loaded.camera_logit.item() == 2.5
    f0, f1 = _shifted((1.0, -2.0))
    revealed = torch.zeros(2, 64, dtype=torch.bool)
    revealed[:, 3:9] = True
    args = (f0[None].repeat(2, 1, 1, 1), f1[None].repeat(2, 1, 1, 1), revealed)
    with torch.no_grad():
        lp = loaded.frame1_logprobs(*args)
        torch.testing.assert_close(lp, m.frame1_logprobs(*args))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 64), rtol=0, atol=1e-5)


def test_held_motion_gives_the_same_output_on_the_same_frame():
    m = _model(camera=True)
    f0, f1 = _shifted((1.5, -0.5))
    revealed = torch.zeros(2, 64, dtype=torch.bool)
    revealed[:, 10:26] = True
    f0, f1 = f0[None].repeat(2, 1, 1, 1), f1[None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        plain = m.frame1_logprobs(f0, f1, revealed)
        held = m.frame1_logprobs(f0, f1, revealed, motion=m.motion(f0, f1, revealed))
    torch.testing.assert_close(held, plain, rtol=0, atol=0)


def test_held_motion_keeps_a_change_of_frame0_where_the_motion_copies_it():
    """A 2 x 2 block of frame 0 turned white changes, under the clean frame's motion, only
    the slots whose copies (any hypothesis, bilinear) read those pixels; every other slot
    keeps its clean distribution exactly. Inferring the motion from the changed frame 0
    instead lets the change reach other slots (the block flips matches)."""
    m = _model(camera=True)
    f0, f1 = _shifted((2.0, -1.0))
    f0, f1 = f0[None], f1[None]
    revealed = torch.zeros(1, 64, dtype=torch.bool)
    revealed[0, torch.randperm(64, generator=torch.Generator().manual_seed(3))[:16]] = True
    changed = f0.clone()
    changed[0, 14:16, 14:16] = 255.0  # pixels x, y in [14, 16)
    with torch.no_grad():
        motion = m.motion(f0, f1, revealed)
        clean = m.frame1_logprobs(f0, f1, revealed)
        held = m.frame1_logprobs(changed, f1, revealed, motion=motion)
        free = m.frame1_logprobs(changed, f1, revealed)
    disp = motion[0][0]  # (S, H, 2)
    src = m.slot_centres(torch.device("cpu"))[:, None] - disp  # copy centres in frame 0
    # a copy reads pixels within patch / 2 + 1 of its centre (bilinear): it misses the
    # block when that reach ends before x, y = 14 or starts after 16
    reach = m.patch / 2 + 1
    misses = ((src + reach <= 14) | (src - reach >= 16)).any(-1).all(-1)  # (S,)
    assert 10 < misses.sum() < 64
    torch.testing.assert_close(held[0, misses], clean[0, misses], rtol=0, atol=0)
    assert (held[0, ~misses] - clean[0, ~misses]).abs().amax() > 1e-3  # it is seen
    assert (free[0, misses] - clean[0, misses]).abs().amax() > 1e-3


def test_held_motion_of_the_wrong_size_is_named():
    m = _model(camera=True)
    f0, f1 = _shifted((1.0, 1.0))
    revealed = torch.zeros(2, 64, dtype=torch.bool)
    revealed[:, :8] = True
    f0, f1 = f0[None].repeat(2, 1, 1, 1), f1[None].repeat(2, 1, 1, 1)
    motion = m.motion(f0[:1], f1[:1], revealed[:1])
    with pytest.raises(ValueError, match="motion is for 1 rows"):
        m.frame1_logprobs(f0, f1, revealed, motion=motion)
