"""Coarse-to-fine refinement of KL-tracing: passes, the confidence fall-back, settings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longseq.data.flowworld import sample_world
from longseq.kltrace import TraceConfig, trace_points


class ShrinkingShift:
    """A frame-pair model that finds the whole-pixel shift between its two windows and
    predicts frame 1 as frame 0 moved by ``shrink`` times that shift (bilinear): a bump
    on frame 0 at p moves the prediction most at p + shrink * shift, so one trace
    reports ``shrink`` of the motion, as a model with a "nothing moved" prior does."""

    image_size, patch = 24, 1

    def __init__(self, shrink: float = 0.5, max_shift: int = 6):
        self.shrink, self.max_shift = shrink, max_shift
        self.codebook = torch.linspace(0, 1, 64)[:, None].repeat(1, 3)  # grey levels

    def _shift(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        m = self.max_shift
        best = []
        for a, b in zip(f0, f1, strict=True):
            errs = {
                (dx, dy): (a.roll((dy, dx), (0, 1)) - b)[m:-m, m:-m].abs().mean().item()
                for dx in range(-m, m + 1)
                for dy in range(-m, m + 1)
            }
            best.append(min(errs, key=errs.get))
        return torch.tensor(best, dtype=torch.float32)  # (B, 2) as (dx, dy)

    def frame1_logprobs(self, frame0, frame1, revealed):
        b, s = frame0.shape[0], self.image_size
        d = self._shift(frame0, frame1) * self.shrink
        c = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None] - d[:, None, None, :] * 2 / s
        pred = F.grid_sample(
            frame0.permute(0, 3, 1, 2) / 255,
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        pix = pred.permute(0, 2, 3, 1).reshape(b, s * s, 3)
        dist = torch.cdist(pix, self.codebook.expand(b, -1, -1))
        return (-30 * dist).log_softmax(-1)


def _pair(shift=(5, -4), size=48):
    # low-contrast texture: the bump (96 grey levels) is never clipped
    f0 = (60 + 0.3 * sample_world(3, size, 2).render()[0]).astype(np.uint8)
    f1 = np.roll(f0, (shift[1], shift[0]), axis=(0, 1))
    return f0, f1


CFG = dict(scales=(0.5,), n_masks=1, reveal=0.0, readout="centroid", sigma=1.5, amplitude=96.0)


def test_more_passes_converge_to_the_true_shift():
    model = ShrinkingShift(shrink=0.5)
    shift = np.array([5.0, -4.0])
    f0, f1 = _pair(tuple(int(v) for v in shift))
    pts = np.array([[22.5, 24.5], [25.5, 23.5], [24.0, 25.0]])
    res = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=4))
    err = np.linalg.norm(res.pass_targets["kl"] - (pts + shift), axis=-1).mean(1)  # per pass
    one = trace_points(model, f0, f1, pts, TraceConfig(**CFG))
    # one pass reports about half the motion; each pass halves what is left
    moved = (one.targets["kl"] - pts).mean(0)
    assert np.allclose(moved, 0.5 * shift, atol=0.6), moved
    assert np.allclose(res.pass_targets["kl"][0], one.targets["kl"])
    assert err[0] > 2.5 and err[1] < 0.7 * err[0] and err[2] < 0.4 * err[0], err
    assert err[3] <= err[2] + 1e-6 and err[3] < 1.0, err
    assert np.allclose(res.targets["kl"], res.pass_targets["kl"][-1])
    assert res.pass_targets["kl"].shape == (4, 3, 2)
    assert res.pass_contrasts["kl"].shape == (4, 3)
    assert res.sequences_per_point > one.sequences_per_point


def test_refinement_leaves_a_point_that_does_not_move():
    model = ShrinkingShift(shrink=0.5)
    f0, _ = _pair()
    pts = np.array([[22.5, 24.5]])
    one = trace_points(model, f0, f0, pts, TraceConfig(**CFG))
    res = trace_points(model, f0, f0, pts, TraceConfig(**CFG, passes=3))
    # the whole-pixel shift stays 0: no further pass runs and nothing changes
    assert np.allclose(res.targets["kl"], one.targets["kl"])
    assert res.sequences_per_point == one.sequences_per_point


def test_fallback_keeps_the_previous_pass_below_the_contrast_threshold():
    model = ShrinkingShift(shrink=0.5)
    f0, f1 = _pair((5, -4))
    pts = np.array([[22.5, 24.5], [25.5, 23.5], [24.0, 25.0], [20.5, 21.5]])
    free = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=2))
    strict = trace_points(
        model,
        f0,
        f1,
        pts,
        TraceConfig(**CFG, passes=2, refine_contrast={"kl": 1e9, "rgb": 1e9}),
    )
    assert np.allclose(strict.targets["kl"], free.pass_targets["kl"][0])
    assert np.allclose(strict.contrasts["kl"], free.pass_contrasts["kl"][0])
    c2 = free.pass_contrasts["kl"][1]
    tau = float(np.median(c2))
    mid = trace_points(
        model, f0, f1, pts, TraceConfig(**CFG, passes=2, refine_contrast={"kl": tau, "rgb": 0.0})
    )
    kept = c2 >= tau
    assert kept.any() and (~kept).any()
    assert np.allclose(mid.targets["kl"][kept], free.targets["kl"][kept])
    assert np.allclose(mid.targets["kl"][~kept], free.pass_targets["kl"][0][~kept])
    assert np.allclose(mid.targets["rgb"], free.targets["rgb"])  # its own threshold, 0


def test_gain_undoes_a_known_shrink_in_one_pass():
    model = ShrinkingShift(shrink=0.5)
    shift = np.array([5.0, -4.0])
    f0, f1 = _pair((5, -4))
    pts = np.array([[22.5, 24.5], [25.5, 23.5], [24.0, 25.0]])
    err = {}
    for gain in (1.0, 2.0):
        res = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=2, refine_gain=gain))
        err[gain] = np.linalg.norm(res.targets["kl"] - (pts + shift), axis=-1).mean()
        d = res.pass_shifts["kl"][1]
        one = res.pass_targets["kl"][0] - pts
        assert (d == np.round(gain * one)).all()  # the second pass's frame-1 shift
    assert err[2.0] < 0.6 * err[1.0], err


def test_outlier_limits_fall_back():
    model = ShrinkingShift(shrink=0.5)
    f0, f1 = _pair((5, -4))
    pts = np.array([[22.5, 24.5], [25.5, 23.5], [24.0, 25.0]])
    free = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3))
    # a first pass beyond the largest motion: zero motion
    near = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3, max_motion=2.0))
    assert np.allclose(near.targets["kl"], pts)
    # a pass that would go beyond it keeps the previous estimate
    mid = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3, max_motion=4.5))
    moved = np.linalg.norm(mid.targets["kl"] - pts, axis=-1)
    assert (moved <= 4.5).all() and (moved > 2.5).all()
    assert (np.linalg.norm(free.targets["kl"] - pts, axis=-1) > 4.5).any()
    # a refinement pass that reports more residual motion than allowed is dropped
    tight = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3, refine_max_residual=0.5))
    assert np.allclose(tight.targets["kl"], free.pass_targets["kl"][0])
    loose = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3, refine_max_residual=9))
    assert np.allclose(loose.targets["kl"], free.targets["kl"])


def test_kept_maps_are_in_frame1_coordinates():
    model = ShrinkingShift(shrink=0.5)
    f0, f1 = _pair((5, -4))
    pts = np.array([[22.5, 24.5]])
    res = trace_points(model, f0, f1, pts, TraceConfig(**CFG, passes=3), keep_maps=True)
    m = res.maps["kl"][0]
    i, j = np.unravel_index(np.argmax(m), m.shape)
    assert np.hypot(j + 0.5 - res.targets["kl"][0, 0], i + 0.5 - res.targets["kl"][0, 1]) < 1.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"passes": 0}, "passes must be an int >= 1, got 0"),
        ({"passes": 2.0}, "passes must be an int >= 1, got 2.0"),
        ({"passes": True}, "passes must be an int >= 1, got True"),
        ({"refine_contrast": {"kl": 1.0}}, "refine_contrast must map each of"),
        ({"refine_contrast": {"kl": -1.0, "rgb": 0.0}}, "refine_contrast values must be"),
        ({"refine_contrast": 2.0}, "refine_contrast must map each of"),
        ({"refine_gain": 0.0}, "refine_gain must be in"),
        ({"refine_gain": 5.0}, "refine_gain must be in"),
        ({"refine_max_residual": 0.0}, "refine_max_residual must be > 0 px"),
        ({"max_motion": -1.0}, "max_motion must be > 0 px"),
        ({"max_motion": float("nan")}, "max_motion must be > 0 px"),
    ],
)
def test_refinement_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        TraceConfig(**kwargs).validate()
    assert "\n" not in str(e.value)
