"""Proposal and stopping controls (top-k, top-p, min_new_tokens, stop strings,
max_time, early stop, context fit) checked against enumeration and by counting."""

import time

import numpy as np
import pytest
import torch

from longseq.lm import sequence_logprob
from longseq.power import best_of_n, exact, mh_power_sample, power_smc, sample
from longseq.power.smc import ContextClampWarning
from tests.conftest import EOS, PROMPT, tiny_gpt

ALPHA = 2.0
CONTROLS = [
    dict(top_k=2),
    dict(top_p=0.7),
    dict(min_new_tokens=2),
    dict(top_k=3, top_p=0.8, min_new_tokens=1),
]
IDS = ["top-k", "top-p", "min-new-tokens", "all-three"]


@pytest.fixture(scope="module")
def soft():
    """A toy model soft enough that truncation changes p^alpha visibly."""
    model = tiny_gpt(seed=1, scale=2.5)
    return model, exact.enumerate_sequences(model, PROMPT, 4, eos_token_id=EOS)


def _support(enum, kw):
    return enum.support(eos_token_id=EOS, **kw)


@pytest.mark.parametrize("kw", CONTROLS, ids=IDS)
def test_smc_targets_power_restricted_to_the_support(soft, kw):
    model, enum = soft
    allowed = _support(enum, kw)
    target, log_z = enum.power(ALPHA, allowed)
    full, _ = enum.power(ALPHA)
    tvs, lzs = [], []
    for seed in range(2):
        out = power_smc(
            model,
            PROMPT,
            alpha=ALPHA,
            n_particles=4096,
            max_new_tokens=4,
            eos_token_id=EOS,
            block_size=1,
            seed=seed,
            **kw,
        )
        emp = exact.empirical(enum, out.sequences[:, len(PROMPT) :], out.weights, eos=EOS)
        assert float(emp[~allowed].sum()) == 0.0  # no particle ever leaves the support
        tvs.append(exact.tv_distance(emp, target))
        lzs.append(out.log_z)
    assert np.mean(tvs) < 0.06
    assert (
        np.mean(tvs) < exact.tv_distance(full, target) / 2 or exact.tv_distance(full, target) < 0.06
    )
    assert abs(np.mean(lzs) - log_z) < 0.05  # the restricted normalizer, not the full one


@pytest.mark.parametrize("kw", CONTROLS, ids=IDS)
def test_truncated_temperature_sampling_matches_its_exact_law(soft, kw):
    model, enum = soft
    out = sample(
        model, PROMPT, n=8192, temperature=0.5, max_new_tokens=4, eos_token_id=EOS, seed=0, **kw
    )
    emp = exact.empirical(enum, out.sequences[:, len(PROMPT) :], eos=EOS)
    law = enum.temperature(0.5, eos_token_id=EOS, **kw)
    assert abs(float(law.sum()) - 1.0) < 1e-9
    assert exact.tv_distance(emp, law) < 0.04


def test_truncation_keeps_untruncated_logprobs(soft):
    """Weights and best-of-N ranks use the model's own log p, not the truncated q."""
    model, _ = soft
    out = sample(model, PROMPT, n=32, max_new_tokens=6, top_k=2, seed=1)
    torch.testing.assert_close(out.seq_logprobs, sequence_logprob(model, out.sequences, 2))


def test_min_new_tokens_delays_eos(soft):
    model, _ = soft
    out = sample(model, PROMPT, n=256, max_new_tokens=6, eos_token_id=EOS, min_new_tokens=3)
    gen = out.sequences[:, len(PROMPT) :]
    assert not (gen[:, :3] == EOS).any()
    assert (out.lengths >= 3).all()


class Chars:
    """Decodes the toy vocabulary as letters (token 0, EOS, as nothing)."""

    def decode(self, ids):
        return "".join("-abc"[t] for t in ids if t != EOS)


def test_stop_strings_end_particles_like_eos(soft):
    """A stop string is absorbing: SMC targets p^alpha over sequences cut at their
    first stop string, which the enumeration builds with the same predicate."""
    model, _ = soft
    chars = Chars()
    enum = exact.enumerate_sequences(
        model, PROMPT, 4, eos_token_id=EOS, stop=lambda s: "ca" in chars.decode(s)
    )
    target, log_z = enum.power(ALPHA)
    out = power_smc(
        model,
        PROMPT,
        alpha=ALPHA,
        n_particles=4096,
        max_new_tokens=4,
        eos_token_id=EOS,
        block_size=1,
        seed=0,
        stop_strings=["ca"],
        tokenizer=chars,
    )
    gen = out.sequences[:, len(PROMPT) :]
    for row, n in zip(gen.tolist(), out.lengths.tolist(), strict=True):
        text = chars.decode(row[:n])
        assert "ca" not in chars.decode(row[: n - 1])  # ends at the first occurrence
        assert text.endswith("ca") or row[n - 1] == EOS or n == 4
    emp = exact.empirical(enum, gen, out.weights, eos=EOS, lengths=out.lengths)
    assert exact.tv_distance(emp, target) < 0.06
    assert abs(out.log_z - log_z) < 0.1
    stopped = [s for s in enum.sequences if "ca" in chars.decode(s)]
    assert stopped and float(target[[enum.index()[s] for s in stopped]].sum()) > 0.05


def test_stop_strings_need_a_tokenizer(tiny):
    with pytest.raises(ValueError, match="tokenizer"):
        power_smc(tiny, PROMPT, max_new_tokens=4, stop_strings=["x"])


class _ForcedEOS(torch.nn.Module):
    """The toy model, but EOS is certain once the sequence holds ``after`` tokens;
    counts its calls."""

    def __init__(self, after: int, delay: float = 0.0):
        super().__init__()
        self.inner, self.after, self.delay, self.calls = tiny_gpt(), after, delay, 0
        self.config = self.inner.config

    def forward(self, ids, cache=None, use_cache=False):
        past = cache.get_seq_length() if cache is not None else 0
        out = self.inner(ids, cache=cache, use_cache=use_cache)
        self.calls += 1
        time.sleep(self.delay)
        if past + ids.shape[1] >= self.after:
            out.logits[..., EOS] = 60.0
        return out


@pytest.mark.parametrize("method", ["smc", "sample", "best-of-n", "mh"])
def test_decoding_stops_when_every_row_has_ended(method):
    """With EOS certain from the 4th token on, no sampler decodes past it, however
    large max_new_tokens is."""
    model = _ForcedEOS(after=len(PROMPT) + 2)
    kw = dict(max_new_tokens=12, eos_token_id=EOS, seed=0)
    if method == "smc":
        out = power_smc(model, PROMPT, n_particles=8, block_size=64, **kw)
        gen = out.sequences[:, len(PROMPT) :]
    elif method == "sample":
        gen = sample(model, PROMPT, n=8, **kw).sequences[:, len(PROMPT) :]
    elif method == "best-of-n":
        gen = best_of_n(model, PROMPT, n=8, **kw).sequences[None, len(PROMPT) :]
    else:
        out = mh_power_sample(model, PROMPT, n_blocks=2, mh_steps=2, **kw)
        gen = out.sequence[None, len(PROMPT) :]
    assert gen.shape[1] <= 3
    if method != "mh":
        assert model.calls == gen.shape[1]  # the prefill and one call per token but the last


@pytest.mark.parametrize("fn", [power_smc, sample, best_of_n, mh_power_sample])
def test_generation_is_fitted_to_the_models_context(tiny, fn):
    """The toy GPT has block_size 16: max_new_tokens=64 is lowered to 14, with a warning
    naming max_new_tokens and the block size, instead of failing mid-way."""
    with pytest.warns(ContextClampWarning, match=r"max_new_tokens=64.*block size is 16"):
        out = fn(tiny, PROMPT, max_new_tokens=64, seed=0)
    seqs = out.sequence if fn is mh_power_sample else out.sequences
    assert seqs.shape[-1] == 16


def test_prompt_that_fills_the_context_is_rejected(tiny):
    with pytest.raises(ValueError, match="block size"):
        power_smc(tiny, torch.ones(16, dtype=torch.long), max_new_tokens=1)


def test_max_time_truncates_live_particles():
    model = _ForcedEOS(after=100, delay=0.02)  # EOS never forced within the context
    out = power_smc(model, PROMPT, n_particles=4, max_new_tokens=14, max_time=0.1, seed=0)
    assert out.stopped_by_time
    assert 1 <= out.sequences.shape[1] - len(PROMPT) < 14
    full = power_smc(model, PROMPT, n_particles=4, max_new_tokens=5, seed=0)
    assert not full.stopped_by_time


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_new_tokens=-1), "min_new_tokens"),
        (dict(max_time=0), "max_time"),
        (dict(stop_strings=[""], tokenizer=Chars()), "stop_strings"),
    ],
)
def test_bad_controls_name_the_argument(tiny, kw, msg):
    with pytest.raises(ValueError, match=msg):
        power_smc(tiny, PROMPT, max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match=msg):
        sample(tiny, PROMPT, max_new_tokens=4, **kw)
