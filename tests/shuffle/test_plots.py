import pytest
import torch

pytest.importorskip("matplotlib")

from longseq.shuffle.plots import prediction_figure  # noqa: E402


def test_grid_names_the_true_class_of_every_error():
    import matplotlib.pyplot as plt

    images = torch.rand(3, 3, 8, 8)
    labels, preds = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])
    fig = prediction_figure(images, labels, preds, ["disc", "square", "ring"])
    titles = [ax.get_title() for ax in fig.axes[:3]]
    plt.close(fig)
    assert titles[0] == "disc" and titles[2] == "ring"
    assert "ring" in titles[1] and "true: square" in titles[1]
