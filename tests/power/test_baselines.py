"""Baselines on the same model interface, checked against enumeration."""

import numpy as np
import pytest
import torch

from longseq.lm import sequence_logprob
from longseq.power import best_of_n, exact, mh_power_sample, sample
from tests.conftest import EOS, PROMPT, tiny_gpt

ALPHA = 4.0


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_temperature_sampling_matches_its_exact_distribution(tiny, tiny_enum, temperature):
    out = sample(
        tiny, PROMPT, n=8192, temperature=temperature, max_new_tokens=4, eos_token_id=EOS, seed=0
    )
    emp = exact.empirical(tiny_enum, out.sequences[:, len(PROMPT) :], eos=EOS)
    assert exact.tv_distance(emp, tiny_enum.temperature(temperature)) < 0.04


def test_sample_logprobs_are_the_models(tiny):
    out = sample(tiny, PROMPT, n=16, max_new_tokens=6, seed=1)
    torch.testing.assert_close(out.seq_logprobs, sequence_logprob(tiny, out.sequences, 2))


def test_best_of_n_returns_most_likely_of_its_samples(tiny):
    n = 32
    pool = sample(tiny, PROMPT, n=n, max_new_tokens=6, seed=5)
    best = best_of_n(tiny, PROMPT, n=n, max_new_tokens=6, seed=5)
    i = int(pool.seq_logprobs.argmax())
    assert torch.equal(best.sequences, pool.sequences[i])
    assert float(best.seq_logprobs) == pytest.approx(float(pool.seq_logprobs.max()))


def test_best_of_n_batched_prompts(tiny):
    out = best_of_n(tiny, torch.tensor([[1, 3], [2, 1]]), n=8, max_new_tokens=3)
    assert out.sequences.shape == (2, 5)


def test_mh_logprob_is_the_models_and_rate_is_a_rate(tiny):
    out = mh_power_sample(
        tiny, PROMPT, alpha=ALPHA, max_new_tokens=8, n_blocks=2, mh_steps=5, seed=0
    )
    ref = sequence_logprob(tiny, out.sequence[None], len(PROMPT))
    assert out.seq_logprob == pytest.approx(float(ref), abs=1e-4)
    assert 0.0 <= out.acceptance_rate <= 1.0
    assert out.n_proposals == 10


def test_mh_moves_toward_power_distribution():
    """Independent MH chains end far closer to p^alpha than the temperature-1/alpha
    proposal they start from (a model whose proposal covers the target, so 20 MH
    steps mix)."""
    model = tiny_gpt(seed=3, scale=2.0)
    enum = exact.enumerate_sequences(model, PROMPT, 3, eos_token_id=EOS)
    target, _ = enum.power(ALPHA)
    rows = []
    for s in range(100):
        out = mh_power_sample(
            model,
            PROMPT,
            alpha=ALPHA,
            max_new_tokens=3,
            eos_token_id=EOS,
            n_blocks=1,
            mh_steps=20,
            seed=s,
        )
        rows.append((out.sequence[len(PROMPT) :].tolist() + [EOS] * 3)[:3])
    tv = exact.tv_distance(exact.empirical(enum, torch.tensor(rows), eos=EOS), target)
    tv_proposal = exact.tv_distance(enum.temperature(1 / ALPHA), target)
    assert tv_proposal > 0.5
    assert tv < 0.25


@pytest.mark.parametrize(
    "fn, kw, msg",
    [
        (sample, dict(temperature=0.0), "temperature"),
        (sample, dict(n=0), "n_particles"),
        (mh_power_sample, dict(alpha=-2.0), "alpha"),
        (mh_power_sample, dict(n_blocks=0), "n_blocks"),
        (best_of_n, dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_arguments(tiny, fn, kw, msg):
    with pytest.raises(ValueError, match=msg):
        fn(tiny, PROMPT, **kw)


def test_empirical_ignores_padding(tiny_enum):
    rows = torch.tensor([[EOS, 3, 3, 3], [EOS, 1, 2, 3]])
    emp = exact.empirical(tiny_enum, rows, eos=EOS)
    assert emp[tiny_enum.index()[(EOS,)]] == 1.0
    assert np.isclose(float(emp.sum()), 1.0)
