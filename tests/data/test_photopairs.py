import numpy as np
import pytest

from longseq.data.photopairs import (
    MOTIONS,
    VAL_PHOTOS,
    load_photos,
    photo_pair,
    photo_paths,
    photo_set,
    sample_photo,
)


def _bilinear(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Naive bilinear sample of (H, W, 3) at xy (N, 2), pixel centres at +0.5."""
    x, y = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    h, w = img.shape[:2]
    x0, y0 = x0.clip(0, w - 2), y0.clip(0, h - 2)
    f = img.astype(np.float64)
    return (
        f[y0, x0] * (1 - fx) * (1 - fy)
        + f[y0, x0 + 1] * fx * (1 - fy)
        + f[y0 + 1, x0] * (1 - fx) * fy
        + f[y0 + 1, x0 + 1] * fx * fy
    )


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("skimage")
    pytest.importorskip("PIL")
    return load_photos("val", short_side=128)


def test_splits_are_disjoint_and_test_photos_come_from_other_packages():
    pytest.importorskip("skimage")
    train, val = photo_paths("train"), photo_paths("val")
    assert {p.name for p in val} == set(VAL_PHOTOS)
    assert not {p.name for p in train} & {p.name for p in val}
    assert all("skimage" in p.parts for p in train + val)
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    test = photo_paths("test")
    assert len(test) >= 3 and all("skimage" not in p.parts for p in test)
    with pytest.raises(ValueError, match="split"):
        photo_paths("dev")


def test_sample_photo_at_pixel_centres_is_the_photo():
    img = np.random.default_rng(0).uniform(0, 255, (10, 12, 3)).astype(np.float32)
    c = np.stack(np.meshgrid(np.arange(12) + 0.5, np.arange(10) + 0.5), -1)
    np.testing.assert_allclose(sample_photo(img, c), img, atol=1e-3)
    np.testing.assert_allclose(sample_photo(img, c[2:5, 3:7] + [2, 1]), img[3:6, 5:9], atol=1e-3)


@pytest.mark.parametrize("motion", MOTIONS)
def test_ground_truth_is_photo_consistent(photos, motion):
    """Frame 1 at a visible point's target shows what frame 0 shows at the point (up to
    interpolation), and far better than frame 1 at the point itself does."""
    rng = np.random.default_rng(3)
    at_target, in_place = [], []
    for _ in range(6):
        p = photo_pair(photos, motion, rng, n_points=16)
        vis = ~p.occluded
        f0 = _bilinear(p.frames[0], p.points[vis])
        at_target.append(np.abs(_bilinear(p.frames[1], p.targets[vis]) - f0).mean())
        in_place.append(np.abs(_bilinear(p.frames[1], p.points[vis]) - f0).mean())
    assert np.mean(at_target) < 0.5 * np.mean(in_place)


def test_patch_covers_background_points_it_moves_over(photos):
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = photo_pair(photos, "patch", rng, n_points=16)
        moved = np.linalg.norm(p.targets - p.points, axis=1) > 0
        assert moved[:8].all() and not moved[8:].any()  # half on the patch, half off
        # an occluded background point's colour changed between the frames
        occ = p.occluded & ~moved
        if occ.any():
            d = np.abs(
                _bilinear(p.frames[1], p.points[occ]) - _bilinear(p.frames[0], p.points[occ])
            )
            assert d.mean() > 5


def test_photo_set_layout(photos):
    d = photo_set(4, "val", photos=photos, n_points=5)
    assert d.videos.shape == (4, 2, 64, 64, 3) and d.videos.dtype == np.uint8
    assert d.query_points.shape == (4, 5, 3) and d.tracks.shape == (4, 5, 2, 2)
    assert d.motions == [*MOTIONS, MOTIONS[0]]
    np.testing.assert_allclose(d.tracks[:, :, 0], d.query_points[..., [2, 1]])
    assert not d.occluded[:, :, 0].any()
    with pytest.raises(ValueError, match="motions"):
        photo_set(2, "val", motions=("zoom",), photos=photos)
