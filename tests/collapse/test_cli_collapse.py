"""The ``longseq collapse`` commands: they run on a transformers-layout checkpoint, check
their options before any work, and say what they are doing."""

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import longseq.collapse.evaluate as ev
from longseq.cli import app
from longseq.collapse.cli import NLL_UNIT
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]


def tiny(seed=0):
    torch.manual_seed(seed)
    return Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()


def run(*args):
    return CliRunner().invoke(app, ["collapse", *map(str, args)])


def test_cli_on_a_transformers_layout_checkpoint(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "ck", extra={"tokenizer": {"type": "byte"}, "train_length": 256})
    runner = CliRunner()
    for cmd in (
        ["diagnose", "--length", "256", "--segment", "64"],
        ["passkey", "--lengths", "256", "--trials", "1", "--mitigation", "norm"],
        [
            "loss-curve",
            "--length",
            "512",
            "--mitigation",
            "none",
            "--mitigation",
            "window",
            "--mitigation",
            "norm",
        ],
    ):
        out = tmp_path / cmd[0]
        res = runner.invoke(
            app, ["collapse", *cmd, "--model", str(tmp_path / "ck"), "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        assert any(out.glob("*.png")) and any(out.glob("*.json"))
    curves = json.loads((tmp_path / "loss-curve" / "loss_text.json").read_text())
    assert set(curves) == {"none", "window", "norm"}
    res = runner.invoke(app, ["collapse", "diagnose", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.output
    m.save_pretrained(tmp_path / "no-length", extra={"tokenizer": {"type": "byte"}})
    res = runner.invoke(
        app,
        ["collapse", "passkey", "--model", str(tmp_path / "no-length"), "--lengths", "256"]
        + ["--mitigation", "window", "--out", str(tmp_path / "x")],
    )
    assert res.exit_code == 2 and "give --train-length N" in " ".join(res.output.split())


def key_reader(correct_up_to: int):
    """A stand-in for greedy decoding that reads the key from prompts of at most
    ``correct_up_to`` tokens and answers wrong beyond."""

    def answer(model, ids, n):
        text = bytes(ids.tolist()).decode()
        key = text.split("The passkey is ")[1][:5] if len(ids) <= correct_up_to else "00000"
        return list(f" {key}.".encode())[:n]

    return answer


def test_passkey_without_options_runs_the_passkey_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "greedy_continue", key_reader(1024))
    monkeypatch.chdir(tmp_path)
    res = run("passkey")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "collapse-passkey" / "passkey.json").read_text())
    assert got["lengths"] == [512, 1024, 2048, 4096]  # collapse-passkey-mamba2: T = 512
    assert got["accuracy"][0] == [1.0] * 5 and got["accuracy"][-1] == [0.0] * 5
    assert "collapse-passkey-mamba2 is trained" not in res.output


def test_passkey_names_the_passkey_model_when_the_model_cannot_do_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "greedy_continue", key_reader(0))
    res = run("passkey", "--model", "collapse-mamba2", "--trials", "1", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "trained on 128-token windows, shorter than a passkey prompt" in text
    assert "found no key at any length" in text
    assert "--model collapse-passkey-mamba2" in text
    got = json.loads((tmp_path / "p" / "passkey.json").read_text())
    assert got["lengths"] == [256, 512, 1024, 2048]  # at least a prompt's length


@pytest.mark.parametrize(
    "args, message",
    [
        (["diagnose", "--length", "-5"], "--length must be >= 1 tokens, got -5"),
        (["diagnose", "--length", "0"], "--length must be >= 1 tokens, got 0"),
        (["loss-curve", "--length", "1"], "--length must be >= 2 tokens, got 1"),
        (["diagnose", "--out", "/dev/null/x"], "--out: cannot create the folder /dev/null/x"),
        (["loss-curve", "--out", "/dev/null/x"], "--out: cannot create the folder /dev/null/x"),
        (["demo", "--out", "/dev/null/x"], "--out: cannot create the folder /dev/null/x"),
        (["passkey", "--lengths", "0"], "--lengths must be >= 1 token"),
        (["loss-curve", "--mitigation", "wind"], "--mitigation: unknown mitigation 'wind'"),
        (["diagnose", "--text-file", "/nonexistent.txt"], "--text-file: /nonexistent.txt does"),
        (["diagnose", "--prompt", "poem"], "--prompt must be 'text' or 'newline'"),
    ],
)
def test_bad_options_fail_in_one_line_before_any_work(args, message, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr("longseq.hub.load_mamba2", no_work)
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), res.output


def test_passkey_lengths_below_the_fixed_text_fail_in_one_line(tmp_path):
    res = run("passkey", "--lengths", "100", "--out", tmp_path / "p")
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --lengths must be >= 185 tokens (the prompt's fixed text"
    ), res.output


def test_demo_says_what_it_is_doing(tmp_path):
    tiny().save_pretrained(
        tmp_path / "ck", extra={"tokenizer": {"type": "byte"}, "train_length": 8}
    )
    res = run("demo", "--model", tmp_path / "ck", "--out", tmp_path / "demo")
    assert res.exit_code == 0, res.output
    steps = re.findall(r"\[(\d+)/10\] .*?: (text|newline) prompt, 512 tokens, (\S+)", res.output)
    assert [int(s[0]) for s in steps] == list(range(1, 11))
    assert {s[2] for s in steps} == {"none", "forget", "norm", "window", "dt"}
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {
        "loss_text.json",
        "loss_text.png",
        "loss_newline.json",
        "loss_newline.png",
    }


def test_docs_state_losses_in_the_unit_the_cli_prints():
    page = (ROOT / "docs" / "collapse.md").read_text()
    assert NLL_UNIT in page
    assert "nats/byte" not in page
