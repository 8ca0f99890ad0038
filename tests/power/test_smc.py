"""Power-SMC against exact enumeration and against a cache-free recomputation."""

import math

import numpy as np
import pytest
import torch

from longseq.lm import sequence_logprob
from longseq.power import exact, power_smc
from longseq.power.smc import cow_assignment, systematic_resample
from tests.conftest import EOS, PROMPT, hf_models, tiny_gpt

ALPHA = 4.0


def smc_tv(model, enum, n, seeds=range(4), **kw):
    target, _ = enum.power(ALPHA)
    tvs = []
    for s in seeds:
        out = power_smc(
            model,
            PROMPT,
            alpha=ALPHA,
            n_particles=n,
            max_new_tokens=4,
            eos_token_id=EOS,
            seed=s,
            **kw,
        )
        emp = exact.empirical(enum, out.sequences[:, len(PROMPT) :], out.weights, eos=EOS)
        tvs.append(exact.tv_distance(emp, target))
    return float(np.mean(tvs))


def test_temperature_one_over_alpha_is_biased(tiny_enum):
    target, _ = tiny_enum.power(ALPHA)
    assert exact.tv_distance(tiny_enum.temperature(1 / ALPHA), target) > 0.3


@pytest.mark.parametrize(
    "kw",
    [dict(block_size=1), dict(block_size=2, ramp_tokens=3), dict(block_size=1, n_rounds=4)],
    ids=["every-token", "ramp", "rounds"],
)
def test_smc_converges_to_power_distribution(tiny, tiny_enum, kw):
    tv = {n: smc_tv(tiny, tiny_enum, n, **kw) for n in (16, 256, 4096)}
    assert tv[16] > tv[256] > tv[4096]
    assert tv[4096] < 0.08
    # far below the bias of token-level low temperature
    target, _ = tiny_enum.power(ALPHA)
    assert tv[4096] < exact.tv_distance(tiny_enum.temperature(1 / ALPHA), target) / 5


def test_log_z_estimate_matches_enumeration(tiny, tiny_enum):
    _, log_z = tiny_enum.power(ALPHA)
    est = [
        power_smc(
            tiny,
            PROMPT,
            alpha=ALPHA,
            n_particles=4096,
            max_new_tokens=4,
            eos_token_id=EOS,
            block_size=2,
            ramp_tokens=3,
            seed=s,
        ).log_z
        for s in range(3)
    ]
    assert abs(np.mean(est) - log_z) < 0.05


@pytest.mark.parametrize("name", ["llama", "mamba2", "gpt2"])
def test_particle_logprobs_match_full_forward_after_resampling(name):
    """Every particle's log p(y|x) accumulated through cached decoding with copy-on-write
    resampling equals one cache-free forward of its final sequence."""
    model = hf_models()[name]
    prompts = torch.tensor([[3, 4, 5], [7, 8, 9]])
    out = power_smc(
        model,
        prompts,
        alpha=2.0,
        n_particles=8,
        max_new_tokens=12,
        eos_token_id=1,
        block_size=2,
        kappa=1.0,
        seed=0,
    )
    assert out.n_resamples > 0
    seqs = out.sequences.reshape(-1, out.sequences.shape[-1])
    gen = seqs[:, 3:]
    after_eos = (gen == 1).int().cumsum(-1) - (gen == 1).int() > 0
    ref = sequence_logprob(model, seqs, 3, after_eos)
    torch.testing.assert_close(out.seq_logprobs.reshape(-1), ref, atol=1e-4, rtol=1e-4)
    # each prompt's particles carry their own prompt
    assert (out.sequences[0, :, :3] == prompts[0]).all()
    assert (out.sequences[1, :, :3] == prompts[1]).all()


def test_own_gpt_logprobs_match_after_resampling(tiny):
    out = power_smc(
        tiny, PROMPT, alpha=ALPHA, n_particles=64, max_new_tokens=8, block_size=1, kappa=1.0, seed=1
    )
    assert out.n_resamples > 0
    ref = sequence_logprob(tiny, out.sequences, len(PROMPT))
    torch.testing.assert_close(out.seq_logprobs, ref, atol=1e-4, rtol=1e-4)


def test_inplace_and_copy_cache_reorder_agree(tiny):
    kw = dict(alpha=ALPHA, n_particles=64, max_new_tokens=8, block_size=1, kappa=1.0, seed=3)
    a = power_smc(tiny, PROMPT, cache_reorder="inplace", **kw)
    b = power_smc(tiny, PROMPT, cache_reorder="copy", **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.log_weights, b.log_weights)


def test_eos_is_absorbing(tiny):
    out = power_smc(
        tiny,
        PROMPT,
        alpha=ALPHA,
        n_particles=256,
        max_new_tokens=6,
        eos_token_id=EOS,
        pad_token_id=2,
        block_size=1,
        seed=0,
    )
    gen = out.sequences[:, len(PROMPT) :]
    ended = 0
    for row in gen.tolist():
        if EOS in row:
            ended += 1
            assert all(t == 2 for t in row[row.index(EOS) + 1 :])
    assert ended > 0


def test_batch_of_prompts_shapes_and_sample_from_particles(tiny):
    prompts = torch.tensor([[1, 3], [2, 2], [3, 1]])
    out = power_smc(tiny, prompts, alpha=2.0, n_particles=5, max_new_tokens=3, n_rounds=2)
    assert out.sequences.shape == (3, 10, 5)
    assert out.log_weights.shape == (3, 10) and out.log_z.shape == (3,)
    torch.testing.assert_close(out.log_weights.exp().sum(-1), torch.ones(3))
    for b in range(3):
        assert any(torch.equal(out.sample[b], s) for s in out.sequences[b])


def test_single_prompt_shapes(tiny):
    out = power_smc(tiny, PROMPT[None], alpha=2.0, n_particles=5, max_new_tokens=3)
    assert out.sequences.shape == (5, 5) and out.sample.shape == (5,)
    assert isinstance(out.log_z, float)


def test_systematic_resampling_counts():
    """Systematic resampling gives each particle floor(N w) or ceil(N w) offspring."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.97, 0.01, 0.01, 0.01]])
    for _ in range(50):
        anc = systematic_resample(w.log(), g)
        for row, wr in zip(anc, w, strict=True):
            counts = torch.bincount(row, minlength=4).double()
            assert ((counts - 4 * wr).abs() < 1.0 + 1e-9).all()


def test_cow_assignment_rebuilds_ancestor_multiset():
    rng = np.random.default_rng(0)
    for _ in range(100):
        anc = np.sort(rng.integers(0, 6, size=(2, 6)), axis=1)
        dst, src = cow_assignment(anc)
        assert not set(dst) & set(src)  # in place is safe
        rows = np.arange(12)
        rows[dst] = src
        for g in range(2):
            got = np.sort(rows[g * 6 : (g + 1) * 6] - g * 6)
            assert np.array_equal(got, np.sort(anc[g]))


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(n_particles=0), "n_particles"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(kappa=1.5), "kappa"),
        (dict(block_size=0), "block_size"),
        (dict(ramp_tokens=-1), "ramp_tokens"),
        (dict(n_rounds=0), "n_rounds"),
        (dict(eos_token_id="x"), "eos_token_id"),
        (dict(cache_reorder="lazy"), "cache_reorder"),
    ],
)
def test_bad_arguments_name_the_argument(tiny, kw, msg):
    with pytest.raises(ValueError, match=msg):
        power_smc(tiny, PROMPT, **kw)


def test_empty_prompt_is_rejected(tiny):
    with pytest.raises(ValueError, match="non-empty prompt"):
        power_smc(tiny, torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        power_smc(tiny, torch.tensor([0.5, 1.0]))


class _NaNModel(torch.nn.Module):
    def __init__(self, when: int):
        super().__init__()
        self.inner, self.when, self.calls = tiny_gpt(), when, 0

    def forward(self, ids, cache=None, use_cache=False):
        out = self.inner(ids, cache=cache, use_cache=use_cache)
        self.calls += 1
        if self.calls > self.when:
            out.logits = out.logits * float("nan")
        return out


@pytest.mark.parametrize("when", [0, 3])
def test_nan_logits_raise_clear_error(when):
    with pytest.raises(ValueError, match="NaN"):
        power_smc(_NaNModel(when), PROMPT, n_particles=4, max_new_tokens=8, block_size=2)


def test_model_without_cache_is_rejected():
    class NoCache(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(ids.shape[0], ids.shape[1], 4)

    with pytest.raises(TypeError, match="cache"):
        power_smc(NoCache(), PROMPT, n_particles=2, max_new_tokens=2)


def test_alpha_one_is_plain_sampling_with_equal_weights(tiny):
    out = power_smc(tiny, PROMPT, alpha=1.0, n_particles=32, max_new_tokens=4, seed=0)
    torch.testing.assert_close(out.log_weights, torch.full((32,), -math.log(32)))
    assert abs(out.log_z) < 1e-5  # Z = sum_y p(y) = 1
