import numpy as np
import pytest
import torch

from longseq.data.flowworld import sample_world
from longseq.kltrace import (
    FLOW_METHODS,
    TraceConfig,
    calibrate_threshold,
    evaluate_methods,
    gaussian_bump,
    synthetic_set,
    tapvid_metrics,
    trace_points,
    track_video,
    track_with_flow,
)
from longseq.kltrace.tracing import zoom_window
from longseq.models.lras import LRAS, LRASConfig, PatchQuantizer


class ShiftOracle:
    """A user's frame-pair model that knows the motion, plugged in through the protocol
    alone (no longseq base class): frame 1 is frame 0 shifted by (dx, dy) whole patches,
    so its prediction at slot s is frame 0's code at s - shift."""

    def __init__(self, shift=(1, 0), image_size=32, patch=4, codebook=64):
        self.image_size, self.patch, self.shift = image_size, patch, shift
        self._quantizer = PatchQuantizer(codebook, patch)
        g = torch.Generator().manual_seed(0)
        self.codebook = torch.rand(codebook, patch * patch * 3, generator=g)
        self.codebook[0] = 1.0  # a white patch, what the bump turns into
        self._quantizer.codebook.copy_(self.codebook)

    def frame1_logprobs(self, frame0, frame1, revealed):
        grid = self.image_size // self.patch
        f0 = self._quantizer.encode(frame0)
        slots = torch.arange(grid * grid).expand(frame0.shape[0], -1)
        qy, qx = slots // grid, slots % grid
        sy, sx = qy - self.shift[1], qx - self.shift[0]
        inside = (sx >= 0) & (sx < grid) & (sy >= 0) & (sy < grid)
        src = (sy.clamp(0, grid - 1) * grid + sx.clamp(0, grid - 1)).long()
        code = f0.gather(1, src)
        logits = torch.zeros(*slots.shape, len(self.codebook))
        logits.scatter_(2, code[..., None], 8.0)
        logits = torch.where(inside[..., None], logits, torch.zeros_like(logits))
        return logits.log_softmax(-1)


def _textured(size=32, seed=0):
    return sample_world(seed, size, 2).render()[0]


def test_readout_recovers_the_oracle_motion():
    model = ShiftOracle(shift=(1, -1))
    f0 = _textured()
    f1 = np.roll(f0, (-4, 4), axis=(0, 1))
    pts = np.array([[10.0, 18.0], [14.0, 22.0], [6.0, 26.0]])
    cfg = TraceConfig(scales=(1.0,), n_masks=2, reveal=0.0)
    res = trace_points(model, f0, f1, pts, cfg)
    np.testing.assert_allclose(res.targets["kl"], pts + [4, -4], atol=2.0)
    assert (res.peaks["kl"] > 1.0).all()


def test_zoom_windows_map_back_to_frame_pixels():
    """With a 64 px frame and a half-size window (no resizing), a one-patch shift of the
    model input is 4 frame pixels."""
    model = ShiftOracle(shift=(1, 0))
    f0 = sample_world(3, 64, 2).render()[0]
    pts = np.array([[30.0, 30.0], [5.0, 60.0]])  # the second window is clamped to the frame
    cfg = TraceConfig(scales=(0.5,), n_masks=1, reveal=0.0)
    res = trace_points(model, f0, f0, pts, cfg)
    np.testing.assert_allclose(res.targets["kl"], pts + [4, 0], atol=2.0)


def test_gaussian_bump_and_zoom_window():
    frames = torch.zeros(1, 9, 9, 3)
    out = gaussian_bump(frames, torch.tensor([[4.5, 2.5]]), sigma=1.0, amplitude=200.0)
    i, j = np.unravel_index(out[0, ..., 0].argmax().item(), (9, 9))
    assert (i, j) == (2, 4) and out.max() == pytest.approx(200.0)
    assert out[0, 2, 5, 0] == pytest.approx(200 * np.exp(-0.5))
    assert zoom_window(np.array([2.0, 60.0]), (64, 64), 32) == (0, 32, 32)
    assert zoom_window(np.array([32.0, 32.0]), (64, 64), 32) == (16, 16, 32)


def test_calibrate_threshold_separates():
    peaks = np.array([0.01, 0.02, 0.5, 0.9, 0.03, 0.7])
    occ = peaks < 0.1
    t = calibrate_threshold(peaks, occ)
    assert 0.03 < t < 0.5
    assert ((peaks < t) == occ).all()


def test_bad_inputs_are_named():
    model = ShiftOracle()
    f = _textured()
    with pytest.raises(ValueError, match="outside"):
        trace_points(model, f, f, np.array([[40.0, 3.0]]))
    with pytest.raises(ValueError, match="differ"):
        trace_points(model, f, f[:16], np.array([[3.0, 3.0]]))
    with pytest.raises(ValueError, match="smaller"):
        trace_points(model, f[:16, :16], f[:16, :16], np.array([[3.0, 3.0]]))
    with pytest.raises(ValueError, match="n_masks"):
        trace_points(model, f, f, np.array([[3.0, 3.0]]), TraceConfig(n_masks=0))
    with pytest.raises(ValueError, match="query frames"):
        track_video(model, np.stack([f, f]), np.array([[2, 3.0, 3.0]]))


def test_track_video_layout():
    model = ShiftOracle(shift=(0, 0))
    video = sample_world(1, 32, 3).render()
    qp = np.array([[0, 10.0, 12.0], [1, 20.0, 5.0]])
    out = track_video(model, video, qp, TraceConfig(scales=(1.0,), n_masks=1, reveal=0.0))
    tracks, occ = out["kl"]
    assert tracks.shape == (2, 3, 2) and occ.shape == (2, 3)
    np.testing.assert_allclose(tracks[0, 0], [12.0, 10.0])
    assert occ[1, 0] and not occ[1, 1]  # before its query frame / at it


def test_evaluate_methods_end_to_end():
    pytest.importorskip("cv2")
    torch.manual_seed(0)
    model = LRAS(LRASConfig(codebook_size=32, n_layer=1, n_embd=32)).eval()
    data = synthetic_set(1, "test", size=32, n_frames=2, n_points=4)
    cfg = TraceConfig(scales=(1.0,), n_masks=1)
    res = evaluate_methods(model, data, cfg)
    assert set(res) == {"kl", "rgb", "farneback", "dis"}
    # each method's scores are TAP-Vid metrics of its own tracks, computed directly here
    pts = data.query_points[0][:, [2, 1]]
    direct = trace_points(model, data.videos[0, 0], data.videos[0, 1], pts, cfg)
    dis_xy, dis_occ = track_with_flow(
        FLOW_METHODS["dis"], data.videos[0, 0], data.videos[0, 1], pts
    )
    for name, (xy, occ) in {
        "kl": (direct.targets["kl"], direct.occluded["kl"]),
        "rgb": (direct.targets["rgb"], direct.occluded["rgb"]),
        "dis": (dis_xy, dis_occ),
    }.items():
        tracks = np.stack([pts, xy], 1)[None].astype(np.float32)
        occl = np.stack([np.zeros(len(pts), bool), occ], 1)[None]
        ref = tapvid_metrics(data.query_points, data.occluded, data.tracks, occl, tracks)
        for key, value in ref.items():
            assert res[name][key] == pytest.approx(value, nan_ok=True), (name, key)
    assert res["kl"]["sec_per_point"] == res["rgb"]["sec_per_point"] > 0  # one shared pass
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate_methods(model, data, cfg, methods=("raft",))


def test_dis_follows_the_world_conventions():
    """DIS on a panning background recovers the ground truth within a pixel: the
    world's tracks, the flow tracker and the metrics agree on pixel coordinates."""
    pytest.importorskip("cv2")
    data = synthetic_set(3, "test", size=64, n_frames=2, n_points=16)
    res = evaluate_methods(None, data, TraceConfig(), methods=("dis",))
    assert res["dis"]["pts_within_4"] > 0.7


def _blob(cx, cy, size=32, sigma=2.5):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("readout", ["centroid", "softargmax"])
def test_readouts_find_a_blob_between_pixels(readout):
    from longseq.kltrace.tracing import _refine_peak

    for cx, cy in [(10.3, 14.8), (20.5, 9.0), (16.9, 16.1)]:
        xy, peak, contrast = _refine_peak(_blob(cx, cy), 6.0, readout)
        np.testing.assert_allclose(xy, [cx, cy], atol=0.25)
        assert peak == pytest.approx(_blob(cx, cy).max())
        assert contrast > 5  # a sharp peak stands well above its map's mean


def test_jittered_windows_still_recover_the_motion():
    """Jitter moves each mask's window by up to half a patch; the averaged map still
    peaks where the oracle moved the point."""
    model = ShiftOracle(shift=(1, 0))
    f0 = sample_world(3, 64, 2).render()[0]
    pts = np.array([[30.0, 30.0], [22.0, 40.0]])
    plain = TraceConfig(scales=(0.5,), n_masks=4, reveal=0.0)
    jit = TraceConfig(scales=(0.5,), n_masks=4, reveal=0.0, jitter=1.0)
    r0 = trace_points(model, f0, f0, pts, plain, keep_maps=True)
    r1 = trace_points(model, f0, f0, pts, jit, keep_maps=True)
    np.testing.assert_allclose(r1.targets["kl"], pts + [4, 0], atol=2.0)
    # the jittered windows cover more of the frame than the centred one
    assert ((r1.maps["kl"] > 0).sum((1, 2)) > (r0.maps["kl"] > 0).sum((1, 2))).all()
    with pytest.raises(ValueError, match="jitter"):
        TraceConfig(jitter=2.0).validate()
    with pytest.raises(ValueError, match="readout"):
        TraceConfig(readout="argmax").validate()
    with pytest.raises(ValueError, match="fit_width"):
        TraceConfig(readout="fit", fit_width=0.0).validate()
    with pytest.raises(ValueError, match="fit_reach"):
        TraceConfig(readout="fit", fit_reach=-1.0).validate()
    with pytest.raises(ValueError, match="occlusion"):
        TraceConfig(occlusion="fb").validate()


class Blind(ShiftOracle):
    """A model that ignores frame 0: the bump changes nothing, every map is flat."""

    def frame1_logprobs(self, frame0, frame1, revealed):
        return super().frame1_logprobs(torch.zeros_like(frame0), frame1, revealed)


def test_contrast_occlusion_flags_flat_maps_only():
    f0 = _textured()
    pts = np.array([[10.0, 18.0], [14.0, 22.0]])
    cfg = TraceConfig(scales=(1.0,), n_masks=2, reveal=0.0, occlusion="contrast")
    cfg.contrast_thresholds = {"kl": 2.0, "rgb": 2.0}
    seen = trace_points(ShiftOracle(shift=(1, 0)), f0, f0, pts, cfg)
    assert not seen.occluded["kl"].any() and (seen.contrasts["kl"] > 2).all()
    blind = trace_points(Blind(), f0, f0, pts, cfg)
    assert blind.occluded["kl"].all() and blind.occluded["rgb"].all()


def test_occlusion_none_reports_every_point_visible():
    f0 = _textured()
    cfg = TraceConfig(scales=(1.0,), n_masks=1, reveal=0.0, occlusion="none")
    res = trace_points(Blind(), f0, f0, np.array([[10.0, 18.0], [14.0, 22.0]]), cfg)
    assert not res.occluded["kl"].any() and not res.occluded["rgb"].any()


class BilinearShift:
    """A frame-pair model that knows a sub-pixel motion: frame 1 is frame 0 moved by
    (dx, dy) pixels (bilinear), each patch's code distribution sharp around it."""

    image_size, patch = 32, 4

    def __init__(self, shift):
        from longseq import hub

        model, _ = hub.load("kltrace-match")
        self.codebook = model.codebook.detach().clone()
        self.shift = torch.tensor(shift, dtype=torch.float32)

    def frame1_logprobs(self, frame0, frame1, revealed):
        img = frame0.float().permute(0, 3, 1, 2) / 255
        b = img.shape[0]
        c = torch.arange(32) + 0.5
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        src = torch.stack([(xs - self.shift[0]) / 16 - 1, (ys - self.shift[1]) / 16 - 1], -1)
        moved = torch.nn.functional.grid_sample(
            img, src[None].expand(b, -1, -1, -1), align_corners=False, padding_mode="border"
        )
        p = moved.permute(0, 2, 3, 1).reshape(b, 8, 4, 8, 4, 3).transpose(2, 3).reshape(b, 64, 48)
        return (-15 * torch.cdist(p, self.codebook[None].expand(b, -1, -1)) ** 2).log_softmax(-1)


def _subpixel_errors(readout: str, jitter: float = 1.0) -> np.ndarray:
    """Errors (px) of the readout ``readout`` tracing 10 points under two sub-pixel
    motions that :class:`BilinearShift` knows exactly."""
    f0 = sample_world(5, 64, 2).render()[0]
    pts = np.random.default_rng(1).uniform(18, 46, (10, 2))
    errs = []
    for shift in [(2.8, 0.0), (-1.3, 2.4)]:
        model = BilinearShift(shift)
        c = torch.arange(64) + 0.5
        src = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1) - torch.tensor(shift)
        img = torch.tensor(f0).float().permute(2, 0, 1)[None]
        moved = torch.nn.functional.grid_sample(
            img, src[None] / 32 - 1, align_corners=False, padding_mode="border"
        )
        f1 = moved[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        cfg = TraceConfig(
            scales=(0.5,), n_masks=5, reveal=0.25, jitter=jitter, readout=readout, amplitude=48.0
        )
        r = trace_points(model, f0, f1, pts, cfg)
        errs.append(np.linalg.norm(r.targets["kl"] - pts - shift, axis=1))
    return np.concatenate(errs)


@pytest.mark.parametrize("readout", ["centroid", "softargmax", "fit"])
def test_readouts_recover_a_subpixel_motion(readout):
    """A model that knows a sub-pixel motion exactly: the sub-patch readouts land within
    half a pixel on average (a patch is 4 px, the motion is not a whole number of them)."""
    assert _subpixel_errors(readout).mean() < 0.5


def test_fit_readout_is_finer_than_the_map_readouts():
    """Fitting the slot responses beats reading the averaged map's peak on the same
    passes: by more than half without jitter (where the map is coarsest: every mask
    sees the point at the same sub-patch offset), and still with jittered windows."""
    errors = {(r, j): _subpixel_errors(r, j).mean() for r in ("fit", "softargmax") for j in (0, 1)}
    assert errors["fit", 0] < 0.5 * errors["softargmax", 0], errors
    assert errors["fit", 1] < errors["softargmax", 1], errors


def test_fit_peak_finds_a_bump_from_slot_responses():
    """Slot responses that follow the fit's model (the square root of a response is a
    Gaussian of 1.5 sigma summed over the slot's pixels, times any scale) made by a bump
    at a known sub-pixel position are fitted back to it, to the fine grid's step, on
    4 px slots of 1 px pixels and of 2 px pixels, searching around a point 3 px away;
    one slot responding more strongly than any of the bump's does not pull it (the
    bump's responses explain more); ``reach`` bounds the search. (A model whose responses do
    not follow the template: the tracing tests above.)"""
    from longseq.kltrace.tracing import _fit_peak

    rng = np.random.default_rng(0)
    patch, sigma = 4, 1.5
    for pitch in (1.0, 2.0):
        corners = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2)
        corners = corners * patch * pitch + rng.uniform(0, 2, 2)
        px = corners[:, None, :] + ((np.arange(patch) + 0.5) * pitch)[:, None]  # (64, 4, 2)
        for _ in range(5):
            true = corners.mean(0) + rng.uniform(-6, 6, 2) * pitch
            g = np.exp(-((px - true) ** 2) / (2 * (1.5 * sigma * pitch) ** 2))
            response = 3.7 * (g[:, :, 0].sum(1) * g[:, :, 1].sum(1)) ** 2
            slots = np.column_stack([corners, np.full(len(px), pitch), response])
            point = true + [2.4 * pitch, -1.8 * pitch]
            xy = _fit_peak(slots, point, sigma, patch, 1.5, 4 * pitch)
            np.testing.assert_allclose(xy, true, atol=0.05 * pitch + 1e-9)  # fine step 0.1
            near = _fit_peak(slots, true + [6 * pitch, 0], sigma, patch, 1.5, 4 * pitch, 2 * pitch)
            assert np.linalg.norm(near - true - [6 * pitch, 0]) <= 2 * pitch + 1e-9
        # a bump on the corner of four slots against one slot, three slots away, that
        # answers 1.3x as strongly as any of them (the peak of the averaged map there):
        # the position that explains most of the responses wins
        true = corners[27] + 0.1 * pitch  # slot 27: row 3, column 3
        g = np.exp(-((px - true) ** 2) / (2 * (1.5 * sigma * pitch) ** 2))
        response = (g[:, :, 0].sum(1) * g[:, :, 1].sum(1)) ** 2
        response[30] = 1.69 * response.max()  # row 3, column 6
        slots = np.column_stack([corners, np.full(len(px), pitch), response])
        xy = _fit_peak(slots, true + [2 * pitch, 0], sigma, patch, 1.5, 4 * pitch)
        np.testing.assert_allclose(xy, true, atol=0.05 * pitch + 1e-9)
    none = _fit_peak(np.zeros((0, 4)), np.array([3.0, 4.0]), sigma, patch, 1.5, 4.0)
    assert none.tolist() == [3.0, 4.0]  # nothing to fit: the point is kept


def test_held_motion_responses_use_each_jobs_clean_motion():
    """With ``hold_motion`` the KL of job j compares the clean pair of its row
    ``index[j]`` with the perturbed frame copied under that clean row's motion: the
    batched call equals the same computation one job at a time."""
    from longseq.kltrace.tracing import _responses
    from longseq.models.match_mixture import MatchMixture, MatchMixtureConfig

    torch.manual_seed(0)
    model = MatchMixture(MatchMixtureConfig(codebook_size=64, camera=True)).eval()
    frames = [_textured(seed=s) for s in (1, 2, 3)]
    clean = torch.from_numpy(np.stack([[frames[0], frames[1]], [frames[1], frames[2]]])).float()
    revealed = torch.zeros(2, 64, dtype=torch.bool)
    revealed[0, 5:21], revealed[1, 30:46] = True, True
    index = torch.tensor([1, 0, 1])
    xy = torch.tensor([[10.0, 12.0], [20.0, 8.0], [16.0, 25.0]])
    perturbed = gaussian_bump(clean[index, 0], xy, 1.5, 64.0)
    kl, rgb = _responses(model, clean, revealed, perturbed, index, hold_motion=True)
    for j, u in enumerate(index.tolist()):
        f0, f1, rev = clean[u : u + 1, 0], clean[u : u + 1, 1], revealed[u : u + 1]
        with torch.no_grad():
            motion = model.motion(f0, f1, rev)
            lc = model.frame1_logprobs(f0, f1, rev)
            lp = model.frame1_logprobs(perturbed[j : j + 1], f1, rev, motion=motion)
        want = (lc.exp() * (lc - lp)).sum(-1).clamp(min=0)[0]
        hidden = ~rev[0]
        torch.testing.assert_close(kl[j, hidden], want[hidden], rtol=1e-4, atol=1e-6)
        assert kl[j, ~hidden].isnan().all() and not rgb[j, hidden].isnan().any()


def test_held_motion_needs_a_model_that_exposes_its_motion():
    f = _textured()
    with pytest.raises(TypeError, match="hold_motion needs a model with a motion"):
        trace_points(ShiftOracle(), f, f, np.array([[8.0, 8.0]]), TraceConfig(hold_motion=True))
    with pytest.raises(ValueError, match="hold_motion must be True or False"):
        TraceConfig(hold_motion="yes").validate()
