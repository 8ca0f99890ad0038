"""Both checkpoint layouts of a Mamba-2 (the `transformers` one and the original
``mamba_ssm`` one) load into our model with transformers' own logits."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from longseq import hub
from longseq.cli import app

transformers = pytest.importorskip("transformers")

from tests.models.test_mamba2 import hf_model as random_hf_mamba2  # noqa: E402

VOCAB, PADDED = 50, 56  # mamba_ssm pads the vocabulary to a multiple of 8


def hf_model(tie, ngroups, seed=0, vocab_size=PADDED):
    return random_hf_mamba2(tie, ngroups, seed, vocab_size)


def mamba_ssm_config(tie, ngroups, **ssm):
    """A config.json as ``mamba_ssm``'s MambaConfig writes it."""
    return {
        "d_model": 32,
        "d_intermediate": 0,
        "n_layer": 2,
        "vocab_size": VOCAB,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": 8,
            "d_conv": 4,
            "expand": 2,
            "headdim": 16,
            "ngroups": ngroups,
            **ssm,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": tie,
    }


def save_mamba_ssm(hf, path, tie, ngroups, safetensors=False, **ssm):
    """The same weights under mamba_ssm's names (``backbone.embedding``), as its
    ``save_pretrained`` writes them (pytorch_model.bin, tied lm_head included)."""
    path.mkdir(parents=True)
    state = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
        for k, v in hf.state_dict().items()
    }
    if tie:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    (path / "config.json").write_text(json.dumps(mamba_ssm_config(tie, ngroups, **ssm)))
    if safetensors:
        if tie:
            state.pop("lm_head.weight")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    else:
        torch.save(state, path / "pytorch_model.bin")
    return path


@pytest.mark.parametrize(
    "tie, ngroups, safetensors", [(True, 1, False), (False, 2, False), (True, 2, True)]
)
def test_both_layouts_give_transformers_logits(tmp_path, tie, ngroups, safetensors):
    ref = hf_model(tie, ngroups)
    with hub.quiet_transformers():
        ref.save_pretrained(tmp_path / "hf")
    save_mamba_ssm(ref, tmp_path / "ms", tie, ngroups, safetensors, chunk_size=8)
    ids = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        want = ref(ids).logits
        for folder in ("hf", "ms"):
            model, codec, extra = hub.load_mamba2(tmp_path / folder)
            assert codec is None and extra == {}  # no tokenizer files, no longseq entry
            assert model.config.vocab_size == PADDED
            torch.testing.assert_close(model(ids).logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"ssm_cfg": {"layer": "Mamba1"}}, "ssm_cfg.layer is 'Mamba1'"),
        ({"ssm_cfg": {"d_state": 8}}, "ssm_cfg.layer is 'Mamba1' (the default)"),
        ({"d_intermediate": 64}, "d_intermediate=64"),
        ({"attn_layer_idx": [1]}, "attn_layer_idx=[1]"),
        ({"ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}}, "norm_before_gate"),
        ({"ssm_cfg": {"layer": "Mamba2", "d_ssm": 32}}, "ssm_cfg.d_ssm=32"),
    ],
)
def test_unsupported_mamba_ssm_configs_name_the_field(tmp_path, change, field):
    path = save_mamba_ssm(hf_model(True, 1), tmp_path / "ms", True, 1)
    cfg = {**mamba_ssm_config(True, 1), **change}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hub.CheckpointError, match=__import__("re").escape(field)):
        hub.load_mamba2(path)
    res = CliRunner().invoke(
        app, ["collapse", "diagnose", "--model", str(path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and field in " ".join(res.output.split()), res.output


def test_other_configs_are_refused_in_one_line(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(hub.CheckpointError, match="not a Mamba-2 checkpoint.*'llama'"):
        hub.load_mamba2(tmp_path / "llama")


def test_every_collapse_command_runs_on_a_mamba_ssm_folder(tmp_path):
    """A mamba_ssm folder with the tokenizer's files beside it, as a user assembles it
    (its config.json has no model_type for AutoTokenizer to go by)."""
    from tests.collapse.test_user_models import bpe_tokenizer

    tok = bpe_tokenizer()
    assert len(tok) == 300  # padded to 304 by mamba_ssm
    path = save_mamba_ssm(hf_model(True, 1, vocab_size=304), tmp_path / "ms", True, 1)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": len(tok)}))
    with hub.quiet_transformers():
        tok.save_pretrained(path)
    _, codec, _ = hub.load_mamba2(path)
    assert codec.encode_plain("def f(x):") == tok.encode("def f(x):", add_special_tokens=False)
    runner = CliRunner()
    for cmd in (
        ["diagnose", "--length", "96", "--segment", "32", "--mitigation", "window"],
        ["loss-curve", "--length", "96", "--mitigation", "none", "--mitigation", "norm"],
        ["passkey", "--lengths", "200", "--trials", "1", "--mitigation", "dt"],
    ):
        out = tmp_path / cmd[0]
        res = runner.invoke(
            app,
            ["collapse", *cmd, "--model", str(path), "--train-length", "32", "--out", str(out)],
        )
        assert res.exit_code == 0, res.output
        assert any(out.glob("*.json")) and any(out.glob("*.png"))
