from contextlib import contextmanager

import torch

from longseq.shuffle import train


def test_progress_covers_image_drawing_and_every_step(monkeypatch):
    """The bars move while images are drawn and after every optimizer step, so a run
    never sits at 0 for a whole epoch."""
    bars = []

    @contextmanager
    def recording_bar(description, total, enabled=True):
        bar = {"description": description, "total": total, "done": 0}
        bars.append(bar)

        def advance(n=1, description=None):
            bar["done"] += n

        yield advance

    monkeypatch.setattr(train, "progress_bar", recording_bar)
    cfg = train.TrainConfig(epochs=2, batch_size=8, n_train=20, n_val=4, n_test=4, img_size=16)
    net = train.build_classifier("vit", 1, 16, 8, img_size=16)
    train.train_classifier(net, cfg, torch.device("cpu"))
    assert bars[0] == {"description": "drawing images", "total": 28, "done": 28}
    assert bars[1]["total"] == bars[1]["done"] == 2 * 3  # 2 epochs x 3 batches of <= 8
