"""An interrupted training run, resumed from its state file, ends with the weights of an
uninterrupted run: the random streams (data order, flips, the shuffle's draws) are saved
with the weights."""

import pytest
import torch
from typer.testing import CliRunner

import longseq.shuffle.train as tr
from longseq.cli import app
from longseq.shuffle.train import TrainConfig, build_classifier, train_classifier

CFG = TrainConfig(epochs=4, batch_size=16, n_train=48, n_val=8, n_test=8, img_size=16)
CFG.val_every = 0


def _model():
    torch.manual_seed(0)
    return build_classifier("vim", depth=2, dim=16, patch=8, p_max=0.5, img_size=16)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    dev = torch.device("cpu")
    data = tr.draw_splits(CFG)
    straight = _model()
    train_classifier(straight, CFG, dev, state_path=tmp_path / "a.pt", progress=False, data=data)

    real = tr.save_training_state

    def interrupted(path, model, opt, epoch, *gen):
        real(path, model, opt, epoch, *gen)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_training_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(
            _model(), CFG, dev, state_path=tmp_path / "b.pt", progress=False, data=data
        )
    torch.manual_seed(123)  # whatever the process drew since: the state file decides
    resumed = _model()
    train_classifier(resumed, CFG, dev, state_path=tmp_path / "b.pt", progress=False, data=data)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_train_refuses_the_state_of_another_model(tmp_path):
    runner = CliRunner()
    args = ["shuffle", "train", "--out", "run", "--epochs", "1", "--n-train", "16"]
    res = runner.invoke(app, [*args, "--depth", "1", "--dim", "8"])
    assert res.exit_code == 0, res.output
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    res = runner.invoke(app, [*args, "--depth", "2", "--dim", "16"], env={"COLUMNS": "300"})
    assert res.exit_code == 2
    assert "the training state of another model" in res.output
    assert res.output.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
