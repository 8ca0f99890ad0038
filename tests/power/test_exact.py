"""The enumeration reference itself, checked by brute force."""

import itertools

import torch

from longseq.lm import sequence_logprob
from longseq.power import exact
from tests.conftest import EOS, PROMPT


def test_enumeration_is_a_distribution_and_logprobs_are_right(tiny, tiny_enum):
    assert abs(float(tiny_enum.logp.exp().sum()) - 1.0) < 1e-9
    # 3 non-EOS tokens: sequences end at EOS or at length 4
    assert len(tiny_enum.sequences) == 1 + 3 + 9 + 27 + 81
    for seq, lp in list(zip(tiny_enum.sequences, tiny_enum.logp, strict=True))[::7]:
        ids = torch.cat([PROMPT, torch.tensor(seq)])[None]
        assert abs(float(sequence_logprob(tiny, ids, len(PROMPT))) - float(lp)) < 1e-4


def test_power_and_temperature_are_normalized(tiny_enum):
    for a in (0.5, 1.0, 4.0):
        p, log_z = tiny_enum.power(a)
        assert abs(float(p.sum()) - 1) < 1e-9
        assert abs(log_z - float((a * tiny_enum.logp).logsumexp(0))) < 1e-9
    assert abs(float(tiny_enum.temperature(0.25).sum()) - 1) < 1e-9
    torch.testing.assert_close(tiny_enum.temperature(1.0), tiny_enum.logp.exp())


def test_enumeration_without_eos_covers_all_strings(tiny):
    enum = exact.enumerate_sequences(tiny, PROMPT, 3)
    assert sorted(enum.sequences) == list(itertools.product(range(4), repeat=3))


def test_enumeration_size_guard(tiny):
    import pytest

    with pytest.raises(ValueError, match="more than"):
        exact.enumerate_sequences(tiny, PROMPT, 8, max_sequences=1000)


def test_tv_distance():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.5, 0.5])
    assert exact.tv_distance(p, q) == 0.5
    assert exact.tv_distance(p, p) == 0.0
    _ = EOS
