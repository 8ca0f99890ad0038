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
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    new_len)``. For a batch of B prompts every field has a leading B.
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
    stopped_by_time: bool = False  # max_time ran out: live particles were truncated there
    sample_index: int | torch.Tensor = 0  # which particle ``sample`` is
    new_tokens_bound: int = 0  # max_new_tokens after fitting the model's context

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
    stopped_by_time: bool = False


@dataclass
class Controls:
    """Proposal and stopping controls shared by every sampler (see :func:`power_smc`)."""

    top_k: int | None = None
    top_p: float | None = None
    min_new_tokens: int = 0
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
    b, n = log_w.shape
    w = torch.softmax(log_w.double(), dim=-1)
    cdf = w.cumsum(-1)
    cdf[:, -1] = 1.0
    u = torch.rand((b, 1), generator=generator, device=log_w.device, dtype=torch.float64)
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


def _validate(input_ids, n_particles, max_new_tokens, kappa, block_size, n_rounds):
    if not torch.is_tensor(input_ids):
        raise TypeError(f"input_ids must be a LongTensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() not in (1, 2) or input_ids.shape[-1] < 1 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty prompt of shape (prompt_len,) or (batch, prompt_len), "
            f"got shape {tuple(input_ids.shape)}"
        )
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
    prompts: torch.Tensor,
    n: int,
    max_new_tokens: int,
    eos: list[int],
    pad_token_id: int,
    target_exponent: Callable[[int], float],
    proposal_exponent: Callable[[int], float],
    final_exponent: float,
    kappa: float,
    block_size: int,
    generator: torch.Generator,
    cache_reorder: str = "inplace",
    progress: bool = False,
    controls: Controls | None = None,
) -> _Round:
    """Decode ``n`` particles per prompt as one batch of B*n rows (the SMC core).

    Token t is drawn from q ∝ p^proposal_exponent(t) on the support the controls leave;
    weights target p^target_exponent(t) restricted to that support, and at the end
    p^final_exponent. With kappa = 0 nothing is resampled, which is plain (tempered)
    sampling with importance weights. Decoding stops early once every row has ended
    (EOS or a stop string) or the controls' deadline has passed.
    """
    ctl = controls or Controls()
    device = prompts.device
    b = prompts.shape[0]
    m = b * n
    logits, cache = lm.forward(model, prompts, float32=False)  # prompt prefilled once
    lm.check_finite(logits, "for the prompt")
    logits = logits.repeat_interleave(n, dim=0)
    cache = lm.repeat_cache(cache, n)
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)
    tokens = torch.full((m, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    token_logp = torch.zeros((m, max_new_tokens), device=device)
    token_logq = torch.zeros((m, max_new_tokens), device=device)
    seq_logp = torch.zeros(m, device=device)
    lengths = torch.zeros(m, dtype=torch.long, device=device)
    finished = torch.zeros(m, dtype=torch.bool, device=device)
    log_w = torch.zeros(m, device=device)
    log_z = torch.zeros(b, device=device, dtype=torch.float64)
    a_prev = target_exponent(0)
    n_resamples, rows_copied, ess_hist = 0, 0, []
    steps, timed_out = max_new_tokens, False
    can_end = bool(eos) or ctl.stop is not None
    with progress_bar("decoding", max_new_tokens, enabled=progress) as advance:
        for t in range(max_new_tokens):
            a_t, b_t = target_exponent(t), proposal_exponent(t)
            if a_t != a_prev:  # exponent ramp: reweight the prefix (finished ones too)
                log_w += (a_t - a_prev) * seq_logp
            banned = eos_t if eos and t < ctl.min_new_tokens else None
            tok, lp_tok, log_norm = propose(logits, b_t, generator, ctl.top_k, ctl.top_p, banned)
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
            last = t + 1 == max_new_tokens
            if not last and can_end and bool(finished.all()):
                last, steps = True, t + 1
            if not last and ctl.deadline is not None and time.perf_counter() >= ctl.deadline:
                last, steps, timed_out = True, t + 1, True
            if last:
                break
            if (t + 1) % block_size == 0:
                if not bool(torch.isfinite(log_w).all()):
                    raise ValueError(f"model returned NaN or infinite logits by token {t}")
                lw = log_w.view(b, n)
                wn = torch.softmax(lw.double(), dim=-1)
                ess = 1.0 / (wn**2).sum(-1)  # (b,)
                ess_hist.append(float((ess / n).mean()))
                need = ess < kappa * n
                if bool(need.any()):
                    anc = systematic_resample(lw, generator)
                    keep = torch.arange(n, device=device).expand(b, n)
                    anc = torch.where(need[:, None], anc, keep)
                    log_z += torch.where(need, lw.double().logsumexp(-1) - math.log(n), 0.0)
                    lw[need] = 0.0
                    dst, src = cow_assignment(anc.cpu().numpy())
                    dst_t = torch.from_numpy(dst).to(device)
                    src_t = torch.from_numpy(src).to(device)
                    n_resamples += int(need.sum())
                    rows_copied += len(dst) if cache_reorder == "inplace" else m
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
            logits, cache = lm.forward(model, tokens[:, t : t + 1], cache, float32=False)
    if not bool(torch.isfinite(log_w).all()):
        raise ValueError("model returned NaN or infinite logits during decoding")
    if final_exponent != a_prev:  # the ramp had not reached the target exponent
        log_w += (final_exponent - a_prev) * seq_logp
    lw = log_w.view(b, n).double()
    log_z += lw.logsumexp(-1) - math.log(n)
    return _Round(
        tokens=tokens[:, :steps].view(b, n, steps),
        log_w=lw,
        log_z=log_z,
        seq_logp=seq_logp.view(b, n),
        token_logp=token_logp[:, :steps].view(b, n, steps),
        token_logq=token_logq[:, :steps].view(b, n, steps),
        lengths=lengths.view(b, n),
        n_resamples=n_resamples,
        rows_copied=rows_copied,
        ess_history=ess_hist,
        stopped_by_time=timed_out,
    )


def _pad_cat(parts: list[torch.Tensor], pad: int) -> torch.Tensor:
    """Concatenate (B, n_i, L_i) along dim 1, padding L to the longest."""
    width = max(p.shape[-1] for p in parts)
    out = [torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=pad) for p in parts]
    return torch.cat(out, dim=1)


def prepare_prompts(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, P) prompts on the model's device, and whether the caller gave one prompt."""
    single = input_ids.dim() == 1 or input_ids.shape[0] == 1
    prompts = input_ids if input_ids.dim() == 2 else input_ids[None]
    return prompts.to(lm.model_device(model), dtype=torch.long), single


def power_smc(
    model,
    input_ids: torch.Tensor,
    alpha: float = 4.0,
    n_particles: int = 16,
    max_new_tokens: int = 256,
    eos_token_id: int | list[int] | None = None,
    kappa: float = 0.5,
    block_size: int = 64,
    ramp_tokens: int = 0,
    seed: int = 0,
    n_rounds: int = 1,
    pad_token_id: int | None = None,
    cache_reorder: str = "inplace",
    progress: bool = False,
    *,
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
        input_ids: prompt ``(prompt_len,)``, or ``(B, prompt_len)`` for B prompts of one
            length (unpadded), each with its own particles, all decoded as one batch.
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
        seed: seeds the proposal draws and the resampling uniforms.
        n_rounds: independent SMC rounds combined by their normalizing-constant
            estimates (each round's particles weighted by its Z-hat).
        pad_token_id: token written after EOS (default: the first EOS id, else 0).
        cache_reorder: ``"inplace"`` (copy-on-write rows) or ``"copy"`` (naive full copy).
        progress: show a progress bar over tokens.
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
    """
    alpha = _check_alpha(alpha)
    _validate(input_ids, n_particles, max_new_tokens, kappa, block_size, n_rounds)
    if not isinstance(ramp_tokens, int) or ramp_tokens < 0:
        raise ValueError(f"ramp_tokens must be an integer >= 0, got {ramp_tokens!r}")
    if cache_reorder not in ("inplace", "copy"):
        raise ValueError(f"cache_reorder must be 'inplace' or 'copy', got {cache_reorder!r}")
    eos = _eos_list(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    t0 = time.perf_counter()
    ctl = make_controls(top_k, top_p, min_new_tokens, stop_strings, tokenizer, max_time)
    max_new_tokens = fit_context(model, input_ids.shape[-1], max_new_tokens)
    prompts, single = prepare_prompts(model, input_ids)
    gen = lm.make_generator(prompts.device, seed)
    sched = alpha_schedule(alpha, ramp_tokens)
    rounds = [
        run_particles(
            model,
            prompts,
            n_particles,
            max_new_tokens,
            eos,
            pad,
            sched,
            sched,
            alpha,
            kappa,
            block_size,
            gen,
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
    pick = torch.multinomial(log_w.exp().float(), 1, generator=gen)[:, 0]
    sample = seqs[torch.arange(b, device=seqs.device), pick]
    seq_logp = torch.cat([r.seq_logp for r in rounds], dim=1)
    lengths = torch.cat([r.lengths for r in rounds], dim=1)
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
        stopped_by_time=any(r.stopped_by_time for r in rounds),
        sample_index=pick,
        new_tokens_bound=max_new_tokens,
    )
    if single:
        out.sample_index = int(pick[0])
        out.sequences, out.log_weights, out.sample = seqs[0], out.log_weights[0], sample[0]
        out.seq_logprobs, out.log_z, out.lengths = seq_logp[0], float(log_z[0]), lengths[0]
    return out
