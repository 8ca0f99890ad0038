"""Batches of prompts of different lengths: each prompt is its own run, so its result in
a batch is its result alone with the same seed; left padding, masks and encodings."""

import functools

import pytest
import torch

from longseq import lm
from longseq.lm import sequence_logprob
from longseq.power import best_of_n, exact, mh_power_sample, power_smc, sample
from tests.conftest import EOS, hf_models, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[1, 3], [2, 1, 1, 3], [3]]


def _gen(seqs: torch.Tensor, width: int) -> list[list[int]]:
    return seqs[..., width:].reshape(-1, seqs.shape[-1] - width).tolist()


def _trim(rows: list[list[int]], pad: int) -> list[list[int]]:
    out = []
    for r in rows:
        while r and r[-1] == pad:
            r = r[:-1]
        out.append(r)
    return out


@functools.cache
def _models():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    qwen2 = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=40,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    return {"gpt": tiny_gpt(), "qwen2": qwen2, **hf_models()}


@pytest.mark.parametrize("name", ["gpt", "llama", "qwen2", "gpt2", "mamba2"])
def test_power_smc_batch_equals_each_prompt_alone(name):
    """Mixed prompt lengths, resampling, a ramp and EOS: every prompt's particles,
    weights, log Z and pick are those of the same prompt decoded alone with its seed
    (Llama, Qwen2, GPT-2 and our GPT decode the batch left-padded; Mamba-2 takes no position ids
    and is decoded in groups of one length)."""
    model = _models()[name]
    kw = dict(alpha=4.0, n_particles=8, max_new_tokens=6, eos_token_id=EOS, pad_token_id=2)
    kw.update(block_size=2, ramp_tokens=3, kappa=0.9)
    out = power_smc(model, PROMPTS, seed=11, **kw)
    assert out.sequences.shape[:2] == (3, 8) and out.prompt_len == 4
    assert out.n_resamples > 0
    for i, p in enumerate(PROMPTS):
        one = power_smc(model, torch.tensor(p), seed=11 + i, **kw)
        assert out.sequences[i, :, : 4 - len(p)].eq(2).all()  # left padding
        assert _trim(_gen(out.sequences[i], 4), 2) == _trim(_gen(one.sequences, len(p)), 2)
        torch.testing.assert_close(out.log_weights[i], one.log_weights, atol=1e-4, rtol=1e-4)
        assert float(out.log_z[i]) == pytest.approx(one.log_z, abs=1e-4)
        assert int(out.sample_index[i]) == one.sample_index
        assert int(out.steps[i]) == one.steps


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_baselines_batch_equals_each_prompt_alone(name):
    model = _models()[name]
    kw = dict(max_new_tokens=5, eos_token_id=EOS, pad_token_id=2)
    many = sample(model, PROMPTS, n=6, temperature=0.5, seed=[5, 9, 1], **kw)
    best = best_of_n(model, PROMPTS, n=6, seed=[5, 9, 1], **kw)
    mh = mh_power_sample(model, PROMPTS, n_blocks=2, mh_steps=2, seed=[5, 9, 1], **kw)
    for i, (p, s) in enumerate(zip(PROMPTS, [5, 9, 1], strict=True)):
        x = torch.tensor(p)
        one = sample(model, x, n=6, temperature=0.5, seed=s, **kw)
        assert _trim(_gen(many.sequences[i], 4), 2) == _trim(_gen(one.sequences, len(p)), 2)
        torch.testing.assert_close(many.seq_logprobs[i], one.seq_logprobs, atol=1e-4, rtol=1e-4)
        b1 = best_of_n(model, x, n=6, seed=s, **kw)
        assert _trim(_gen(best.sequences[i], 4), 2) == _trim(_gen(b1.sequences, len(p)), 2)
        m1 = mh_power_sample(model, x, n_blocks=2, mh_steps=2, seed=s, **kw)
        assert mh[i].sequence.tolist() == m1.sequence.tolist()


def test_batched_logprobs_are_the_models_for_each_unpadded_prompt():
    """Each particle's log p(y|x), accumulated on the padded batch, equals one forward of
    its unpadded prompt + generation."""
    model = hf_models()["llama"]
    out = power_smc(model, PROMPTS, alpha=2.0, n_particles=4, max_new_tokens=8, seed=0, kappa=1.0)
    for i, p in enumerate(PROMPTS):
        seqs = torch.cat([torch.tensor(p).expand(4, -1), out.sequences[i, :, 4:]], 1)
        ref = sequence_logprob(model, seqs, len(p))
        torch.testing.assert_close(out.seq_logprobs[i], ref, atol=1e-4, rtol=1e-4)


def test_batch_of_prompts_matches_the_exact_power_distributions():
    """Enumeration: on a batch of prompts of lengths 1, 2 and 3, every prompt's weighted
    particles approach its own exact p^alpha (and not the neighbours'), far closer than
    token-level temperature 1/alpha gets."""
    model = tiny_gpt()
    prompts = [[3], [1, 3], [3, 2, 1]]
    enums = [
        exact.enumerate_sequences(model, torch.tensor(p), 4, eos_token_id=EOS) for p in prompts
    ]
    tv = [0.0] * 3
    seeds = [0, 100, 200]
    for s in seeds:
        out = power_smc(
            model,
            prompts,
            alpha=4.0,
            n_particles=4096,
            max_new_tokens=4,
            eos_token_id=EOS,
            block_size=2,
            ramp_tokens=3,
            seed=s,
        )
        for i, enum in enumerate(enums):
            emp = exact.empirical(enum, out.sequences[i, :, 3:], out.weights[i], eos=EOS)
            tv[i] += exact.tv_distance(emp, enum.power(4.0)[0]) / len(seeds)
    for i, enum in enumerate(enums):
        target = enum.power(4.0)[0]
        assert tv[i] < 0.08
        assert tv[i] < exact.tv_distance(enum.temperature(0.25), target) / 4
        if i:  # the targets differ, so prompts mixed up would show
            other = enums[i - 1].power(4.0)[0]
            assert exact.tv_distance(target, other) > 2 * max(tv[i], tv[i - 1])


def test_mask_forms_agree_and_right_padding_is_moved_left():
    model = tiny_gpt()
    kw = dict(alpha=2.0, n_particles=4, max_new_tokens=4, seed=3)
    ref = power_smc(model, PROMPTS, **kw)
    left = torch.tensor([[0, 0, 1, 3], [2, 1, 1, 3], [0, 0, 0, 3]])
    right = torch.tensor([[1, 3, 0, 0], [2, 1, 1, 3], [3, 0, 0, 0]])
    for ids in (left, right):
        mask = (torch.arange(4) >= 0) & (ids >= 0)
        lens = torch.tensor([2, 4, 1])
        if ids is left:
            mask = torch.arange(4)[None] >= 4 - lens[:, None]
        else:
            mask = torch.arange(4)[None] < lens[:, None]
        got = power_smc(model, ids, attention_mask=mask.long(), **kw)
        assert torch.equal(got.sequences, ref.sequences)
        enc = {"input_ids": ids, "attention_mask": mask.long()}
        assert torch.equal(power_smc(model, enc, **kw).sequences, ref.sequences)


def test_batch_encoding_from_a_tokenizer_is_accepted():
    from tests.power.test_eval import chat_tokenizer

    tok = chat_tokenizer()
    tok.pad_token = "<eos>"
    texts = ["ab", "abcd", "c"]
    model = hf_models()["llama"]  # 40 tokens: ids are taken mod 40 below
    rows = [[i % 40 for i in tok(t)["input_ids"]] for t in texts]
    enc = tok(texts, padding=True, return_tensors="pt")  # right padding
    enc["input_ids"] = enc["input_ids"] % 40
    out = sample(model, enc, n=2, max_new_tokens=3, seed=4)
    ref = sample(model, rows, n=2, max_new_tokens=3, seed=4)
    assert torch.equal(out.sequences, ref.sequences)
    # without tensors: lists of ids of different lengths, and their masks
    plain = tok(texts)
    plain["input_ids"] = [[i % 40 for i in r] for r in plain["input_ids"]]
    assert torch.equal(sample(model, plain, n=2, max_new_tokens=3, seed=4).sequences, ref.sequences)


@pytest.mark.parametrize(
    "ids, mask, err, msg",
    [
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 1]]), ValueError, "between tokens"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[0, 0, 0]]), ValueError, "all 0"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1]]), ValueError, "shape"),
        ([[1, 2], []], None, ValueError, "at least one token"),
        ([[1, 2], [0.5]], None, TypeError, "integer token ids"),
        ({"ids": [1]}, None, TypeError, "input_ids"),
        ([[1, 2], [3]], [[1, 1]], ValueError, "1 rows for 2 prompts"),
        ([[1, 2], [3]], [[1, 1], [1, 1]], ValueError, "2 positions for 1 tokens"),
        ("1 2", None, TypeError, "token ids"),
    ],
)
def test_bad_prompts_are_named(ids, mask, err, msg):
    with pytest.raises(err, match=msg):
        power_smc(tiny_gpt(), ids, attention_mask=mask, max_new_tokens=2)


def test_seed_list_must_match_the_prompts():
    with pytest.raises(ValueError, match="one per prompt"):
        sample(tiny_gpt(), PROMPTS, seed=[1, 2], max_new_tokens=2)


def test_prompts_stop_on_their_own_and_fit_their_own_context():
    """A prompt whose particles all end early stops drawing; a prompt near the end of the
    model's context (block size 16) gets fewer new tokens, the others keep theirs."""
    model = tiny_gpt()
    long = [1, 2] * 6 + [3]  # 13 tokens: room for 3
    with pytest.warns(UserWarning, match="at most 3 new tokens"):
        out = sample(model, [[1, 3], long], n=4, max_new_tokens=8, seed=0)
    assert out.new_tokens_bound.tolist() == [8, 3]
    assert out.lengths[1].max() == 3 and out.lengths[0].max() == 8
    assert lm.prompt_batch([[1], long]).padded


class _Chars:
    def decode(self, ids):
        return "".join("abcd"[i] for i in ids)


@pytest.mark.parametrize("fn", [power_smc, sample, best_of_n, mh_power_sample])
def test_controls_per_prompt_in_a_batch(fn):
    """min_new_tokens, top-k and stop strings in a batch of prompts of different lengths:
    each prompt's result is its result alone (MH's chains also ban EOS row by row, as
    their prefixes differ in length)."""
    model = tiny_gpt(seed=3, scale=2.0)
    kw = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=2, min_new_tokens=3, top_k=3)
    kw.update(stop_strings=["cb"], tokenizer=_Chars())
    if fn is mh_power_sample:
        kw.update(n_blocks=3, mh_steps=3)
    batch = fn(model, PROMPTS, seed=20, **kw)
    for i, p in enumerate(PROMPTS):
        one = fn(model, torch.tensor(p), seed=20 + i, **kw)
        if fn is mh_power_sample:
            assert batch[i].sequence.tolist() == one.sequence.tolist()
            assert batch[i].n_proposals == one.n_proposals
            assert batch[i].tokens_decoded == one.tokens_decoded
            continue
        got = _trim(_gen(batch.sequences[i], 4), 2)
        assert got == _trim(_gen(one.sequences, len(p)), 2)
        assert all(r.index(EOS) >= 2 for r in got if EOS in r)  # min_new_tokens


def test_eos_banned_on_some_rows_only():
    from longseq.power.proposal import propose

    logits = torch.randn(4, 6)
    eos = torch.tensor([0])
    rows = torch.tensor([True, False, True, False])
    g = torch.Generator().manual_seed(0)
    tok, logp, log_norm = propose(logits, 2.0, g, top_k=4, banned=eos, banned_rows=rows)
    _, _, ref_banned = propose(logits, 2.0, torch.Generator(), top_k=4, banned=eos)
    _, _, ref_free = propose(logits, 2.0, torch.Generator(), top_k=4)
    torch.testing.assert_close(log_norm, torch.where(rows, ref_banned, ref_free))
    assert not bool((tok[rows] == 0).any())
    ref_logp = logits.log_softmax(-1).gather(1, tok[:, None])[:, 0]
    torch.testing.assert_close(logp, ref_logp)
