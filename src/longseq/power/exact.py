"""Exact reference distributions by enumeration, for tiny models.

Every continuation of a prompt up to ``max_new_tokens`` tokens is enumerated: a
sequence ends at its first EOS or at the length bound. With ``log p(y | x)`` of
each, the power distribution p^alpha / Z and the distribution that token-level
temperature sampling really draws from are both exact, so samplers can be
checked by total-variation distance.

Truncated samplers (top-k, top-p, min_new_tokens) are checked against the same
enumeration: :meth:`Enumeration.support` marks the sequences whose every token lies
in its step's support, computed here naively in float64 from the enumerated
log-probabilities (independently of :mod:`longseq.power.proposal`); stop strings are
a ``stop`` predicate on the generated prefix, which ends a sequence like EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from longseq.power.smc import _eos_list


@dataclass
class Enumeration:
    sequences: list[tuple[int, ...]]  # generated tokens only (EOS included when present)
    logp: torch.Tensor  # (K,) float64, log p(y | x); sums to log 1 over all sequences
    token_logits: list[torch.Tensor]  # per sequence, (len, V) float64 log-probs at each step

    def power(
        self, alpha: float, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """(probabilities of p^alpha / Z, log Z); with ``allowed`` (K,) bool, of p^alpha
        restricted to the allowed sequences."""
        s = alpha * self.logp
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        log_z = float(s.logsumexp(0))
        return (s - log_z).exp(), log_z

    def temperature(
        self,
        temperature: float,
        top_k: int | None = None,
        top_p: float | None = None,
        min_new_tokens: int = 0,
        eos_token_id=None,
    ) -> torch.Tensor:
        """Probabilities under ancestral sampling at a token-level temperature, each token
        drawn from p^(1/T) renormalized on its step's support (see :meth:`support`)."""
        beta = 1.0 / temperature
        banned = set(_eos_list(eos_token_id))
        out = []
        for seq, lp in zip(self.sequences, self.token_logits, strict=True):
            total = 0.0
            for i, tok in enumerate(seq):
                keep = _support_row(lp[i], top_k, top_p, banned if i < min_new_tokens else set())
                if tok not in keep:
                    total = float("-inf")
                    break
                norm = float(torch.stack([beta * lp[i, v] for v in keep]).logsumexp(0))
                total += float(beta * lp[i, tok]) - norm
            out.append(total)
        return torch.tensor(out, dtype=torch.float64).exp()

    def support(
        self,
        top_k: int | None = None,
        top_p: float | None = None,
        min_new_tokens: int = 0,
        eos_token_id=None,
    ) -> torch.Tensor:
        """(K,) bool: sequences whose every token lies in its step's support: EOS banned
        before ``min_new_tokens``, then the ``top_k`` most probable tokens (ties kept)
        intersected with the nucleus of the renormalized remaining distribution (the
        most probable tokens whose total first reaches ``top_p``, ties kept)."""
        banned = set(_eos_list(eos_token_id))
        ok = []
        for seq, lp in zip(self.sequences, self.token_logits, strict=True):
            ok.append(
                all(
                    tok
                    in _support_row(lp[i], top_k, top_p, banned if i < min_new_tokens else set())
                    for i, tok in enumerate(seq)
                )
            )
        return torch.tensor(ok, dtype=torch.bool)

    def index(self) -> dict[tuple[int, ...], int]:
        return {s: i for i, s in enumerate(self.sequences)}


def _support_row(logp: torch.Tensor, top_k, top_p, banned: set[int]) -> set[int]:
    """Naive float64 support of one step's log-probabilities (V,)."""
    probs = {v: float(logp[v].exp()) for v in range(logp.shape[0]) if v not in banned}
    mass = sum(probs.values())
    ranked = sorted(probs, key=lambda v: -probs[v])
    keep = set(ranked)
    if top_k is not None and top_k < len(ranked):
        kth = probs[ranked[top_k - 1]]
        keep &= {v for v in ranked if probs[v] >= kth}
    if top_p is not None and top_p < 1.0:
        total, cut = 0.0, probs[ranked[-1]]
        for v in ranked:
            total += probs[v] / mass
            if total >= top_p:
                cut = probs[v]
                break
        keep &= {v for v in ranked if probs[v] >= cut}
    return keep


@torch.no_grad()
def enumerate_sequences(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    max_sequences: int = 200_000,
    stop: Callable[[tuple[int, ...]], bool] | None = None,
) -> Enumeration:
    """Enumerate all continuations of ``prompt`` (1-d) of at most ``max_new_tokens`` tokens.

    A continuation ends at its first EOS, at the length bound, or at the first prefix
    for which ``stop(prefix)`` is true (stop strings)."""
    eos = set(_eos_list(eos_token_id))
    prompt = prompt.reshape(-1)
    device = prompt.device
    frontier = [()]  # unfinished prefixes
    frontier_lp = [torch.zeros((0, 0), dtype=torch.float64)]
    done_seq, done_lp = [], []
    for depth in range(max_new_tokens):
        ids = torch.stack(
            [
                torch.cat([prompt, torch.tensor(p, dtype=torch.long, device=device)])
                for p in frontier
            ]
        )
        logp = model(ids).logits[:, -1].double().log_softmax(-1).cpu()
        vocab = logp.shape[-1]
        if (len(done_seq) + len(frontier) * vocab) > max_sequences:
            raise ValueError(
                f"more than {max_sequences} sequences to enumerate: use a smaller vocabulary "
                "or max_new_tokens"
            )
        new_frontier, new_lp = [], []
        for p, hist, row in zip(frontier, frontier_lp, logp, strict=True):
            steps = torch.cat([hist, row[None]]) if hist.numel() else row[None]
            for v in range(vocab):
                seq = (*p, v)
                if v in eos or depth + 1 == max_new_tokens or (stop is not None and stop(seq)):
                    done_seq.append(seq)
                    done_lp.append(steps)
                else:
                    new_frontier.append(seq)
                    new_lp.append(steps)
        frontier, frontier_lp = new_frontier, new_lp
        if not frontier:
            break
    seq_lp = torch.tensor(
        [
            sum(float(lp[i, t]) for i, t in enumerate(s))
            for s, lp in zip(done_seq, done_lp, strict=True)
        ],
        dtype=torch.float64,
    )
    return Enumeration(done_seq, seq_lp, done_lp)


def empirical(
    enum: Enumeration,
    generated: torch.Tensor,
    weights: torch.Tensor | None = None,
    eos=None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distribution over ``enum.sequences`` of (weighted) generated rows ``(n, L)``.

    Rows are cut after their first EOS (or at ``lengths``, when given: stop strings
    end a row without EOS) so padding does not matter.
    """
    eos = set(_eos_list(eos))
    idx = enum.index()
    probs = torch.zeros(len(enum.sequences), dtype=torch.float64)
    w = torch.full((generated.shape[0],), 1.0 / generated.shape[0], dtype=torch.float64)
    if weights is not None:
        w = weights.double().cpu() / weights.double().sum().cpu()
    cuts = None if lengths is None else lengths.reshape(-1).tolist()
    for k, (row, wi) in enumerate(zip(generated.tolist(), w.tolist(), strict=True)):
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        if cuts is not None:
            cut = int(cuts[k])
        probs[idx[tuple(row[:cut])]] += wi
    return probs


def toy_model(seed: int = 4, scale: float = 6.0, vocab: int = 4):
    """A random 2-layer GPT over a ``vocab``-token vocabulary whose embeddings are scaled
    by ``scale``, so that token-level temperature and the sequence-level power
    distribution differ a lot: the test bed for exactness checks."""
    from longseq.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        m.wte.weight.mul_(scale)
    return m


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance of two distributions on the same support."""
    return 0.5 * float((p.double() - q.double()).abs().sum())
