"""Power-SMC as a `transformers` decoding strategy, and `power sample` on a chat model:
a tiny random Llama saved with a chat-template tokenizer (no download)."""

import pytest
import torch
from typer.testing import CliRunner

import longseq.power
from longseq.cli import app
from longseq.power import power_smc
from tests.power.test_eval import chat_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CHATS = [[{"role": "user", "content": "2+2?"}], [{"role": "user", "content": "Name a prime."}]]


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    tok = chat_tokenizer()
    tok.pad_token, tok.padding_side = "<eos>", "left"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    # a chat model that ends a turn with a token of its own as well as with <eos>
    end = tok.convert_tokens_to_ids("<|user|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, end]
    path = tmp_path_factory.mktemp("chat-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return model, tok, path, end


def _enc(tok):
    return tok.apply_chat_template(
        CHATS, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )


def test_generate_custom_generate_returns_prompt_and_power_smc_sample(chat_llama):
    model, tok, _, end = chat_llama
    enc = _enc(tok)
    assert (enc["attention_mask"] == 0).any()  # prompts of different lengths, left-padded
    kw = dict(alpha=4.0, n_particles=8, block_size=2, seed=3)
    seqs = model.generate(**enc, custom_generate=longseq.power.generate, max_new_tokens=12, **kw)
    width = enc["input_ids"].shape[1]
    assert seqs.shape[0] == 2 and width < seqs.shape[1] <= width + 12
    assert torch.equal(seqs[:, :width], enc["input_ids"])
    # the continuation is Power-SMC's sample through the direct API with the same seed
    ref = power_smc(
        model,
        enc,
        max_new_tokens=12,
        eos_token_id=[tok.eos_token_id, end],
        pad_token_id=tok.pad_token_id,
        **kw,
    )
    new = ref.sample[:, ref.prompt_len :]
    assert seqs[:, width:].tolist() == new[:, : seqs.shape[1] - width].tolist()
    assert (new[:, seqs.shape[1] - width :] == tok.pad_token_id).all()


def test_generate_stops_at_every_eos_of_the_generation_config(chat_llama):
    """The model's generation config lists two EOS ids; every row ends at the first of
    either and is padded after it."""
    model, tok, _, end = chat_llama
    seqs = model.generate(
        **_enc(tok),
        custom_generate=longseq.power.generate,
        max_new_tokens=30,
        n_particles=4,
        min_new_tokens=2,
        num_return_sequences=4,
        do_sample=True,  # transformers asks for it with num_return_sequences
    )
    width = _enc(tok)["input_ids"].shape[1]
    enders = []
    for row in seqs[:, width:].tolist():
        hits = [i for i, t in enumerate(row) if t in (tok.eos_token_id, end)]
        if hits:
            enders.append(row[hits[0]])
            assert hits[0] >= 2  # min_new_tokens
            assert all(t == tok.pad_token_id for t in row[hits[0] + 1 :])
    assert seqs.shape[0] == 8
    assert end in enders  # the second EOS id ends rows too


def test_power_sample_cli_uses_chat_template_dtype_and_eos_list(chat_llama, monkeypatch):
    model, tok, path, end = chat_llama
    seen = {}
    real = longseq.power.power_smc

    def spy(m, ids, **kw):
        seen.update(ids=ids.tolist(), dtype=next(m.parameters()).dtype, eos=kw["eos_token_id"])
        return real(m, ids, **kw)

    monkeypatch.setattr(longseq.power, "power_smc", spy)
    args = ["power", "sample", "2+2?", "--model", str(path), "--max-new-tokens", "4"]
    res = CliRunner().invoke(app, [*args, "--dtype", "bfloat16", "--show", "2"])
    assert res.exit_code == 0, res.output
    text = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert seen["ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert seen["dtype"] == torch.bfloat16
    assert seen["eos"] == [tok.eos_token_id, end]
    res = CliRunner().invoke(app, [*args, "--no-chat", "--show", "0"])
    assert res.exit_code == 0, res.output
    assert seen["ids"] == tok("2+2?")["input_ids"] and seen["dtype"] == torch.float32
    res = CliRunner().invoke(app, [*args, "--dtype", "int8"])
    assert res.exit_code == 2 and "--dtype" in res.output
