"""Every command checks its options, models and optional packages before it creates a
folder or a file or starts computing: a refused command prints one line, exits with
status 2 and leaves the folder it ran in as it was."""

import importlib.util
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

runner = CliRunner()


@pytest.fixture(scope="module")
def mamba(tmp_path_factory):
    torch.manual_seed(0)
    net = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()
    path = tmp_path_factory.mktemp("ck") / "tiny"
    net.save_pretrained(path, extra={"tokenizer": {"type": "byte"}, "train_length": 8})
    return str(path)


def _refused(args, message):
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output


def _without(monkeypatch, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["diagnose", "--length", "64", "--histogram-at", "999999"], "--histogram-at must be"),
        (["diagnose", "--length", "64", "--histogram-at", "-3"], "positions in [1, 64]"),
        (["diagnose", "--histogram-at", "8", "--histogram-at", "8"], "names 8 more than once"),
        (["diagnose", "--length", "100", "--segment", "5000"], "--segment (5000) is longer"),
        (["diagnose", "--mitigation", "bogus"], "--mitigation: unknown mitigation 'bogus'"),
        (["loss-curve", "--mitigation", "none", "--mitigation", "none"], "names none more"),
        (["loss-curve", "--mitigation", "none", "--mitigation", "norm:x"], "bad mitigation"),
        (["passkey", "--mitigation", "window:w"], "--mitigation: bad mitigation"),
    ],
)
def test_collapse_refuses_before_writing(tmp_path, mamba, args, message):
    _refused(["collapse", args[0], "--model", mamba, *args[1:]], message)
    assert list(tmp_path.iterdir()) == []  # no collapse-diagnose/ or other folder


@pytest.mark.parametrize("command", ["diagnose", "passkey", "loss-curve", "demo"])
def test_collapse_needs_matplotlib_before_loading(tmp_path, monkeypatch, command):
    _without(monkeypatch, "matplotlib")
    monkeypatch.setattr("longseq.hub.load_mamba2", lambda *a, **k: pytest.fail("model loaded"))
    _refused(["collapse", command], "needs matplotlib, which is not installed")
    assert list(tmp_path.iterdir()) == []


def test_shuffle_grid_needs_matplotlib_before_work(tmp_path, monkeypatch):
    _without(monkeypatch, "matplotlib")
    monkeypatch.setattr("longseq.hub.load", lambda *a, **k: pytest.fail("model loaded"))
    _refused(["shuffle", "demo", "--grid", "g.png"], "--grid needs matplotlib")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["flow", "a.png", "b.png", "--points", ""], "--points must look like 'x,y;x,y'"),
        (["flow", "missing0.png", "missing1.png"], "missing0.png"),
    ],
)
def test_kltrace_refuses_before_writing(tmp_path, args, message):
    _refused(["kltrace", *args], message)
    assert list(tmp_path.iterdir()) == []  # no kltrace-flow/


def test_kltrace_demo_refuses_a_negative_seed(tmp_path):
    res = runner.invoke(app, ["kltrace", "demo", "--seed", "-1"])
    assert res.exit_code == 2 and "Invalid value for '--seed'" in res.output
    assert list(tmp_path.iterdir()) == []


def test_kltrace_demo_needs_cv2_before_loading(tmp_path, monkeypatch):
    _without(monkeypatch, "cv2")
    _refused(["kltrace", "demo"], "needs cv2, which is not installed: pip install 'longseq[flow]'")
    assert list(tmp_path.iterdir()) == []


def test_power_eval_leaves_no_folder_when_the_model_is_wrong(tmp_path):
    _refused(["power", "eval", "arith", "--model", "nope"], "neither a shipped checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_error_paths_leave_the_repository_unchanged(monkeypatch):
    """Run from the repository, refused commands with their default output folders leave
    no folder behind (they used to leave collapse-diagnose/ and kltrace-flow/)."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    before = sorted(p.name for p in repo.iterdir())
    for args in (
        ["collapse", "diagnose", "--model", "nope"],
        ["collapse", "loss-curve", "--model", "nope"],
        ["kltrace", "flow", "missing0.png", "missing1.png"],
        ["kltrace", "demo", "--model", "nope"],
        ["power", "eval", "arith", "--kappa", "5"],
        ["power", "eval", "arith", "--model", "nope"],
        ["shuffle", "train", "--out", "shuffle-run", "--lr", "nan"],
    ):
        assert runner.invoke(app, args).exit_code == 2, args
    assert sorted(p.name for p in repo.iterdir()) == before
