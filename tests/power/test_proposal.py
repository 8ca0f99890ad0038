"""The shared decoding step against a naive float64 reference."""

import pytest
import torch

from longseq.power import proposal


def naive(x: torch.Tensor, beta, top_k=None, top_p=None, banned=()):
    """(q, L, log p) for one row of logits, from sorted Python lists."""
    logp = torch.log_softmax(x.double(), -1)
    v = x.shape[0]
    allowed = [i for i in range(v) if i not in banned]
    mass = sum(float(logp[i].exp()) for i in allowed)
    ranked = sorted(allowed, key=lambda i: -float(logp[i]))
    keep = set(ranked)
    if top_k is not None:
        keep &= set(ranked[:top_k])
    if top_p is not None:
        total, nucleus = 0.0, set()
        for i in ranked:
            nucleus.add(i)
            total += float(logp[i].exp()) / mass
            if total >= top_p:
                break
        keep &= nucleus
    mask = torch.tensor([i in keep for i in range(v)])
    scores = torch.where(mask, beta * logp, float("-inf"))
    return scores.softmax(-1), float(scores.logsumexp(-1)), logp


CASES = [
    dict(beta=1.0),
    dict(beta=4.0),
    dict(beta=0.5),
    dict(beta=2.0, top_k=5),
    dict(beta=2.0, top_p=0.6),
    dict(beta=3.0, top_k=9, top_p=0.8, banned=(0, 3)),
    dict(beta=1.0, top_p=0.95, banned=(1,)),
]


@pytest.mark.parametrize("case", CASES)
def test_draws_and_normalizer_match_naive_reference(monkeypatch, case):
    """Many rows of the same logits: the token frequencies are q, L and log p are exact.
    A block size of 8 over 37 tokens exercises the two-level draw and a ragged tail."""
    monkeypatch.setattr(proposal, "CHUNK", 8)
    torch.manual_seed(0)
    x = torch.randn(37) * 2
    q, ref_l, ref_logp = naive(x, **case)
    banned = case.get("banned")
    b = torch.tensor(banned) if banned else None
    rows = x.expand(50_000, -1).contiguous()
    g = torch.Generator().manual_seed(1)
    tok, logp, log_norm = proposal.propose(
        rows, case["beta"], g, case.get("top_k"), case.get("top_p"), b
    )
    emp = torch.bincount(tok, minlength=37).double() / len(tok)
    assert float(emp[q == 0].sum()) == 0.0  # never outside the support
    assert 0.5 * float((emp - q).abs().sum()) < 0.015
    torch.testing.assert_close(log_norm, torch.full_like(log_norm, ref_l), atol=1e-5, rtol=0)
    torch.testing.assert_close(logp.double(), ref_logp[tok], atol=1e-5, rtol=0)


def test_bf16_logits_are_read_in_float32():
    torch.manual_seed(0)
    x = (torch.randn(4, 1000) * 3).bfloat16()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = proposal.propose(x, 2.0, g1, top_p=0.9)
    b = proposal.propose(x.float(), 2.0, g2, top_p=0.9)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(a[2], b[2])


def test_ties_at_the_top_k_boundary_are_kept():
    x = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    toks = {int(proposal.propose(x, 1.0, g, top_k=2)[0]) for _ in range(400)}
    assert toks == {0, 1, 2}


def test_non_finite_logits_give_non_finite_weights():
    x = torch.tensor([[0.0, float("nan"), 1.0]])
    _, logp, log_norm = proposal.propose(x, 2.0, torch.Generator().manual_seed(0))
    assert not torch.isfinite(log_norm).all()
