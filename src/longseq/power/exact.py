"""Exact reference distributions by enumeration, for tiny models.

Every continuation of a prompt up to ``max_new_tokens`` tokens is enumerated: a
sequence ends at its first EOS or at the length bound. With ``log p(y | x)`` of
each, the power distribution p^alpha / Z and the distribution that token-level
temperature sampling really draws from are both exact, so samplers can be
checked by total-variation distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longseq.power.smc import _eos_list


@dataclass
class Enumeration:
    sequences: list[tuple[int, ...]]  # generated tokens only (EOS included when present)
    logp: torch.Tensor  # (K,) float64, log p(y | x); sums to log 1 over all sequences
    token_logits: list[torch.Tensor]  # per sequence, (len, V) float64 log-probs at each step

    def power(self, alpha: float) -> tuple[torch.Tensor, float]:
        """(probabilities of p^alpha / Z, log Z)."""
        s = alpha * self.logp
        log_z = float(s.logsumexp(0))
        return (s - log_z).exp(), log_z

    def temperature(self, temperature: float) -> torch.Tensor:
        """Probabilities under ancestral sampling at a token-level temperature."""
        beta = 1.0 / temperature
        out = []
        for seq, lp in zip(self.sequences, self.token_logits, strict=True):
            lq = (beta * lp).log_softmax(-1)
            out.append(sum(float(lq[i, tok]) for i, tok in enumerate(seq)))
        return torch.tensor(out, dtype=torch.float64).exp()

    def index(self) -> dict[tuple[int, ...], int]:
        return {s: i for i, s in enumerate(self.sequences)}


@torch.no_grad()
def enumerate_sequences(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    max_sequences: int = 200_000,
) -> Enumeration:
    """Enumerate all continuations of ``prompt`` (1-d) of at most ``max_new_tokens`` tokens."""
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
                if v in eos or depth + 1 == max_new_tokens:
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
    enum: Enumeration, generated: torch.Tensor, weights: torch.Tensor | None = None, eos=None
) -> torch.Tensor:
    """Distribution over ``enum.sequences`` of (weighted) generated rows ``(n, L)``.

    Rows are cut after their first EOS so padding does not matter.
    """
    eos = set(_eos_list(eos))
    idx = enum.index()
    probs = torch.zeros(len(enum.sequences), dtype=torch.float64)
    w = torch.full((generated.shape[0],), 1.0 / generated.shape[0], dtype=torch.float64)
    if weights is not None:
        w = weights.double().cpu() / weights.double().sum().cpu()
    for row, wi in zip(generated.tolist(), w.tolist(), strict=True):
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
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
