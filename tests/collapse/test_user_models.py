"""The collapse toolkit on a user's own Mamba-2: a random `transformers`
Mamba2ForCausalLM with its own BPE tokenizer in the folder, given as a folder or as the
transformers object; training lengths given on the command line."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import longseq.collapse.evaluate as ev
from longseq import hub
from longseq.cli import app
from longseq.collapse import (
    SSMControl,
    apply_mitigation,
    apply_named_mitigation,
    clear_mitigations,
    loss_curve,
    passkey_accuracy,
    state_statistics,
)
from longseq.collapse.evaluate import log_bins, passkey_min_length
from longseq.data.text import PASSKEY_FILLER
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = (
    "def add(a, b):\n    return a + b\n\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
    + PASSKEY_FILLER * 3
    + "What is the pass key? The passkey is 12345. Remember it.\n"
)


def bpe_tokenizer(vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([TEXT] * 4, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def hf_mamba2(vocab_size, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=4,
        head_dim=16,
        state_size=8,
        n_groups=1,
        expand=2,
        chunk_size=16,
    )
    m = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    return m


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """(folder, transformers model, tokenizer): a folder as a user has it, with no
    longseq entry in its config."""
    path = tmp_path_factory.mktemp("user") / "my-mamba2"
    tok = bpe_tokenizer()
    model = hf_mamba2(len(tok))
    with hub.quiet_transformers():
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path, model, tok


def run(*args):
    return CliRunner().invoke(app, ["collapse", *map(str, args)])


def one_line_error(res, message):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output


def test_the_folder_tokenizer_is_loaded(user_model):
    path, _, tok = user_model
    _, codec, extra = hub.load_mamba2(path)
    assert extra == {} and codec is not None and not codec.byte_level
    assert codec.encode_plain(TEXT) == tok.encode(TEXT, add_special_tokens=False)


def test_loss_curve_reads_the_text_in_the_model_tokens(user_model, tmp_path):
    """The curve equals one computed from transformers' own forward on the tokenizer's
    encoding of the file; newline prompts are the tokenizer's "\\n" token repeated."""
    path, model, tok = user_model
    (tmp_path / "doc.txt").write_text(TEXT)
    res = run(
        "loss-curve", "--model", path, "--text-file", tmp_path / "doc.txt", "--length", 150,
        "--mitigation", "none", "--out", tmp_path / "o",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "training length unknown" in " ".join(res.output.split())
    got = json.loads((tmp_path / "o" / "loss_file.json").read_text())["none"]
    ids = tok.encode(TEXT, add_special_tokens=False)
    ids = torch.tensor((ids * math.ceil(150 / len(ids)))[:150])
    with torch.no_grad():
        logp = model(ids[None]).logits[0, :-1].float().log_softmax(-1)
    nll = -logp.gather(-1, ids[1:, None])[:, 0]
    edges = log_bins(149)
    want = [float(nll[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert got["edges"] == edges and got["train_length"] is None
    torch.testing.assert_close(torch.tensor(got["mean_nll"]), torch.tensor(want), atol=1e-4, rtol=0)

    res = run(
        "loss-curve", "--model", path, "--prompt", "newline", "--length", 64,
        "--mitigation", "none", "--out", tmp_path / "n",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (newline,) = tok.encode("\n", add_special_tokens=False)
    ids = torch.full((64,), newline)
    with torch.no_grad():
        logp = model(ids[None]).logits[0, :-1].log_softmax(-1)[:, newline]
    got = json.loads((tmp_path / "n" / "loss_newline.json").read_text())["none"]
    lo = log_bins(63)[-2]
    assert got["mean_nll"][-1] == pytest.approx(float(-logp[lo:].mean()), abs=1e-4)


def test_passkey_prompts_are_built_and_scored_in_the_model_tokens(user_model, tmp_path):
    path, _, tok = user_model
    _, codec, _ = hub.load_mamba2(path)
    least = passkey_min_length(codec)
    filler = len(tok.encode(PASSKEY_FILLER, add_special_tokens=False))
    assert least < 185  # fewer tokens than bytes
    length = least + 3 * filler
    seen = []

    def oracle(model, ids, n):  # answers the key in its own tokens when it can read it
        text = tok.decode(ids.tolist())
        key = text.split("The passkey is ")[1][:5]
        seen.append((len(ids), text, key, n))
        return tok.encode(f" {key}.", add_special_tokens=False)[:n] + [0] * 5

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "greedy_continue", oracle)
        res = passkey_accuracy(None, [length], trials=2, progress=False, tokenizer=codec)
    assert res.accuracy == [[1.0] * 5]
    for n_ids, text, key, n in seen:
        assert length - filler < n_ids <= length  # the length counts tokens
        assert text.startswith("There is an important info") and f"{key}. Remember" in text
        assert n == len(tok.encode(f" {key}.", add_special_tokens=False))
    # the real model through the CLI (a random model: any accuracy)
    res = run(
        "passkey", "--model", path, "--lengths", length, "--trials", 1,
        "--mitigation", "norm", "--train-length", least, "--out", tmp_path / "p",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "passkey.json").read_text())["lengths"] == [length]


@pytest.mark.parametrize(
    "args",
    [
        ["loss-curve", "--length", 256, "--mitigation", "none", "--mitigation", "window"],
        ["loss-curve", "--length", 256, "--mitigation", "norm"],
        ["loss-curve", "--length", 256, "--mitigation", "dt"],
        ["diagnose", "--length", 256, "--mitigation", "window"],
        ["passkey", "--lengths", 256, "--mitigation", "norm"],
        ["loss-curve"],
        ["demo"],
    ],
)
def test_without_a_training_length_every_command_names_the_option(user_model, tmp_path, args):
    path, _, _ = user_model
    res = run(*args, "--model", path, "--out", tmp_path / "o")
    one_line_error(res, "--train-length")
    assert not any((tmp_path / "o").glob("*.json"))


def test_train_length_option_sets_the_window_and_overrides_the_config(tmp_path):
    """--train-length 32 gives the window curve of SSMControl(window=32) computed through
    the API; a config key of 64 would give another one."""
    torch.manual_seed(0)
    m = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()
    m.save_pretrained(tmp_path / "ck", extra={"tokenizer": {"type": "byte"}, "train_length": 64})
    out = {}
    for name, extra in {"option": ["--train-length", 32], "config": []}.items():
        res = run(
            "loss-curve", "--model", tmp_path / "ck", "--length", 400, "--mitigation", "none",
            "--mitigation", "window", *extra, "--out", tmp_path / name,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        out[name] = json.loads((tmp_path / name / "loss_text.json").read_text())
    ids = ev.long_text(400)
    for name, t in (("option", 32), ("config", 64)):
        apply_mitigation(m, SSMControl(window=t))
        want = loss_curve(m, ids, t)
        assert out[name]["window"]["train_length"] == t
        torch.testing.assert_close(
            torch.tensor(out[name]["window"]["mean_nll"]), torch.tensor(want.mean_nll)
        )
    assert out["option"]["window"]["mean_nll"][-1] != out["option"]["none"]["mean_nll"][-1]


def test_token_ids_outside_the_vocabulary_fail_in_one_line(tmp_path):
    torch.manual_seed(0)
    m = Mamba2ForCausalLM(Mamba2Config(vocab_size=100, d_model=32, n_layer=1, headdim=16))
    m.save_pretrained(tmp_path / "ck", extra={"tokenizer": {"type": "byte"}, "train_length": 8})
    res = run("loss-curve", "--model", tmp_path / "ck", "--mitigation", "none", "--out", tmp_path)
    one_line_error(res, "is outside the model's vocabulary (ids 0 to 99)")
    with pytest.raises(ValueError, match="token id 100 is outside"):
        state_statistics(m, torch.tensor([1, 100]))


def test_a_folder_without_tokenizer_needs_one(user_model, tmp_path):
    path, model, _ = user_model
    with hub.quiet_transformers():
        model.save_pretrained(tmp_path / "bare")
    _, codec, _ = hub.load_mamba2(tmp_path / "bare")
    assert codec is None
    res = run("diagnose", "--model", tmp_path / "bare", "--length", 64, "--out", tmp_path / "o")
    one_line_error(res, "has no tokenizer")
    res = run(
        "diagnose", "--model", tmp_path / "bare", "--tokenizer", path, "--length", 64,
        "--segment", 32, "--out", tmp_path / "o",
    )  # fmt: skip
    assert res.exit_code == 0, res.output


def test_a_transformers_object_gives_the_folder_result(user_model):
    """apply_mitigation, state_statistics and the calibrated mitigations on the
    transformers object equal the same calls on the folder loaded with load_mamba2,
    without copying a weight or changing the transformers model's own forward."""
    path, hf, tok = user_model
    ours, codec, _ = hub.load_mamba2(path)
    ids = ev.long_text(200, tokenizer=codec)
    with torch.no_grad():
        before = hf(ids[None]).logits
    for control in (SSMControl(window=32), SSMControl(decay_scale=0.9, b_scale=0.5)):
        view = apply_mitigation(hf, control)
        apply_mitigation(ours, control)
        a, b = state_statistics(hf, ids, segment=50), state_statistics(ours, ids, segment=50)
        for key in ("norm", "dt", "conv_rms"):
            torch.testing.assert_close(a.tensor(key), b.tensor(key), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(a.nll), torch.tensor(b.nll), atol=1e-5, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(view(ids[None]).logits, ours(ids[None]).logits)
    for spec in ("norm", "dt"):
        apply_named_mitigation(hf, spec, train_length=64, read_length=200, tokenizer=tok)
        apply_named_mitigation(ours, spec, train_length=64, read_length=200, tokenizer=codec)
        assert _same_controls(view, ours)
        a, b = loss_curve(hf, ids, 64), loss_curve(ours, ids, 64)
        torch.testing.assert_close(torch.tensor(a.mean_nll), torch.tensor(b.mean_nll))
    clear_mitigations(hf)
    shared = {p.data_ptr() for p in hf.parameters()}
    assert {p.data_ptr() for p in view.parameters()} == shared
    with torch.no_grad():
        torch.testing.assert_close(hf(ids[None]).logits, before, atol=0, rtol=0)


def _same_controls(a, b, tol=1e-5):
    for la, lb in zip(a.backbone.layers, b.backbone.layers, strict=True):
        ca, cb = la.mixer.control, lb.mixer.control
        if ca.dt_scale != cb.dt_scale:
            return False
        if (ca.state_bound is None) != (cb.state_bound is None):
            return False
        if ca.state_bound is not None:
            torch.testing.assert_close(
                torch.tensor(ca.state_bound), torch.tensor(cb.state_bound), atol=tol, rtol=tol
            )
    return True


def test_the_api_names_train_length_where_it_is_needed(user_model):
    _, hf, _ = user_model
    for spec in ("window", "norm", "dt"):
        with pytest.raises(ValueError, match=f"mitigation '{spec}' needs .* pass train_length=N"):
            apply_named_mitigation(hf, spec, read_length=100)
    with pytest.raises(ValueError, match="train_length must be"):
        ev.calibrated_controls(hf, "window", None)


def test_other_model_objects_are_refused_by_name():
    cfg = transformers.MambaConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1)
    with pytest.raises(TypeError, match=r"MambaForCausalLM \(model_type 'mamba'\) has no Mamba-2"):
        apply_mitigation(transformers.MambaForCausalLM(cfg), SSMControl(window=4))
