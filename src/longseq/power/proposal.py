"""One decoding step, shared by every sampler: the tempered, truncated proposal.

For last-position logits ``x`` (N, V), an exponent ``beta`` and a support S (the
whole vocabulary, or what top-k / top-p / banned tokens leave), one token per row
is drawn from

    q(v) = p(v)^beta 1[v in S] / sum_{u in S} p(u)^beta,

and :func:`propose` returns, besides the token, log p(token) under the model's full
next-token distribution p and the log-normalizer

    L = log sum_{v in S} p(v)^beta         (the Renyi term of Power-SMC),

so that log q(token) = beta log p(token) - L. With p^a as the target and q as the
proposal, a token's incremental log-weight is (a - beta) log p(token) + L.

Memory: one float32 (N, V) buffer per step, whatever the logits' dtype. It holds
x - max, then exp(x - max) (summed for log p), then exp(beta (x - max)) in place,
masked in place to the support. The draw is a two-level inverse CDF with one
uniform per row: pick a block of ``CHUNK`` tokens by the block sums (float64), then
a token inside it; no Gumbel noise of size (N, V) is needed.

The support (same for every sampler, so all of them sample within one set):

* ``banned``: token ids removed first (``min_new_tokens`` bans EOS);
* ``top_k``: the k most probable remaining tokens (ties at the k-th probability kept);
* ``top_p``: the nucleus of the remaining distribution renormalized, at temperature 1:
  the most probable tokens whose total probability first reaches ``top_p`` (ties at
  the boundary kept);
* both: the intersection (the smaller of the two sets).

The truncation is computed on p itself, not on p^beta, so it does not move with the
proposal temperature or the exponent ramp.
"""

from __future__ import annotations

import torch

from longseq import lm

CHUNK = 4096  # tokens per block of the two-level draw and of the in-place masking


def _threshold(
    x: torch.Tensor,
    m: torch.Tensor,
    log_mass: torch.Tensor,
    top_k: int | None,
    top_p: float | None,
    banned: torch.Tensor | None,
    banned_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) float32 logit threshold: token v is in the support when x[v] >= threshold.

    ``log_mass`` is log sum exp(x - m) over the tokens that are not banned. Only
    (N, k') slices of the logits are ever sorted (top-k, or growing top-k' until the
    nucleus is covered).
    """
    n, v = x.shape
    nb = 0 if banned is None else banned.numel()
    thr = torch.full((n,), float("-inf"), device=x.device)

    def top(k: int) -> torch.Tensor:
        vals, idx = x.topk(min(v, k + nb), dim=-1)
        vals = vals.float()
        if nb:  # drop banned ids, keep the order of the rest
            drop = torch.isin(idx, banned)
            if banned_rows is not None:
                drop &= banned_rows[:, None]
            vals = vals.masked_fill(drop, float("-inf"))
            vals = vals.sort(dim=-1, descending=True).values
        return vals

    if top_k is not None and top_k < v:
        thr = torch.maximum(thr, top(top_k)[:, top_k - 1])
    if top_p is not None and top_p < 1.0:
        k = 64
        while True:
            vals = top(k)
            cum = (vals.double() - m[:, None] - log_mass[:, None]).exp().cumsum(-1)
            if bool((cum[:, -1] >= top_p).all()) or k + nb >= v:
                break
            k *= 4
        j = (cum < top_p).sum(-1).clamp_max(vals.shape[1] - 1)
        thr = torch.maximum(thr, vals.gather(1, j[:, None])[:, 0])
    return thr


def propose(
    logits: torch.Tensor,
    beta: float,
    generator: torch.Generator | lm.Streams,
    top_k: int | None = None,
    top_p: float | None = None,
    banned: torch.Tensor | None = None,
    banned_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` (N, V) from q ∝ p^beta on the support.

    ``generator``: one generator for every row, or :class:`longseq.lm.Streams` (one
    stream per prompt, the rows in equal blocks per prompt). ``banned_rows`` (N,) bool:
    the rows whose support leaves out ``banned`` (default: every row). Returns ``(tokens, logp,
    log_norm)``, each (N,): the tokens, their log p under the
    model's full distribution, and L = log sum_{v in S} p(v)^beta. Non-finite logits
    give non-finite ``logp``/``log_norm`` (the caller checks).
    """
    n, v = logits.shape
    m = logits.amax(-1).float()  # (N,)
    buf = logits - m[:, None]  # the one (N, V) buffer; float32 by type promotion
    if buf.dtype != torch.float32:
        buf = buf.float()
    buf.exp_()  # p * s1
    s1 = buf.sum(-1)
    log_s1 = s1.log()  # log p(v) = x[v] - m - log_s1
    log_mass = log_s1
    if banned is not None and banned.numel():
        removed = buf.index_select(1, banned).sum(-1)
        if banned_rows is not None:
            removed = removed * banned_rows
        log_mass = (s1 - removed).clamp_min(1e-30).log()
    thr = None
    if (top_k is not None and top_k < v) or (top_p is not None and top_p < 1.0):
        thr = _threshold(logits, m, log_mass, top_k, top_p, banned, banned_rows)
    if beta != 1.0:
        buf.pow_(beta)  # exp(beta (x - m))
    if banned is not None and banned.numel():
        if banned_rows is None:
            buf.index_fill_(1, banned, 0.0)
        else:
            kept = buf.index_select(1, banned) * ~banned_rows[:, None]
            buf.index_copy_(1, banned, kept)
    if thr is not None:
        for c in range(0, v, CHUNK):
            buf[:, c : c + CHUNK].masked_fill_(logits[:, c : c + CHUNK] < thr[:, None], 0.0)
    tokens, mass = _draw(buf, generator)
    log_norm = mass.log() - beta * log_s1
    logp = logits.gather(1, tokens[:, None])[:, 0].float() - m - log_s1
    return tokens, logp, log_norm


def _draw(w: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row of non-negative weights ``w`` (N, V) with probability
    w / w.sum(), by a two-level inverse CDF; also returns the row sums (float64)."""
    n, v = w.shape
    full = (v // CHUNK) * CHUNK
    parts = []
    if full:
        parts.append(w[:, :full].view(n, -1, CHUNK).sum(-1))
    if full < v:
        parts.append(w[:, full:].sum(-1, keepdim=True))
    block = torch.cat(parts, dim=1).double()  # (N, blocks)
    cum = block.cumsum(-1)
    total = cum[:, -1]
    u = lm.uniforms(generator, n, w.device) * total
    b = torch.searchsorted(cum, u[:, None], right=True)[:, 0].clamp_max(block.shape[1] - 1)
    b = _last_positive_if_empty(block, b)
    rest = u - (cum.gather(1, b[:, None]) - block.gather(1, b[:, None]))[:, 0]
    width = min(CHUNK, v)
    cols = b[:, None] * CHUNK + torch.arange(width, device=w.device)
    valid = cols < v
    inner = w.gather(1, cols.clamp_max(v - 1)).double() * valid
    icum = inner.cumsum(-1)
    # the block sum and the in-block cumulative sum may round differently: rescale
    rest = rest * icum[:, -1] / block.gather(1, b[:, None])[:, 0].clamp_min(1e-300)
    j = torch.searchsorted(icum, rest[:, None], right=True)[:, 0].clamp_max(width - 1)
    j = _last_positive_if_empty(inner, j)
    return cols.gather(1, j[:, None])[:, 0], total


def _last_positive_if_empty(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Where ``w[row, idx]`` is zero (rounding at the top end of the CDF), the last index
    of the row with positive weight instead."""
    picked = w.gather(1, idx[:, None])[:, 0]
    pos = torch.arange(w.shape[1], device=w.device).expand_as(w)
    last = torch.where(w > 0, pos, -1).amax(-1).clamp_min(0)
    return torch.where(picked > 0, idx, last)
