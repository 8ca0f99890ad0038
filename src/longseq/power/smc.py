"""Power-SMC: sample the sequence-level power distribution p(y | x)^alpha.

N particles decode as one batch from the locally optimal proposal for the prefix
target p^alpha_t, i.e. token-level temperature 1/alpha_t. With target exponent
``a`` and proposal exponent ``b`` the incremental log-weight of a token is

    a * log p(y_t) - log q(y_t) = (a - b) * log p(y_t) + logsumexp_v(b * log p(v)),

which for a == b is the Renyi term logsumexp_v(a log p(v)), the same for every
token the particle could have drawn. When the exponent ramps up
(alpha_t > alpha_{t-1}) the prefix is reweighted by p(y_<t)^(alpha_t - alpha_{t-1}).
Every ``block_size`` tokens, groups whose effective sample size falls below
``kappa * N`` are resampled (systematic resampling). EOS is absorbing: a finished
particle proposes padding, and only the exponent ramp still changes its weight.

Resampling is copy-on-write: a particle that survives keeps its cache row; only
the rows of particles that died are overwritten, in place, by copies of
duplicated survivors. Particles are exchangeable, so which slot holds which copy
does not change the result.

Proposal and stopping controls (:class:`Controls`) restrict the support of every
token (top-k, top-p, EOS before ``min_new_tokens``): the proposal is p^b on the
support and the token weight uses the Renyi term over the support, so the target is
p^alpha restricted to sequences that stay in it, exactly. Stop strings end a
particle like EOS; ``max_time`` truncates every live particle at the deadline.

A batch of prompts (of any lengths, left-padded) decodes as one batch of rows, each
prompt its own SMC run with its own random stream; a prompt that has finished leaves
the batch, so its result is the one it gets alone with the same seed.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from longseq import lm
from longseq.power.proposal import propose
from longseq.power.stopping import StopStrings
from longseq.utils import progress_bar


@dataclass
class PowerSMCOutput:
    """Result of :func:`power_smc`.

    For a single prompt (1-d ``input_ids`` or a batch of one) the leading prompt
    dimension is dropped: ``sequences`` is ``(n_particles * n_rounds, prompt_len +
    new_len)``. For a batch of B prompts every per-prompt field has a leading B
    (``stopped_by_time``, ``new_tokens_bound`` and ``steps`` too), and the prompts
    are left-padded to ``prompt_len`` columns.
    """

    sequences: torch.Tensor  # prompt + generation, padded after EOS
    log_weights: torch.Tensor  # normalized log-weights of the final particles
    log_z: float | torch.Tensor  # log normalizing-constant estimate, log sum_y p(y|x)^alpha
    sample: torch.Tensor  # one sequence drawn from the final weights
    seq_logprobs: torch.Tensor  # log p(y | x) of each particle's generation
    lengths: torch.Tensor | None = None  # generated tokens per particle (EOS/stop included)
    n_resamples: int = 0  # resampling events (summed over prompts and rounds)
    rows_copied: int = 0  # cache rows rewritten by resampling (all rows when cache_reorder="copy")
    ess_history: list[float] = field(default_factory=list)  # mean ESS/N at each check
    elapsed_s: float = 0.0
    stopped_by_time: bool | torch.Tensor = False  # max_time ran out: live particles cut there
    sample_index: int | torch.Tensor = 0  # which particle ``sample`` is
    new_tokens_bound: int | torch.Tensor = 0  # max_new_tokens after fitting the model's context
    prompt_len: int = 0  # columns of ``sequences`` that hold the (left-padded) prompt
    steps: int | torch.Tensor = 0  # decoding steps (tokens decoded per particle, all rounds)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()


@dataclass
class _Round:
    tokens: torch.Tensor  # (B, N, L) generated tokens
    log_w: torch.Tensor  # (B, N) unnormalized final log-weights
    log_z: torch.Tensor  # (B,)
    seq_logp: torch.Tensor  # (B, N)
    token_logp: torch.Tensor  # (B, N, L) log p of each generated token (0 on padding)
    token_logq: torch.Tensor  # (B, N, L) log q of each generated token (0 on padding)
    lengths: torch.Tensor  # (B, N) generated tokens, EOS or stop token included
    n_resamples: int
    rows_copied: int
    ess_history: list[float]
    stopped_by_time: torch.Tensor  # (B,) bool: the deadline cut the prompt's decoding
    steps: torch.Tensor  # (B,) decoding steps each prompt ran


@dataclass
class Controls:
    """Proposal and stopping controls shared by every sampler (see :func:`power_smc`)."""

    top_k: int | None = None
    top_p: float | None = None
    min_new_tokens: int | list[int] = 0  # one for all prompts, or one per prompt
    stop: StopStrings | None = None
    deadline: float | None = None  # time.perf_counter() value after which decoding stops


def make_controls(
    top_k=None, top_p=None, min_new_tokens=0, stop_strings=None, tokenizer=None, max_time=None
) -> Controls:
    """Check the public control arguments and bundle them; the clock starts now."""
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1
    ):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int | np.integer):
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
    if max_time is not None and (
        isinstance(max_time, bool)
        or not isinstance(max_time, int | float)
        or not (max_time > 0 and math.isfinite(max_time))
    ):
        raise ValueError(f"max_time must be a number of seconds > 0 or None, got {max_time!r}")
    stop = StopStrings(stop_strings, tokenizer) if stop_strings else None
    deadline = time.perf_counter() + max_time if max_time is not None else None
    return Controls(top_k, top_p, int(min_new_tokens), stop, deadline)


def fit_context(model, prompt_len: int, max_new_tokens: int, stacklevel: int = 3) -> int:
    """``max_new_tokens``, lowered (with a warning) so that prompt + generation fits
    the model's context; a ValueError when the prompt alone fills it."""
    ctx = lm.context_length(model)
    if ctx is None or prompt_len + max_new_tokens <= ctx:
        return max_new_tokens
    if prompt_len >= ctx:
        raise ValueError(
            f"the prompt has {prompt_len} tokens and the model's context (block size) is "
            f"{ctx}: no room for max_new_tokens={max_new_tokens} new tokens"
        )
    room = ctx - prompt_len
    warnings.warn(
        f"max_new_tokens={max_new_tokens} does not fit the model's context: the prompt "
        f"has {prompt_len} tokens and the block size is {ctx}, so at most {room} new "
        "tokens are generated",
        ContextClampWarning,
        stacklevel=stacklevel,
    )
    return room


class ContextClampWarning(UserWarning):
    """max_new_tokens was lowered to fit the model's context."""


def alpha_schedule(alpha: float, ramp_tokens: int) -> Callable[[int], float]:
    """alpha_t = 1 + (alpha - 1) * min((t + 1) / ramp_tokens, 1); constant when ramp_tokens = 0."""
    if ramp_tokens <= 0:
        return lambda t: alpha
    return lambda t: 1.0 + (alpha - 1.0) * min((t + 1) / ramp_tokens, 1.0)


def systematic_resample(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Ancestor indices (B, N) by systematic resampling of each row of ``log_w``:
    one uniform per row, N evenly spaced points through the cumulative weights."""
    b = log_w.shape[0]
    u = torch.rand((b, 1), generator=generator, device=log_w.device, dtype=torch.float64)
    return _systematic(log_w, u)


def _systematic(log_w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    b, n = log_w.shape
    w = torch.softmax(log_w.double(), dim=-1)
    cdf = w.cumsum(-1)
    cdf[:, -1] = 1.0
    points = (u + torch.arange(n, device=log_w.device, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, points).clamp_max(n - 1)


def cow_assignment(ancestors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn ancestor indices (B, N) into in-place row copies (dst, src), flat indices.

    Each surviving particle keeps its slot; the extra copies of duplicated
    particles go into the slots of particles that left no offspring. So no ``src``
    row is ever a ``dst`` row, and untouched rows are not copied at all.
    """
    b, n = ancestors.shape
    dst, src = [], []
    for g in range(b):
        counts = np.bincount(ancestors[g], minlength=n)
        dead = np.flatnonzero(counts == 0)
        extra = np.repeat(np.arange(n), np.maximum(counts - 1, 0))
        dst.append(dead + g * n)
        src.append(extra + g * n)
    return np.concatenate(dst), np.concatenate(src)


def _validate(n_particles, max_new_tokens, kappa, block_size, n_rounds):
    for name, val, lo in (
        ("n_particles", n_particles, 1),
        ("max_new_tokens", max_new_tokens, 1),
        ("block_size", block_size, 1),
        ("n_rounds", n_rounds, 1),
    ):
        if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
    if not (0.0 <= kappa <= 1.0):
        raise ValueError(f"kappa must be in [0, 1], got {kappa!r}")


def prompt_seeds(seed, n_prompts: int) -> list[int]:
    """One seed per prompt: ``seed`` + i for prompt i, or the list given."""
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return [int(seed) + i for i in range(n_prompts)]
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
        if len(seeds) == n_prompts and all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) for s in seeds
        ):
            return [int(s) for s in seeds]
    raise ValueError(
        f"seed must be an integer or a list of {n_prompts} integers (one per prompt), got {seed!r}"
    )


def prepare(model, input_ids, attention_mask, pad: int, seed, max_new_tokens: int, stacklevel=4):
    """Prompts as a left-padded batch on the model's device, one random stream per
    prompt, and each prompt's length bound (fitted to the model's context)."""
    batch = lm.prompt_batch(input_ids, attention_mask, pad, lm.model_device(model))
    streams = lm.Streams.seeded(batch.ids.device, prompt_seeds(seed, len(batch.lengths)))
    bounds = fit_contexts(model, batch.lengths, max_new_tokens, stacklevel + 1)
    return batch, streams, bounds


def fit_contexts(model, lengths: list[int], max_new_tokens: int, stacklevel: int) -> list[int]:
    """:func:`fit_context` for each prompt; one warning, for the longest prompt."""
    longest = max(lengths)
    fit_context(model, longest, max_new_tokens, stacklevel + 1)
    ctx = lm.context_length(model)
    if ctx is None:
        return [max_new_tokens] * len(lengths)
    return [min(max_new_tokens, ctx - n) for n in lengths]


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"{name} must be a finite number > 0, got {alpha!r}")
    if alpha <= 0:
        raise ValueError(f"{name} must be > 0, got {alpha!r}")
    return float(alpha)


def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int | np.integer):
        return [int(eos_token_id)]
    if isinstance(eos_token_id, Sequence) and all(isinstance(e, int) for e in eos_token_id):
        return list(eos_token_id)
    raise ValueError(f"eos_token_id must be an int, a list of ints or None, got {eos_token_id!r}")


@torch.no_grad()
def run_particles(
    model,
    batch: lm.PromptBatch,
    n: int,
    max_new_tokens: int | Sequence[int],
    eos: list[int],
    pad_token_id: int,
    target_exponent: Callable[[int], float],
    proposal_exponent: Callable[[int], float],
    final_exponent: float,
    kappa: float,
    block_size: int,
    streams: lm.Streams,
    cache_reorder: str = "inplace",
    progress: bool = False,
    controls: Controls | None = None,
) -> _Round:
    """Decode ``n`` particles per prompt as one batch of B*n rows (the SMC core).

    Token t is drawn from q ∝ p^proposal_exponent(t) on the support the controls leave;
    weights target p^target_exponent(t) restricted to that support, and at the end
    p^final_exponent. With kappa = 0 nothing is resampled, which is plain (tempered)
    sampling with importance weights.

    Every prompt is its own SMC run: its particles, its ESS checks and resampling, its
    random stream (``streams``, one per prompt) and its end. A prompt stops decoding once
    all its rows have ended (EOS or a stop string), at its length bound
    (``max_new_tokens``: one for all, or one per prompt) or at the controls' deadline;
    from then on it draws nothing, and its weights no longer change, so its result does
    not depend on the prompts decoded beside it. Prompts of different lengths are
    left-padded (attention mask and position ids) when the model takes them
    (:func:`longseq.lm.takes_padding`), else decoded in groups of equal length.
    """
    b = len(batch.lengths)
    bounds = [max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if batch.padded and not lm.takes_padding(model):
        return _by_length(
            model, batch, n, bounds, eos, pad_token_id, target_exponent, proposal_exponent,
            final_exponent, kappa, block_size, streams, cache_reorder, progress, controls,
        )  # fmt: skip
    ctl = controls or Controls()
    prompts = batch.ids
    device = prompts.device
    m = b * n
    longest = max(bounds)
    padded = batch.padded
    if padded:
        mask = batch.mask()
        logits, cache = lm.forward(
            model, prompts, float32=False, attention_mask=mask, position_ids=batch.positions()
        )
        row_mask = torch.ones((m, batch.width + longest), dtype=torch.long, device=device)
        row_mask[:, : batch.width] = mask.repeat_interleave(n, dim=0)
        row_pos = torch.tensor(batch.lengths, device=device).repeat_interleave(n)[:, None]
    else:
        logits, cache = lm.forward(model, prompts, float32=False)  # prompt prefilled once
    lm.check_finite(logits, "for the prompt")
    logits = logits.repeat_interleave(n, dim=0)
    cache = lm.repeat_cache(cache, n)
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)
    # the working rows: those of the prompts still decoding (b of them, m = b * n rows)
    tokens = torch.full((m, longest), pad_token_id, dtype=torch.long, device=device)
    token_logp = torch.zeros((m, longest), device=device)
    token_logq = torch.zeros((m, longest), device=device)
    seq_logp = torch.zeros(m, device=device)
    lengths = torch.zeros(m, dtype=torch.long, device=device)
    finished = torch.zeros(m, dtype=torch.bool, device=device)
    log_w = torch.zeros(m, device=device)
    log_z = torch.zeros(b, device=device, dtype=torch.float64)
    alive = list(range(b))  # original index of each working prompt
    # results, filled in as prompts stop
    out = _Round(
        tokens=torch.full_like(tokens, pad_token_id),
        log_w=torch.zeros(m, device=device),
        log_z=torch.zeros(b, device=device, dtype=torch.float64),
        seq_logp=torch.zeros_like(seq_logp),
        token_logp=torch.zeros_like(token_logp),
        token_logq=torch.zeros_like(token_logq),
        lengths=torch.zeros_like(lengths),
        n_resamples=0,
        rows_copied=0,
        ess_history=[],
        stopped_by_time=torch.zeros(b, dtype=torch.bool),
        steps=torch.zeros(b, dtype=torch.long),
    )
    a_prev = target_exponent(0)
    can_end = bool(eos) or ctl.stop is not None
    with progress_bar("decoding", longest, enabled=progress) as advance:
        for t in range(longest):
            a_t, b_t = target_exponent(t), proposal_exponent(t)
            if a_t != a_prev:  # exponent ramp: reweight the prefix (finished ones too)
                log_w += (a_t - a_prev) * seq_logp
            banned, ban_rows = _eos_ban(eos_t, ctl.min_new_tokens, t, alive, n, device)
            tok, lp_tok, log_norm = propose(
                logits, b_t, streams, ctl.top_k, ctl.top_p, banned, ban_rows
            )
            live = ~finished
            tok = torch.where(live, tok, pad_token_id)
            lq_tok = b_t * lp_tok - log_norm
            log_w += torch.where(live, (a_t - b_t) * lp_tok + log_norm, 0.0)
            lp_tok = torch.where(live, lp_tok, 0.0)
            seq_logp += lp_tok
            lengths += live
            tokens[:, t] = tok
            token_logp[:, t] = lp_tok
            token_logq[:, t] = torch.where(live, lq_tok, 0.0)
            if eos:
                finished |= torch.isin(tok, eos_t) & live
            if ctl.stop is not None:
                hit = ctl.stop.check(tokens, t, ~finished)
                if hit is not None:
                    finished |= hit
            a_prev = a_t
            advance()
            # prompts that stop here: length bound, every row ended, or out of time
            ended = finished.view(b, n).all(-1).tolist() if can_end else [False] * b
            late = ctl.deadline is not None and time.perf_counter() >= ctl.deadline
            stop = [t + 1 >= bounds[alive[i]] or ended[i] or late for i in range(b)]
            if any(stop):
                for i in range(b):
                    if stop[i]:
                        j = alive[i]
                        out.steps[j] = t + 1
                        out.stopped_by_time[j] = late and not (t + 1 >= bounds[j] or ended[i])
                keep = [i for i in range(b) if not stop[i]]
                rows = _rows([i for i in range(b) if stop[i]], n, device)
                dst = _rows([alive[i] for i in range(b) if stop[i]], n, device)
                if not bool(torch.isfinite(log_w.index_select(0, rows)).all()):
                    raise ValueError("model returned NaN or infinite logits during decoding")
                lw = log_w.index_select(0, rows)
                if final_exponent != a_t:  # the ramp had not reached the target exponent
                    lw += (final_exponent - a_t) * seq_logp.index_select(0, rows)
                for name, x in (
                    ("tokens", tokens),
                    ("token_logp", token_logp),
                    ("token_logq", token_logq),
                    ("seq_logp", seq_logp),
                    ("lengths", lengths),
                ):
                    getattr(out, name).index_copy_(0, dst, x.index_select(0, rows))
                out.log_w.index_copy_(0, dst, lw)
                lwb = lw.view(-1, n).double()
                idx = torch.tensor([alive[i] for i in range(b) if stop[i]], device=device)
                src = torch.tensor([i for i in range(b) if stop[i]], device=device)
                out.log_z.index_copy_(0, idx, log_z[src] + lwb.logsumexp(-1) - math.log(n))
                if not keep:
                    break
                # decode on with the other prompts' rows only
                sel = _rows(keep, n, device)
                tokens, token_logp, token_logq = (x[sel] for x in (tokens, token_logp, token_logq))
                seq_logp, lengths, finished, log_w = (
                    x[sel] for x in (seq_logp, lengths, finished, log_w)
                )
                log_z = log_z[torch.tensor(keep, device=device)]
                cache = lm.select_cache(cache, sel)
                logits = None
                if padded:
                    row_mask, row_pos = row_mask[sel], row_pos[sel]
                streams = streams.subset(keep)
                alive = [alive[i] for i in keep]
                b, m = len(keep), len(keep) * n
            if (t + 1) % block_size == 0:
                if not bool(torch.isfinite(log_w).all()):
                    raise ValueError(f"model returned NaN or infinite logits by token {t}")
                lw = log_w.view(b, n)
                wn = torch.softmax(lw.double(), dim=-1)
                ess = 1.0 / (wn**2).sum(-1)  # (b,)
                out.ess_history.append(float((ess / n).mean()))
                need = ess < kappa * n
                if bool(need.any()):
                    u = _resample_uniforms(streams, need.tolist(), device)
                    anc = _systematic(lw, u)
                    keep_i = torch.arange(n, device=device).expand(b, n)
                    anc = torch.where(need[:, None], anc, keep_i)
                    log_z += torch.where(need, lw.double().logsumexp(-1) - math.log(n), 0.0)
                    lw[need] = 0.0
                    dst, src = cow_assignment(anc.cpu().numpy())
                    dst_t = torch.from_numpy(dst).to(device)
                    src_t = torch.from_numpy(src).to(device)
                    out.n_resamples += int(need.sum())
                    out.rows_copied += len(dst) if cache_reorder == "inplace" else m
                    if cache_reorder == "inplace":
                        for x in (tokens, token_logp, token_logq, seq_logp, lengths, finished):
                            x.index_copy_(0, dst_t, x.index_select(0, src_t))
                        lm.copy_rows_(cache, dst_t, src_t)
                    else:  # naive: every row rebuilt as a full copy
                        full = torch.arange(m, device=device)
                        full[dst_t] = src_t
                        tokens, token_logp, token_logq = (
                            x.index_select(0, full) for x in (tokens, token_logp, token_logq)
                        )
                        seq_logp, lengths, finished = seq_logp[full], lengths[full], finished[full]
                        cache = lm.select_cache(cache, full)
            # the rows may have been reordered: read the tokens back
            if padded:
                logits, cache = lm.forward(
                    model,
                    tokens[:, t : t + 1],
                    cache,
                    float32=False,
                    attention_mask=row_mask[:, : batch.width + t + 1],
                    position_ids=row_pos + t,
                )
            else:
                logits, cache = lm.forward(model, tokens[:, t : t + 1], cache, float32=False)
    width = int(out.steps.max())
    b0 = len(batch.lengths)
    out.tokens = out.tokens[:, :width].view(b0, n, width)
    out.token_logp = out.token_logp[:, :width].view(b0, n, width)
    out.token_logq = out.token_logq[:, :width].view(b0, n, width)
    out.log_w = out.log_w.view(b0, n).double()
    out.seq_logp, out.lengths = out.seq_logp.view(b0, n), out.lengths.view(b0, n)
    return out


def _eos_ban(eos_t, min_new, t, alive, n, device):
    """(banned ids, banned rows) at token t: EOS is banned before ``min_new`` tokens (one
    number, or one per prompt); rows None means every row."""
    if not eos_t.numel():
        return None, None
    if isinstance(min_new, int):
        return (eos_t, None) if t < min_new else (None, None)
    ban = [t < min_new[j] for j in alive]
    if not any(ban):
        return None, None
    if all(ban):
        return eos_t, None
    return eos_t, torch.tensor(ban, device=device).repeat_interleave(n)


def _rows(prompts: list[int], n: int, device) -> torch.Tensor:
    """Row indices of the particles of ``prompts`` (n rows each)."""
    p = torch.tensor(prompts, device=device, dtype=torch.long)
    return (p[:, None] * n + torch.arange(n, device=device)).flatten()


def _resample_uniforms(streams: lm.Streams, need: list[bool], device) -> torch.Tensor:
    """(B, 1) float64: one uniform from the stream of each prompt that resamples."""
    u = [
        torch.rand((1, 1), generator=g, device=device, dtype=torch.float64)
        if on
        else torch.zeros((1, 1), device=device, dtype=torch.float64)
        for g, on in zip(streams.generators, need, strict=True)
    ]
    return torch.cat(u)


def _by_length(model, batch, n, bounds, *args) -> _Round:
    """A padded batch for a model without attention mask / position ids: each group of
    prompts of one length decoded as its own batch, the results put back in order."""
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(batch.lengths):
        groups.setdefault(length, []).append(i)
    (eos, pad, target, proposal, final, kappa, block, streams, reorder, progress, ctl) = args
    parts, order = [], []
    for index in groups.values():
        c = ctl
        if ctl is not None and not isinstance(ctl.min_new_tokens, int):
            c = replace(ctl, min_new_tokens=[ctl.min_new_tokens[i] for i in index])
        parts.append(
            run_particles(
                model, batch.select(index), n, [bounds[i] for i in index], eos, pad, target,
                proposal, final, kappa, block, streams.subset(index), reorder, progress, c,
            )
        )  # fmt: skip
        order += index
    back = torch.tensor(order).argsort()
    cat = lambda name, fill=0: _pad_cat0([getattr(r, name) for r in parts], fill)[back]  # noqa: E731
    return _Round(
        tokens=cat("tokens", pad),
        log_w=cat("log_w"),
        log_z=cat("log_z"),
        seq_logp=cat("seq_logp"),
        token_logp=cat("token_logp"),
        token_logq=cat("token_logq"),
        lengths=cat("lengths"),
        n_resamples=sum(r.n_resamples for r in parts),
        rows_copied=sum(r.rows_copied for r in parts),
        ess_history=[e for r in parts for e in r.ess_history],
        stopped_by_time=cat("stopped_by_time"),
        steps=cat("steps"),
    )


def _pad_cat0(parts: list[torch.Tensor], pad) -> torch.Tensor:
    """Concatenate along dim 0, padding a last dimension (tokens) to the longest."""
    if parts[0].dim() == 3:
        width = max(p.shape[-1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=pad) for p in parts]
    return torch.cat([p.to(parts[0].device) for p in parts])


def _pad_cat(parts: list[torch.Tensor], pad: int) -> torch.Tensor:
    """Concatenate (B, n_i, L_i) along dim 1, padding L to the longest."""
    width = max(p.shape[-1] for p in parts)
    out = [torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=pad) for p in parts]
    return torch.cat(out, dim=1)


def power_smc(
    model,
    input_ids,
    alpha: float = 4.0,
    n_particles: int = 16,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    kappa: float = 0.5,
    block_size: int = 64,
    ramp_tokens: int = 0,
    seed: int | Sequence[int] = 0,
    n_rounds: int = 1,
    pad_token_id: int | None = None,
    cache_reorder: str = "inplace",
    progress: bool = False,
    *,
    attention_mask: torch.Tensor | None = None,
    min_new_tokens: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    max_time: float | None = None,
) -> PowerSMCOutput:
    """Sample from p(y | x)^alpha / Z with sequential Monte Carlo.

    Args:
        model: causal LM called as ``model(ids, cache=cache, use_cache=True)``.
        input_ids: one prompt ``(prompt_len,)`` (a tensor or a list of ids), or a batch:
            a ``(B, prompt_len)`` tensor (with ``attention_mask`` when padded), a list of
            B prompts of any lengths, or a tokenizer's ``BatchEncoding``. Each prompt has
            its own particles, resampling, stopping and random stream, and all decode as
            one batch (left-padded; see :func:`longseq.lm.prompt_batch`).
        alpha: power exponent (paper default 4); must be > 0.
        n_particles: particles per prompt and round (paper default 64).
        max_new_tokens: generation length bound; particles that reach it are truncated.
            Lowered, with a :class:`ContextClampWarning`, when prompt + generation
            would not fit the model's context (``block_size``/``max_position_embeddings``).
        eos_token_id: token id(s) that end a particle (absorbing); None for none.
        kappa: resample when ESS < kappa * N (paper: 0.5).
        block_size: check the ESS every this many tokens (paper default 64).
        ramp_tokens: length of the linear exponent ramp from 1 to alpha (0 = no ramp;
            paper uses 100-400 on long generations).
        seed: seeds the proposal draws and the resampling uniforms: prompt i of a batch
            uses ``seed + i``, or give one seed per prompt. A prompt's result does not
            depend on the other prompts of its batch: alone, with its seed, it is the
            same (up to the rounding of a padded forward pass).
        n_rounds: independent SMC rounds combined by their normalizing-constant
            estimates (each round's particles weighted by its Z-hat).
        pad_token_id: token written after EOS and on the left of shorter prompts
            (default: the first EOS id, else 0).
        cache_reorder: ``"inplace"`` (copy-on-write rows) or ``"copy"`` (naive full copy).
        progress: show a progress bar over tokens.
        attention_mask: with a ``(B, prompt_len)`` tensor of padded prompts, 1 on tokens
            and 0 on padding (left or right padding; each row's tokens contiguous).
        min_new_tokens: EOS is not allowed before this many new tokens. Target:
            p^alpha restricted to sequences at least this long (p itself unchanged).
        top_k, top_p: restrict every token to the top-k / nucleus support of the
            model's next-token distribution (see :mod:`longseq.power.proposal`).
            Target: p^alpha restricted to sequences whose every token lies in its
            support, renormalized; weights use the model's untruncated p, so the
            restriction is exact, not a change of temperature.
        stop_strings: a particle ends when its generated text contains one of these
            (decoded with ``tokenizer``); the stop string ends a sequence like EOS.
        tokenizer: decodes tokens for ``stop_strings``.
        max_time: seconds; when they run out, decoding stops after the current token
            and every live particle is truncated there, as if max_new_tokens had been
            that length (``stopped_by_time`` says so). Rounds after the deadline
            generate one token.

    Returns:
        :class:`PowerSMCOutput`; for a batch, ``sequences`` is ``(B, n_particles *
        n_rounds, prompt_len + new_len)`` with the prompts left-padded to
        ``prompt_len`` (``out.prompt_len``): the generation starts at that column.
    """
    alpha = _check_alpha(alpha)
    _validate(n_particles, max_new_tokens, kappa, block_size, n_rounds)
    if not isinstance(ramp_tokens, int) or ramp_tokens < 0:
        raise ValueError(f"ramp_tokens must be an integer >= 0, got {ramp_tokens!r}")
    if cache_reorder not in ("inplace", "copy"):
        raise ValueError(f"cache_reorder must be 'inplace' or 'copy', got {cache_reorder!r}")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    t0 = time.perf_counter()
    ctl = make_controls(top_k, top_p, min_new_tokens, stop_strings, tokenizer, max_time)
    batch, streams, bounds = prepare(model, input_ids, attention_mask, pad, seed, max_new_tokens)
    prompts = batch.ids
    sched = alpha_schedule(alpha, ramp_tokens)
    rounds = [
        run_particles(
            model,
            batch,
            n_particles,
            bounds,
            eos,
            pad,
            sched,
            sched,
            alpha,
            kappa,
            block_size,
            streams,
            cache_reorder,
            progress,
            ctl,
        )
        for _ in range(n_rounds)
    ]
    # combine rounds: particle weight = Z_r * W_{r,i}
    log_w = torch.cat(
        [r.log_z[:, None] + r.log_w - r.log_w.logsumexp(-1, keepdim=True) for r in rounds], dim=1
    )
    log_z = log_w.logsumexp(-1) - math.log(n_rounds)
    log_w = log_w - log_w.logsumexp(-1, keepdim=True)
    gen_tokens = _pad_cat([r.tokens for r in rounds], pad)
    b, total = log_w.shape
    seqs = torch.cat([prompts[:, None].expand(b, total, -1), gen_tokens], dim=-1)
    probs = log_w.exp().float()
    pick = torch.cat(
        [
            torch.multinomial(probs[i : i + 1], 1, generator=g)[:, 0]
            for i, g in enumerate(streams.generators)
        ]
    )
    sample = seqs[torch.arange(b, device=seqs.device), pick]
    seq_logp = torch.cat([r.seq_logp for r in rounds], dim=1)
    lengths = torch.cat([r.lengths for r in rounds], dim=1)
    timed_out = torch.stack([r.stopped_by_time for r in rounds]).any(0)
    elapsed = time.perf_counter() - t0
    out = PowerSMCOutput(
        sequences=seqs,
        log_weights=log_w.float(),
        log_z=log_z,
        sample=sample,
        seq_logprobs=seq_logp,
        lengths=lengths,
        n_resamples=sum(r.n_resamples for r in rounds),
        rows_copied=sum(r.rows_copied for r in rounds),
        ess_history=[e for r in rounds for e in r.ess_history],
        elapsed_s=elapsed,
        stopped_by_time=timed_out,
        sample_index=pick,
        new_tokens_bound=torch.tensor(bounds),
        prompt_len=batch.width,
        steps=torch.stack([r.steps for r in rounds]).sum(0),
    )
    if batch.single:
        out.sample_index = int(pick[0])
        out.sequences, out.log_weights, out.sample = seqs[0], out.log_weights[0], sample[0]
        out.seq_logprobs, out.log_z, out.lengths = seq_logp[0], float(log_z[0]), lengths[0]
        out.stopped_by_time, out.new_tokens_bound = bool(timed_out[0]), bounds[0]
        out.steps = int(out.steps[0])
    return out
