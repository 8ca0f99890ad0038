"""Classical flow baselines on synthetic translations; flow-based tracking; bilinear sampling."""

import sys

import numpy as np
import pytest

from longseq import flow as classical
from longseq.flow import FLOW_METHODS, bilinear_sample, track_with_flow


@pytest.fixture(scope="module")
def cv2():
    return pytest.importorskip("cv2")


def texture(cv2, size=64, sigma=2.0, seed=0):
    """Smooth periodic random texture (H, W, 3) uint8, so np.roll is an exact translation."""
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    tiled = cv2.GaussianBlur(np.tile(noise, (3, 3)), (0, 0), sigma)[
        size : 2 * size, size : 2 * size
    ]
    tiled = (tiled - tiled.min()) / (tiled.max() - tiled.min()) * 255.0
    return np.repeat(tiled.astype(np.uint8)[..., None], 3, axis=2)


SHIFT = (3, -2)  # (dx, dy)


def shifted_pair(cv2):
    img = texture(cv2)
    return img, np.roll(img, (SHIFT[1], SHIFT[0]), axis=(0, 1))


@pytest.mark.parametrize("method", sorted(FLOW_METHODS))
def test_flow_recovers_integer_translation(cv2, method):
    frame0, frame1 = shifted_pair(cv2)
    flow = FLOW_METHODS[method](frame0, frame1)
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
    interior = flow[16:-16, 16:-16]
    assert np.abs(interior[..., 0] - SHIFT[0]).max() < 0.5
    assert np.abs(interior[..., 1] - SHIFT[1]).max() < 0.5


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_presets(cv2, preset):
    frame0, frame1 = shifted_pair(cv2)
    flow = classical.dis_flow(frame0, frame1, preset=preset)
    assert np.abs(np.median(flow[16:-16, 16:-16], axis=(0, 1)) - SHIFT).max() < 0.5


def test_flow_input_errors(cv2):
    frame0, _ = shifted_pair(cv2)
    with pytest.raises(ValueError, match="preset"):
        classical.dis_flow(frame0, frame0, preset="slow")
    with pytest.raises(ValueError, match="frame sizes"):
        classical.farneback_flow(frame0, frame0[:32])
    with pytest.raises(ValueError, match="uint8"):
        classical.farneback_flow(frame0.astype(np.float32), frame0)


@pytest.mark.parametrize("method", sorted(FLOW_METHODS))
def test_track_with_flow_recovers_points(cv2, method):
    frame0, frame1 = shifted_pair(cv2)
    rng = np.random.default_rng(1)
    points = rng.uniform(20, 44, size=(10, 2))
    pred, occluded = track_with_flow(FLOW_METHODS[method], frame0, frame1, points)
    assert pred.shape == (10, 2) and occluded.shape == (10,) and occluded.dtype == bool
    np.testing.assert_allclose(pred, points + np.array(SHIFT), atol=0.5)
    assert not occluded.any()


def constant_flow(frame0, frame1):
    """Fake flow: a uniform shift of (frame1 - frame0) brightness along x and half of it in y."""
    d = float(frame1.mean()) - float(frame0.mean())
    flow = np.empty((*frame0.shape[:2], 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = d, d / 2
    return flow


def test_point_leaving_the_frame_is_occluded():
    h, w = 20, 30
    frame0 = np.zeros((h, w, 3), dtype=np.uint8)
    frame1 = np.full((h, w, 3), 4, dtype=np.uint8)  # forward flow (4, 2), backward (-4, -2)
    points = np.array([[10.5, 10.5], [27.5, 5.5], [5.5, 18.5], [29.9, 0.1]])
    pred, occluded = track_with_flow(constant_flow, frame0, frame1, points)
    np.testing.assert_allclose(pred, points + np.array([4.0, 2.0]))
    # targets: (14.5, 12.5) inside; (31.5, 7.5) right of W; (9.5, 20.5) below H; (33.9, 2.1) out
    np.testing.assert_array_equal(occluded, [False, True, True, True])


def test_flow_is_sampled_at_pixel_centres():
    h, w = 16, 24

    def ramp_flow(frame0, frame1):  # dx equals the column index, dy twice the row index
        flow = np.zeros((h, w, 2), dtype=np.float32)
        flow[..., 0] = np.arange(w)[None, :]
        flow[..., 1] = 2 * np.arange(h)[:, None]
        return flow

    frame = np.zeros((h, w, 3), dtype=np.uint8)
    points = np.array([[3.5, 2.5], [4.0, 1.25]])  # centre of pixel (row 2, col 3); off-centre
    pred, _ = track_with_flow(ramp_flow, frame, frame, points, fb_threshold=np.inf)
    np.testing.assert_allclose(pred, [[3.5 + 3, 2.5 + 4], [4.0 + 3.5, 1.25 + 1.5]])


def test_forward_backward_inconsistency_is_occluded(cv2):
    frame0, frame1 = shifted_pair(cv2)
    points = np.array([[32.0, 32.0], [25.5, 40.5]])

    def one_way(a, b):  # ignores direction: the backward flow does not undo the forward flow
        return classical.farneback_flow(frame0, frame1)

    _, occluded = track_with_flow(one_way, frame0, frame1, points)
    assert occluded.all()  # round trip error is 2 * |shift| ~ 7.2 px
    _, occluded = track_with_flow(one_way, frame0, frame1, points, fb_threshold=10.0)
    assert not occluded.any()


def test_bilinear_sample_matches_hand_computation():
    field = np.zeros((2, 3, 2))
    field[..., 0] = [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]
    field[..., 1] = [[5.0, 5.0, 5.0], [-5.0, -5.0, -5.0]]
    points = np.array(
        [
            [0.25, 0.5],  # between all four of the left cells
            [2.0, 1.0],  # exactly on a grid point
            [1.5, 0.0],  # on the top row, halfway between columns 1 and 2
            [-3.0, 7.0],  # clamped to the bottom-left corner
            [9.0, 0.75],  # clamped to the right column
        ]
    )
    want = np.array(
        [
            [0.5 * (0.75 * 0 + 0.25 * 1) + 0.5 * (0.75 * 10 + 0.25 * 11), 0.0],
            [12.0, -5.0],
            [1.5, 5.0],
            [10.0, -5.0],
            [0.25 * 2 + 0.75 * 12, 0.25 * 5 + 0.75 * -5],
        ]
    )
    np.testing.assert_allclose(bilinear_sample(field, points), want)
    np.testing.assert_allclose(bilinear_sample(field[..., 0], points), want[:, 0])
    with pytest.raises(ValueError, match="points_xy"):
        bilinear_sample(field, points[:, :1])


def test_missing_opencv_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ImportError, match=r"pip install 'longseq\[flow\]'"):
        classical.farneback_flow(frame, frame)
    with pytest.raises(ImportError, match="opencv-python-headless"):
        classical.dis_flow(frame, frame)
