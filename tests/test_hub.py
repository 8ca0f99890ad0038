import json
import shutil

import pytest
import torch

from longseq import hub
from longseq.models.gpt import GPT, GPTConfig


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    hub.save_pretrained(m, tmp_path / "ck", "gpt", {"metrics": {"x": 1}})
    m2, info = hub.load(tmp_path / "ck")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(m2(ids).logits, m(ids).logits)
    assert info.extra["metrics"] == {"x": 1}
    assert m2.lm_head.weight is m2.wte.weight  # tying survives


def test_half_precision_checkpoint_loads_into_float32(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    hub.save_pretrained(m, tmp_path / "full", "gpt")
    hub.save_pretrained(m, tmp_path / "half", "gpt", half=True)
    stored = load_file(str(tmp_path / "half" / hub.WEIGHTS))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    full_size = (tmp_path / "full" / hub.WEIGHTS).stat().st_size
    assert (tmp_path / "half" / hub.WEIGHTS).stat().st_size < 0.6 * full_size
    m2, _ = hub.load(tmp_path / "half")
    for (k, v), v2 in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        assert v2.dtype == torch.float32, k
        torch.testing.assert_close(v2, v.half().float(), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(hub.registry()))
def test_every_shipped_checkpoint_loads_and_records_its_script(name):
    from pathlib import Path

    entry = hub.registry()[name]
    model, info = hub.load(name)
    assert hub.sha256_file(info.path / hub.WEIGHTS) == entry["sha256"]
    script = info.extra["training"]["script"]
    assert (Path(__file__).parent.parent / script).exists()
    assert (info.path / hub.WEIGHTS).stat().st_size < 8 * 2**20  # a few MB at most
    assert not model.training


def test_power_checkpoint_is_small():
    model, _ = hub.load("power-arith-gpt")
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_unknown_name_lists_known(tmp_path):
    with pytest.raises(hub.CheckpointError, match="power-arith-gpt"):
        hub.load("no-such-model")


def test_corrupted_and_missing_files(tmp_path, monkeypatch):
    src = hub.CHECKPOINT_DIR / hub.registry()["power-arith-gpt"]["path"]
    root = tmp_path / "checkpoints"
    shutil.copytree(src, root / "power-arith-gpt")
    reg = {"power-arith-gpt": {**hub.registry()["power-arith-gpt"], "path": "power-arith-gpt"}}
    (root / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setattr(hub, "CHECKPOINT_DIR", root)
    monkeypatch.setattr(hub, "REGISTRY_FILE", root / "registry.json")
    hub.load("power-arith-gpt")  # intact copy loads
    w = root / "power-arith-gpt" / hub.WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(hub.CheckpointError, match="corrupted"):
        hub.load("power-arith-gpt")
    w.unlink()
    with pytest.raises(hub.CheckpointError, match="missing"):
        hub.load("power-arith-gpt")


def test_directory_with_wrong_weights(tmp_path):
    m = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8))
    hub.save_pretrained(m, tmp_path / "ck", "gpt")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["model"]["n_layer"] = 2
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hub.CheckpointError, match="do not match"):
        hub.load(tmp_path / "ck")


def test_transformers_directory_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(40)}
    vocab["[UNK]"] = 40
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="t1")
    cfg = transformers.LlamaConfig(
        vocab_size=41,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=1,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    fast.save_pretrained(tmp_path / "llama")
    model, codec, _ = hub.load_causal_lm(tmp_path / "llama")
    assert codec.encode("t3 t4") == [3, 4]
    assert codec.eos_token_id == 1
    from longseq.power import power_smc

    out = power_smc(
        model,
        torch.tensor(codec.encode("t3 t4")),
        n_particles=4,
        max_new_tokens=3,
        eos_token_id=codec.eos_token_id,
    )
    assert out.sequences.shape[0] == 4


def test_saved_weights_are_readable_like_any_new_file(tmp_path):
    import os

    from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

    m = GPT(GPTConfig(vocab_size=7, block_size=8, n_layer=1, n_head=1, n_embd=8))
    m2 = Mamba2ForCausalLM(Mamba2Config(vocab_size=7, d_model=16, n_layer=1, d_state=4, headdim=8))
    umask = os.umask(0o022)
    try:
        hub.save_pretrained(m, tmp_path / "ck", "gpt")
        m2.save_pretrained(tmp_path / "m2")
    finally:
        os.umask(umask)
    for folder in ("ck", "m2"):
        assert (tmp_path / folder / "model.safetensors").stat().st_mode & 0o777 == 0o644


def _llama_without_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with hub.quiet_transformers():
        transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_transformers_folder_without_tokenizer(tmp_path, capfd):
    path = _llama_without_tokenizer(tmp_path / "llama")
    capfd.readouterr()
    with pytest.raises(hub.CheckpointError, match="has no tokenizer files"):
        hub.load_causal_lm(path)
    model, codec, _ = hub.load_causal_lm(path, tokenizer=False)
    assert codec is None
    assert model(torch.tensor([[1, 2]])).logits.shape == (1, 2, 11)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err  # no progress bars in our output
