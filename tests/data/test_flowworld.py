import numpy as np
import pytest

from longseq.data.flowworld import (
    BACKGROUND,
    Sprite,
    World,
    crop_resize,
    random_texture,
    sample_world,
    training_pairs,
)


def _flat_world(pan=(0.0, 0.0), sprites=(), size=32, n_frames=3):
    rng = np.random.default_rng(0)
    return World((size, size), n_frames, random_texture(rng, 1.5), np.array(pan), list(sprites))


def _sprite(center, velocity, radius=0.2, spin=0.0, growth=1.0, shape="square"):
    rng = np.random.default_rng(1)
    return Sprite(
        shape,
        random_texture(rng, 1.2, radius),
        np.array(center),
        np.array(velocity),
        0.0,
        spin,
        radius,
        growth,
    )


def test_deterministic_and_splits_differ():
    a, b = sample_world(5, 32).render(), sample_world(5, 32).render()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_world(5, 32, split="test").render())
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8


def test_track_keeps_surface_coordinates():
    """A tracked sprite point has the same object coordinates at every time."""
    world = sample_world(11, 64, n_frames=4)
    pts = world.sample_points(40, np.random.default_rng(0))
    tracks, _ = world.track(pts)
    np.testing.assert_allclose(tracks[:, 0], pts, atol=1e-4)
    obj = world.top_object(pts / world.scale, 0.0)
    for k in np.unique(obj):
        sel = obj == k
        u0 = world._local(int(k), pts[sel] / world.scale, np.zeros(sel.sum()))
        for t in range(4):
            ut = world._local(int(k), tracks[sel, t] / world.scale, np.full(sel.sum(), float(t)))
            np.testing.assert_allclose(ut, u0, atol=1e-4)


def test_rendered_colour_moves_with_the_track():
    """Pixels on a translating sprite keep their colour along the ground-truth flow."""
    world = _flat_world(sprites=[_sprite((0.5, 0.5), (2 / 32, 1 / 32), radius=0.3)])
    video = world.render()
    flow, occ = world.dense_flow(1)
    np.testing.assert_allclose(flow[16, 16], [2, 1], atol=1e-5)
    # interior pixels of the square moved by whole pixels: colours match exactly
    assert np.array_equal(video[0, 12:20, 12:20], video[1, 13:21, 14:22])
    assert not occ[12:20, 12:20].any()


def test_background_pan_flow_and_leaving_the_frame():
    world = _flat_world(pan=(3 / 32, 0.0))
    flow, occ = world.dense_flow(2)
    np.testing.assert_allclose(flow[..., 0], 6.0, atol=1e-4)
    np.testing.assert_allclose(flow[..., 1], 0.0, atol=1e-4)
    assert occ[:, -6:].all() and not occ[:, :-6].any()  # pushed out on the right


def test_occlusion_by_a_sprite_in_front():
    front = _sprite((0.2, 0.5), (0.3, 0.0), radius=0.15)  # sweeps across the centre
    world = _flat_world(sprites=[front], n_frames=3)
    tracks, occ = world.track(np.array([[16.0, 16.0]]))  # background point at the centre
    assert world.top_object(np.array([[0.5, 0.5]]), 0.0)[0] == BACKGROUND
    assert not occ[0, 0]
    assert occ[0, 1]  # the sprite (centre at x = 0.5) covers it at t = 1
    assert not occ[0, 2]  # and has passed at t = 2


def test_crop_resize_and_training_pairs():
    frames = np.full((2, 64, 64, 3), 77, np.uint8)
    frames[:, :32] = 200
    out = crop_resize(frames, (0, 0, 64), 32)
    assert out.shape == (2, 32, 32, 3)
    assert (out[:, :16] == 200).all() and (out[:, 16:] == 77).all()
    p = training_pairs(3, seed=4)
    assert p.shape == (3, 2, 32, 32, 3) and p.dtype == np.uint8
    assert np.array_equal(p, training_pairs(3, seed=4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        sample_world(0, split="dev")
    with pytest.raises(ValueError, match="n_frames"):
        sample_world(0, n_frames=1)
