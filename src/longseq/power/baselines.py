"""Baselines for power sampling on the same model interface as :func:`power_smc`.

* :func:`sample` -- plain ancestral sampling at a token-level temperature
  (1, or 1/alpha: the biased "low temperature" approximation of p^alpha);
* :func:`best_of_n` -- N samples at temperature 1, keep the most likely sequence;
* :func:`mh_power_sample` -- Metropolis-Hastings power sampling (Karan & Du 2025,
  "Reasoning with Sampling"): the generation grows in blocks; after each block,
  K MH steps each pick a random position, regenerate the suffix from there with
  the temperature-1/alpha proposal and accept with probability
  min(1, exp(alpha * [log p(new) - log p(old)] + [log q(old) - log q(new)])).

All three decode through the same particle core as Power-SMC (with resampling
off), so measured speed differences come from the methods, not the plumbing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from longseq import lm
from longseq.power.smc import (
    _check_alpha,
    _eos_list,
    _validate,
    prepare_prompts,
    run_particles,
)
from longseq.utils import progress_bar


@dataclass
class SampleOutput:
    """``sequences``: prompt + generation, padded after EOS; ``(n, len)`` for one prompt,
    ``(B, n, len)`` for B prompts. ``seq_logprobs``: log p(y | x) of each."""

    sequences: torch.Tensor
    seq_logprobs: torch.Tensor
    elapsed_s: float = 0.0


def _decode(model, input_ids, n, temperature, max_new_tokens, eos_token_id, seed, pad_token_id):
    _validate(input_ids, n, max_new_tokens, 0.0, 1, 1)
    beta = 1.0 / _check_alpha(temperature, "temperature")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    prompts, single = prepare_prompts(model, input_ids)
    gen = lm.make_generator(prompts.device, seed)
    const = lambda t: beta  # noqa: E731
    r = run_particles(
        model,
        prompts,
        n,
        max_new_tokens,
        eos,
        pad,
        const,
        const,
        beta,
        0.0,
        max_new_tokens,
        gen,
    )
    b = prompts.shape[0]
    seqs = torch.cat([prompts[:, None].expand(b, n, -1), r.tokens], dim=-1)
    return seqs, r, single, gen


def sample(
    model,
    input_ids: torch.Tensor,
    n: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> SampleOutput:
    """``n`` independent samples per prompt from softmax(logits / temperature)."""
    t0 = time.perf_counter()
    seqs, r, single, _ = _decode(
        model, input_ids, n, temperature, max_new_tokens, eos_token_id, seed, pad_token_id
    )
    out = SampleOutput(seqs, r.seq_logp, time.perf_counter() - t0)
    if single:
        out.sequences, out.seq_logprobs = seqs[0], r.seq_logp[0]
    return out


def best_of_n(
    model,
    input_ids: torch.Tensor,
    n: int = 16,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> SampleOutput:
    """``n`` samples at temperature 1 per prompt; returns the one with the highest
    sequence log-likelihood (``sequences`` is ``(len,)``, or ``(B, len)``)."""
    t0 = time.perf_counter()
    seqs, r, single, _ = _decode(
        model, input_ids, n, 1.0, max_new_tokens, eos_token_id, seed, pad_token_id
    )
    best = r.seq_logp.argmax(-1)
    idx = torch.arange(seqs.shape[0], device=seqs.device)
    out = SampleOutput(seqs[idx, best], r.seq_logp[idx, best], time.perf_counter() - t0)
    if single:
        out.sequences, out.seq_logprobs = out.sequences[0], out.seq_logprobs[0]
    return out


@dataclass
class MHOutput:
    sequence: torch.Tensor  # prompt + generation
    seq_logprob: float
    acceptance_rate: float
    n_proposals: int
    elapsed_s: float = 0.0


def mh_power_sample(
    model,
    input_ids: torch.Tensor,
    alpha: float = 4.0,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    n_blocks: int = 16,
    mh_steps: int = 10,
    seed: int = 0,
    pad_token_id: int | None = None,
    progress: bool = False,
) -> MHOutput | list[MHOutput]:
    """One Metropolis-Hastings chain per prompt targeting p(y | x)^alpha.

    The generation is built in ``n_blocks`` blocks of ``ceil(max_new_tokens / n_blocks)``
    tokens; after each block, ``mh_steps`` MH moves resample a suffix that starts at
    a uniformly chosen position of the current generation. Chains run one after the
    other; a batch of B prompts returns a list of B results.
    """
    alpha = _check_alpha(alpha)
    _validate(input_ids, 1, max_new_tokens, 0.0, 1, 1)
    for name, v in (("n_blocks", n_blocks), ("mh_steps", mh_steps)):
        if not isinstance(v, int) or v < (1 if name == "n_blocks" else 0):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    prompts, single = prepare_prompts(model, input_ids)
    gen = lm.make_generator(prompts.device, seed)
    rng = np.random.default_rng(seed)
    block = math.ceil(max_new_tokens / n_blocks)
    const = lambda t: alpha  # noqa: E731

    def extend(prefix_tokens: list[int], n_new: int):
        """Propose n_new tokens after prompt + prefix: (tokens, log p, log q) lists."""
        ids = torch.tensor(prefix_tokens, dtype=torch.long, device=prompts.device)
        x = torch.cat([prompt, ids])[None]
        r = run_particles(model, x, 1, n_new, eos, pad, const, const, alpha, 0.0, n_new, gen)
        toks = r.tokens[0, 0].tolist()
        lp, lq = r.token_logp[0, 0].tolist(), r.token_logq[0, 0].tolist()
        for i, tk in enumerate(toks):  # cut after EOS
            if tk in eos:
                return toks[: i + 1], lp[: i + 1], lq[: i + 1]
        return toks, lp, lq

    results = []
    for prompt in prompts:
        t0 = time.perf_counter()
        toks: list[int] = []
        lps: list[float] = []
        lqs: list[float] = []
        accepted = proposals = 0
        with progress_bar("MH blocks", n_blocks, enabled=progress) as advance:
            for k in range(n_blocks):
                target_len = min((k + 1) * block, max_new_tokens)
                if toks and toks[-1] in eos:
                    break
                t, p, q = extend(toks, target_len - len(toks))
                toks, lps, lqs = toks + t, lps + p, lqs + q
                for _ in range(mh_steps):
                    i = int(rng.integers(len(toks)))
                    t, p, q = extend(toks[:i], target_len - i)
                    log_acc = alpha * (sum(p) - sum(lps[i:])) + (sum(lqs[i:]) - sum(q))
                    # the position is uniform over the current length, which EOS can change
                    log_acc += math.log(len(toks)) - math.log(i + len(t))
                    proposals += 1
                    if math.log(max(rng.random(), 1e-300)) < log_acc:
                        toks, lps, lqs = toks[:i] + t, lps[:i] + p, lqs[:i] + q
                        accepted += 1
                advance()
        seq = torch.cat([prompt, torch.tensor(toks, dtype=torch.long, device=prompt.device)])
        results.append(
            MHOutput(
                sequence=seq,
                seq_logprob=float(sum(lps)),
                acceptance_rate=accepted / max(proposals, 1),
                n_proposals=proposals,
                elapsed_s=time.perf_counter() - t0,
            )
        )
    return results[0] if single else results
