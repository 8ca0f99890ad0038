import numpy as np
import pytest

from longseq.data.videoworld import sample_clip
from longseq.media import resize_video
from longseq.streaming.evaluate import video_metrics
from longseq.streaming.metrics import mawe

pytest.importorskip("cv2")
pytest.importorskip("scenedetect")


def test_resize_video_keeps_constant_colours_and_shape():
    v = np.zeros((3, 16, 16, 3), np.uint8) + np.array([10, 200, 30], np.uint8)
    big = resize_video(v, (64, 64))
    assert big.shape == (3, 64, 64, 3) and (big == v[0, 0, 0]).all()
    np.testing.assert_array_equal(resize_video(v, (16, 16)), v)


def test_video_metrics_are_the_metrics_at_the_flow_size():
    clip = sample_clip(2)
    v = clip.render(30, 16)
    m = video_metrics(v, clip.caption, seams=[10, 20])
    ref = mawe(resize_video(v, (64, 64)))
    assert m["mawe"] == pytest.approx(ref["mawe"]) and m["scuts"] == 0
    assert set(m) == {"mawe", "warp_error", "flow_magnitude", "scuts", "seam_flow_std"}
    # a hard cut to another clip (another background colour) is counted
    other = sample_clip(9)
    assert other.attrs["bg_color"] != clip.attrs["bg_color"]
    cut = np.concatenate([v, other.render(30, 16)])
    assert video_metrics(cut, clip.caption)["scuts"] == 1
