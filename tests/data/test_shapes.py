import numpy as np
import pytest
import torch

from longseq.data.shapes import CLASSES, ShapesDataset, _figure_mask


def test_deterministic_and_splits_differ():
    a = ShapesDataset("train", 16, 32, seed=0).tensors()
    b = ShapesDataset("train", 16, 32, seed=0).tensors()
    c = ShapesDataset("test", 16, 32, seed=0).tensors()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (16, 3, 32, 32) and a[0].min() >= 0 and a[0].max() <= 1


def test_classes_balanced_and_colour_uninformative():
    x, y = ShapesDataset("val", 1600, 32).tensors()
    counts = torch.bincount(y, minlength=len(CLASSES))
    assert counts.min() > 150
    # mean colour per class is about the same: colour does not give the label away
    means = torch.stack([x[y == k].mean(dim=(0, 2, 3)) for k in range(len(CLASSES))])
    assert (means.max(0).values - means.min(0).values).max() < 0.06


def test_pairs_are_laid_out_along_their_axis():
    rng = np.random.default_rng(0)
    for label, axis in ((5, 1), (6, 0)):  # horizontal pair spreads over x (axis 1)
        m = _figure_mask(label, 64, rng)
        ys, xs = np.nonzero(m)
        spread = (np.ptp(ys), np.ptp(xs))
        assert spread[axis] > 1.5 * spread[1 - axis]


def test_errors():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("holdout")
    with pytest.raises(ValueError, match="size"):
        ShapesDataset("train", 10, 8)
