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
off), so measured speed differences come from the methods, not the plumbing, and
take the same proposal and stopping controls (``min_new_tokens``, ``top_k``,
``top_p``, ``stop_strings``, ``max_time``; see :func:`longseq.power.power_smc`).
Truncated temperature sampling draws each token from p^(1/T) on the support;
best-of-N ranks by the model's untruncated log p; MH targets p^alpha restricted to
the support, like Power-SMC.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from longseq import lm
from longseq.power.smc import (
    _check_alpha,
    _eos_list,
    _validate,
    make_controls,
    prepare,
    prompt_seeds,
    run_particles,
)
from longseq.utils import progress_bar


@dataclass
class SampleOutput:
    """``sequences``: prompt + generation, padded after EOS; ``(n, len)`` for one prompt,
    ``(B, n, len)`` for B prompts (left-padded to ``prompt_len`` columns). ``seq_logprobs``:
    log p(y | x) of each; ``lengths``: generated tokens of each (EOS or stop token
    included). Per-prompt fields have a leading B for a batch."""

    sequences: torch.Tensor
    seq_logprobs: torch.Tensor
    elapsed_s: float = 0.0
    lengths: torch.Tensor | None = None
    stopped_by_time: bool | torch.Tensor = False
    new_tokens_bound: int | torch.Tensor = 0  # max_new_tokens after fitting the context
    prompt_len: int = 0  # columns of ``sequences`` that hold the (left-padded) prompt
    steps: int | torch.Tensor = 0  # decoding steps (tokens decoded per sample)


def _decode(
    model,
    input_ids,
    attention_mask,
    n,
    temperature,
    max_new_tokens,
    eos_token_id,
    seed,
    pad_token_id,
    ctl,
):
    _validate(n, max_new_tokens, 0.0, 1, 1)
    beta = 1.0 / _check_alpha(temperature, "temperature")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    batch, streams, bounds = prepare(
        model, input_ids, attention_mask, pad, seed, max_new_tokens, stacklevel=5
    )
    const = lambda t: beta  # noqa: E731
    r = run_particles(
        model,
        batch,
        n,
        bounds,
        eos,
        pad,
        const,
        const,
        beta,
        0.0,
        max(bounds),
        streams,
        controls=ctl,
    )
    b = len(batch.lengths)
    seqs = torch.cat([batch.ids[:, None].expand(b, n, -1), r.tokens], dim=-1)
    return seqs, r, batch, bounds


def _output(seqs, logp, t0, lengths, r, batch, bounds) -> SampleOutput:
    out = SampleOutput(
        seqs,
        logp,
        time.perf_counter() - t0,
        lengths,
        r.stopped_by_time,
        torch.tensor(bounds),
        batch.width,
        r.steps,
    )
    if batch.single:
        out.sequences, out.seq_logprobs, out.lengths = seqs[0], logp[0], lengths[0]
        out.stopped_by_time, out.new_tokens_bound = bool(r.stopped_by_time[0]), bounds[0]
        out.steps = int(r.steps[0])
    return out


def sample(
    model,
    input_ids,
    n: int = 16,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    seed: int | Sequence[int] = 0,
    pad_token_id: int | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    min_new_tokens: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    max_time: float | None = None,
) -> SampleOutput:
    """``n`` independent samples per prompt from softmax(logits / temperature), on the
    top-k / top-p support when given (computed at temperature 1).

    Prompts, ``attention_mask`` and ``seed`` (prompt i of a batch uses ``seed + i``)
    as in :func:`longseq.power.power_smc`."""
    t0 = time.perf_counter()
    ctl = make_controls(top_k, top_p, min_new_tokens, stop_strings, tokenizer, max_time)
    seqs, r, batch, bounds = _decode(
        model,
        input_ids,
        attention_mask,
        n,
        temperature,
        max_new_tokens,
        eos_token_id,
        seed,
        pad_token_id,
        ctl,
    )
    return _output(seqs, r.seq_logp, t0, r.lengths, r, batch, bounds)


def best_of_n(
    model,
    input_ids,
    n: int = 16,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    seed: int | Sequence[int] = 0,
    pad_token_id: int | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    min_new_tokens: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    max_time: float | None = None,
) -> SampleOutput:
    """``n`` samples at temperature 1 per prompt; returns the one with the highest
    sequence log-likelihood (``sequences`` is ``(len,)``, or ``(B, len)``)."""
    t0 = time.perf_counter()
    ctl = make_controls(top_k, top_p, min_new_tokens, stop_strings, tokenizer, max_time)
    seqs, r, batch, bounds = _decode(
        model,
        input_ids,
        attention_mask,
        n,
        1.0,
        max_new_tokens,
        eos_token_id,
        seed,
        pad_token_id,
        ctl,
    )
    best = r.seq_logp.argmax(-1)
    idx = torch.arange(seqs.shape[0], device=seqs.device)
    return _output(
        seqs[idx, best], r.seq_logp[idx, best], t0, r.lengths[idx, best], r, batch, bounds
    )


@dataclass
class _Chain:
    """The state of one MH chain (one prompt)."""

    prompt: torch.Tensor
    stream: torch.Generator  # token proposals
    rng: np.random.Generator  # positions and acceptances
    bound: int  # max_new_tokens, fitted to the model's context
    block: int  # tokens per block
    toks: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)  # log p of each token
    lqs: list[float] = field(default_factory=list)  # log q (proposal) of each token
    target: int = 0  # length of the generation after the current block
    accepted: int = 0
    proposals: int = 0
    decoded: int = 0
    done: bool = False
    out_of_time: bool = False
    elapsed: float = 0.0


@dataclass
class MHOutput:
    sequence: torch.Tensor  # prompt + generation
    seq_logprob: float
    acceptance_rate: float
    n_proposals: int
    elapsed_s: float = 0.0
    tokens_decoded: int = 0  # every token proposed, over all blocks and MH steps
    stopped_by_time: bool = False


def mh_power_sample(
    model,
    input_ids,
    alpha: float = 4.0,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    n_blocks: int = 16,
    mh_steps: int = 10,
    seed: int | Sequence[int] = 0,
    pad_token_id: int | None = None,
    progress: bool = False,
    *,
    attention_mask: torch.Tensor | None = None,
    min_new_tokens: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    max_time: float | None = None,
) -> MHOutput | list[MHOutput]:
    """One Metropolis-Hastings chain per prompt targeting p(y | x)^alpha.

    The generation is built in ``n_blocks`` blocks of ``ceil(max_new_tokens / n_blocks)``
    tokens; after each block, ``mh_steps`` MH moves resample a suffix that starts at
    a uniformly chosen position of the current generation. Prompts, ``attention_mask``
    and ``seed`` (prompt i uses ``seed + i``) as in :func:`longseq.power.power_smc`.
    The chains of a batch advance together: each block's extensions, and each MH step's
    proposals of every chain, decode as one batch; each chain keeps its own random
    streams, so its result is the one it gets alone. A batch of B prompts returns a list
    of B results. ``max_time`` is checked between MH steps (each chain keeps its state
    at that point).
    """
    alpha = _check_alpha(alpha)
    _validate(1, max_new_tokens, 0.0, 1, 1)
    for name, v in (("n_blocks", n_blocks), ("mh_steps", mh_steps)):
        if not isinstance(v, int) or v < (1 if name == "n_blocks" else 0):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    ctl = make_controls(top_k, top_p, min_new_tokens, stop_strings, tokenizer, max_time)
    deadline, ctl = ctl.deadline, dataclasses.replace(ctl, deadline=None)
    batch, streams, bounds = prepare(model, input_ids, attention_mask, pad, seed, max_new_tokens)
    t0 = time.perf_counter()
    chains = [
        _Chain(
            prompt=batch.prompt(j),
            stream=streams.generators[j],
            rng=np.random.default_rng(s),
            bound=bound,
            block=math.ceil(bound / n_blocks),
        )
        for j, (s, bound) in enumerate(zip(prompt_seeds(seed, len(bounds)), bounds, strict=True))
    ]
    const = lambda t: alpha  # noqa: E731

    def extend(group: list[_Chain], prefixes: list[list[int]], n_new: list[int]):
        """Propose n_new[k] tokens after prompt + prefixes[k] for every chain of ``group``,
        as one batch: a list of (tokens, log p, log q) lists."""
        rows = [
            torch.cat([c.prompt, torch.tensor(p, dtype=torch.long, device=c.prompt.device)])
            for c, p in zip(group, prefixes, strict=True)
        ]
        x = lm.prompt_batch(rows, pad_token_id=pad, device=rows[0].device)
        c = dataclasses.replace(
            ctl, min_new_tokens=[max(0, ctl.min_new_tokens - len(p)) for p in prefixes]
        )
        r = run_particles(
            model, x, 1, n_new, eos, pad, const, const, alpha, 0.0, max(n_new),
            lm.Streams([ch.stream for ch in group]), controls=c,
        )  # fmt: skip
        out = []
        for k, (chain, prefix) in enumerate(zip(group, prefixes, strict=True)):
            cut = int(r.lengths[k, 0])
            chain.decoded += cut
            toks = r.tokens[k, 0, :cut].tolist()
            lp, lq = r.token_logp[k, 0, :cut].tolist(), r.token_logq[k, 0, :cut].tolist()
            if ctl.stop is not None:  # a stop string may span the prefix and the new tokens
                end = ctl.stop.first_end(prefix + toks, len(prefix))
                if end is not None:
                    e = end - len(prefix)
                    toks, lp, lq = toks[:e], lp[:e], lq[:e]
            out.append((toks, lp, lq))
        return out

    def ended(toks: list[int]) -> bool:
        if toks and toks[-1] in eos:
            return True
        return ctl.stop is not None and ctl.stop.first_end(toks, max(0, len(toks) - 1)) is not None

    def late() -> bool:
        return deadline is not None and time.perf_counter() >= deadline

    with progress_bar("MH blocks", n_blocks, enabled=progress) as advance:
        for k in range(n_blocks):
            active = []
            for c in chains:
                if c.done:
                    continue
                if ended(c.toks) or late():
                    c.done, c.elapsed = True, time.perf_counter() - t0
                    c.out_of_time = c.out_of_time or not ended(c.toks)
                    continue
                c.target = min((k + 1) * c.block, c.bound)
                active.append(c)
            if not active:
                break
            grow = [c for c in active if len(c.toks) < c.target]
            if grow:
                new = extend(grow, [c.toks for c in grow], [c.target - len(c.toks) for c in grow])
                for c, (t, p, q) in zip(grow, new, strict=True):
                    c.toks, c.lps, c.lqs = c.toks + t, c.lps + p, c.lqs + q
            moving = active
            for _ in range(mh_steps):
                if late():  # every chain keeps its state at this point
                    for c in moving:
                        c.out_of_time = True
                    break
                pos = [int(c.rng.integers(len(c.toks))) for c in moving]
                new = extend(moving, [c.toks[:i] for c, i in zip(moving, pos, strict=True)],
                             [c.target - i for c, i in zip(moving, pos, strict=True)])  # fmt: skip
                for c, i, (t, p, q) in zip(moving, pos, new, strict=True):
                    log_acc = alpha * (sum(p) - sum(c.lps[i:])) + (sum(c.lqs[i:]) - sum(q))
                    # the position is uniform over the current length, which EOS can change
                    log_acc += math.log(len(c.toks)) - math.log(i + len(t))
                    c.proposals += 1
                    if math.log(max(c.rng.random(), 1e-300)) < log_acc:
                        c.toks, c.lps, c.lqs = c.toks[:i] + t, c.lps[:i] + p, c.lqs[:i] + q
                        c.accepted += 1
            advance()
    results = []
    for c in chains:
        if not c.done:
            c.elapsed = time.perf_counter() - t0
        seq = torch.cat([c.prompt, torch.tensor(c.toks, dtype=torch.long, device=c.prompt.device)])
        results.append(
            MHOutput(
                sequence=seq,
                seq_logprob=float(sum(c.lps)),
                acceptance_rate=c.accepted / max(c.proposals, 1),
                n_proposals=c.proposals,
                elapsed_s=c.elapsed,
                tokens_decoded=c.decoded,
                stopped_by_time=c.out_of_time,
            )
        )
    return results[0] if batch.single else results
