import sys

import numpy as np
import pytest

from longseq.data.videoworld import sample_clip
from longseq.media import frame_strip, read_video, write_video

pytest.importorskip("PIL")


def palette_video(t: int = 6, h: int = 9, w: int = 11, seed: int = 0) -> np.ndarray:
    """Random pixels from eight colours: exact in a GIF's palette."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    return palette[rng.integers(0, 8, (t, h, w))]


def test_gif_round_trip_is_exact_and_creates_parent_dirs(tmp_path):
    video = palette_video()
    path = write_video(tmp_path / "a" / "b" / "v.gif", video, fps=5)
    assert path == tmp_path / "a" / "b" / "v.gif"
    assert path.is_file()
    back = read_video(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, video)


def test_gif_keeps_repeated_frames_loops_and_has_the_frame_delay(tmp_path):
    from PIL import Image

    video = palette_video(t=7)
    video[2:5] = video[1]  # a still stretch: Pillow folds it into one longer frame
    path = write_video(tmp_path / "v.gif", video, fps=4)
    np.testing.assert_array_equal(read_video(path), video)
    with Image.open(path) as im:
        assert im.info["loop"] == 0
        assert im.info["duration"] == 250


def test_gif_scale_is_nearest_neighbour(tmp_path):
    video = palette_video(t=3, h=4, w=5)
    back = read_video(write_video(tmp_path / "v.gif", video, scale=3))
    assert back.shape == (3, 12, 15, 3)
    np.testing.assert_array_equal(back[:, ::3, ::3], video)
    np.testing.assert_array_equal(back[:, 2::3, 1::3], video)


def test_gif_of_a_rendered_clip_keeps_its_shape(tmp_path):
    video = sample_clip(3).render(10, 32)
    back = read_video(write_video(tmp_path / "clip.gif", video, fps=8))
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video).mean() < 2.0


def test_mp4_round_trip_is_close(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    video = sample_clip(3).render(12, 32)
    back = read_video(write_video(tmp_path / "v.mp4", video, fps=8, scale=2))
    assert back.shape == (12, 64, 64, 3)
    assert back.dtype == np.uint8
    assert np.abs(back[:, ::2, ::2].astype(int) - video).mean() < 4.0


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    video = np.repeat(np.linspace(0, 255, 15 * 9, dtype=np.uint8).reshape(1, 9, 15, 1), 3, -1)
    video = np.repeat(video, 4, axis=0)
    back = read_video(write_video(tmp_path / "odd.mp4", video, fps=10))
    assert back.shape == (4, 10, 16, 3)
    assert np.abs(back[:, :9, :15].astype(int) - video).mean() < 4.0


def test_write_video_rejects_bad_input(tmp_path):
    video = palette_video()
    with pytest.raises(ValueError, match=r"'\.avi'.*\.gif.*\.mp4"):
        write_video(tmp_path / "v.avi", video)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "v.gif", video.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "v.gif", video[0])
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "v.gif", video[..., :2])
    with pytest.raises(ValueError, match="at least one"):
        write_video(tmp_path / "v.gif", video[:0])
    with pytest.raises(ValueError, match="scale"):
        write_video(tmp_path / "v.gif", video, scale=0)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.gif", video, fps=0)
    assert not any(tmp_path.iterdir())


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.gif")
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "v.webm").write_bytes(b"")
    with pytest.raises(ValueError, match="webm"):
        read_video(tmp_path / "v.webm")


def test_missing_imageio_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(ImportError, match=r"longseq\[video\]"):
        write_video(tmp_path / "v.mp4", palette_video())
    assert not (tmp_path / "v.mp4").exists()


def test_frame_strip_picks_evenly_spaced_frames():
    video = np.zeros((9, 2, 3, 3), np.uint8)
    video[:, :, :, 0] = np.arange(9)[:, None, None]  # frame index in the red channel
    strip = frame_strip(video, n=3)
    assert strip.shape == (2, 9, 3)
    np.testing.assert_array_equal(strip[0, ::3, 0], [0, 4, 8])
    big = frame_strip(video, n=5, scale=2)
    assert big.shape == (4, 30, 3)
    np.testing.assert_array_equal(big[0, ::6, 0], [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(big, big[::2].repeat(2, 0)[:, ::2].repeat(2, 1))
    # more panels than frames: one panel per frame
    assert frame_strip(video[:2], n=8).shape == (2, 6, 3)
    with pytest.raises(ValueError, match="n must be"):
        frame_strip(video, n=0)
