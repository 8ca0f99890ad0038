"""scripts/train_kltrace.py: a camera model fine-tuned from a world model on world and
real-photo pairs, exported and loadable; another architecture refused by --init-from."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from longseq import hub
from longseq.models.match_mixture import MatchMixture, MatchMixtureConfig

SCRIPT = Path(__file__).parents[2] / "scripts" / "train_kltrace.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_kltrace_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its render workers pickle functions by module name
    spec.loader.exec_module(mod)
    return mod


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--pairs", "250", "--val-pairs", "250", "--workers", "1", "--steps", "4",
        "--warmup", "1", "--batch-size", "4", "--eval-every", "100", "--calib-clips", "2",
        "--trace-amplitudes", "48", "--trace-sigmas", "2", "--trace-masks", "1",
        "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
        "--threads", "1", *extra,
    ]  # fmt: skip


def test_camera_fine_tune_of_a_world_model(tmp_path, capsys):
    """Stage 2 of the recipe: a model without the camera hypothesis (here a fresh one
    with the shipped codebook) fine-tuned with --camera on world and photo pairs."""
    pytest.importorskip("skimage")
    shipped, _ = hub.load("kltrace-match")
    world = MatchMixture(MatchMixtureConfig())
    world.quantizer.codebook.copy_(shipped.codebook)
    init = hub.save_pretrained(world, tmp_path / "world", "match_mixture")
    out = tmp_path / "export"
    _script().main(
        _argv(tmp_path, "--init-from", str(init), "--camera", "--photo-frac", "0.5",
              "--photo-pairs", "16", "--export", str(out))
    )  # fmt: skip
    assert "new: camera_logit" in capsys.readouterr().out
    model, _ = hub.load(out)
    assert model.config.camera and not world.config.camera
    torch.testing.assert_close(model.codebook, shipped.codebook)  # the quantizer is kept
    params = dict(model.named_parameters())
    assert {"camera_logit", "log_camera_ridge"} <= set(params)


def test_init_from_another_architecture_is_named(tmp_path):
    with pytest.raises(SystemExit, match="another architecture"):
        _script().main(_argv(tmp_path, "--init-from", "kltrace-lras", "--export", ""))
