"""What every decoding method needs from a causal LM, written once.

A *causal LM* here is anything called the `transformers` 5 way::

    out = model(input_ids, cache=cache, use_cache=True)   # out.logits, out.cache

which covers every ``transformers`` ``AutoModelForCausalLM`` and the models in
:mod:`longseq.models`. Caches are treated as batches of rows: the helpers below
repeat, select or copy rows of every tensor a cache holds, for the cache layouts
of `transformers` (``DynamicCache`` with attention layers ``keys``/``values`` and
linear-attention/SSM layers ``conv_states``/``recurrent_states``) and ours, which
use the same attribute names. Caches of another layout fall back on their own
``reorder_cache``/``batch_repeat_interleave`` methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from functools import cache as _memo

import torch

# attribute names under which cache layers keep per-row tensors (batch first)
_ROW_ATTRS = ("keys", "values", "conv_states", "recurrent_states", "ssm_states")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; ``labels`` are aligned with the inputs, -100 is ignored."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@_memo
def _takes_logits_to_keep(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def forward(model, input_ids: torch.Tensor, cache=None, float32: bool = True):
    """One call of ``model`` with a cache; returns (last-position logits, cache).

    The logits are float32 unless ``float32=False`` (then in the model's dtype, so a
    caller that upcasts in its own buffer avoids a second (batch, vocab) copy). Models
    that take ``logits_to_keep`` (every `transformers` causal LM) compute the output
    head for the last position only. Raises a clear error when the model does not
    follow the calling convention.
    """
    kw = {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}
    try:
        out = model(input_ids, cache=cache, use_cache=True, **kw)
    except TypeError as e:
        if "cache" in str(e):
            raise TypeError(
                f"{type(model).__name__} does not accept `cache=`/`use_cache=`: a causal LM "
                "must be callable as model(input_ids, cache=cache, use_cache=True) "
                "(the transformers 5 convention)"
            ) from e
        raise
    logits = getattr(out, "logits", None)
    new_cache = getattr(out, "cache", None)
    if logits is None:
        raise TypeError(f"{type(model).__name__} returned no `.logits`")
    if new_cache is None:
        raise TypeError(
            f"{type(model).__name__} returned no `.cache` with use_cache=True; "
            "this sampler needs a model with a KV/state cache"
        )
    last = logits[:, -1]
    return (last.float() if float32 else last), new_cache


def context_length(model) -> int | None:
    """The longest sequence (prompt + generation) the model's positions cover, read from
    its config (``block_size``, ``max_position_embeddings`` or ``n_positions``); None when
    the config names none (state-space models)."""
    cfg = getattr(model, "config", None)
    for name in ("block_size", "max_position_embeddings", "n_positions"):
        val = getattr(cfg, name, None)
        if isinstance(val, int) and not isinstance(val, bool) and val > 0:
            return val
    return None


def check_finite(logits: torch.Tensor, where: str) -> None:
    """NaN or +inf logits make every probability meaningless (-inf is a masked token)."""
    bad = torch.isnan(logits) | torch.isposinf(logits)
    if bool(bad.any()):
        raise ValueError(f"model returned NaN or +inf logits {where}")
    if bool(torch.isneginf(logits).all(dim=-1).any()):
        raise ValueError(f"model returned all -inf logits (no token possible) {where}")


def _row_tensors(cache) -> Iterator[tuple[object, object, torch.Tensor]]:
    """(container, key, tensor) for every batch-first tensor a cache holds."""
    for layer in getattr(cache, "layers", ()):
        for attr in _ROW_ATTRS:
            val = getattr(layer, attr, None)
            if torch.is_tensor(val):
                yield layer, attr, val
            elif isinstance(val, dict):
                for k, v in val.items():
                    if torch.is_tensor(v):
                        yield val, k, v


def _set(container, key, value: torch.Tensor) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        setattr(container, key, value)


def _map_rows(cache, fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Replace each row tensor t by fn(t); False when the cache has none we know."""
    found = False
    for container, key, t in list(_row_tensors(cache)):
        _set(container, key, fn(t))
        found = True
    return found


def repeat_cache(cache, n: int):
    """Repeat every row ``n`` times in place (row i -> rows i*n .. i*n+n-1)."""
    if n == 1:
        return cache
    if not _map_rows(cache, lambda t: t.repeat_interleave(n, dim=0)):
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(n)
        else:
            raise TypeError(f"cannot repeat rows of a {type(cache).__name__} cache")
    return cache


def select_cache(cache, index: torch.Tensor):
    """Rows ``index`` (with repeats) as new tensors: a full copy of the cache."""
    if not _map_rows(cache, lambda t: t.index_select(0, index.to(t.device))):
        if hasattr(cache, "reorder_cache"):
            cache.reorder_cache(index)
        else:
            raise TypeError(f"cannot select rows of a {type(cache).__name__} cache")
    return cache


def copy_rows_(cache, dst: torch.Tensor, src: torch.Tensor):
    """Copy-on-write row update: row ``dst[k]`` becomes a copy of row ``src[k]``.

    Only the rows named in ``dst`` are written, in place; ``src`` rows must not be
    among them. Memory beyond the cache is one gather of ``len(dst)`` rows.
    """
    if dst.numel() == 0:
        return cache
    found = False
    for _, _, t in _row_tensors(cache):
        d, s = dst.to(t.device), src.to(t.device)
        t.index_copy_(0, d, t.index_select(0, s))
        found = True
    if not found:
        if not hasattr(cache, "reorder_cache"):
            raise TypeError(f"cannot copy rows of a {type(cache).__name__} cache")
        n = cache_batch_size(cache, default=None)
        if n is None:
            raise TypeError(f"cannot tell the batch size of a {type(cache).__name__} cache")
        index = torch.arange(n)
        index[dst.cpu()] = src.cpu()
        cache.reorder_cache(index.to(dst.device))
    return cache


def cache_batch_size(cache, default: int | None = None) -> int | None:
    for _, _, t in _row_tensors(cache):
        return t.shape[0]
    return default


def cache_nbytes(cache) -> int:
    return sum(t.numel() * t.element_size() for _, _, t in _row_tensors(cache))


def gumbel_sample(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from softmax(scores) by the Gumbel-max trick (no host sync)."""
    u = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=torch.float32)
    g = -torch.log(-torch.log(u.clamp_min(1e-20)))
    return torch.argmax(scores + g, dim=-1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


@torch.no_grad()
def sequence_logprob(model, input_ids: torch.Tensor, prompt_len: int, pad_mask=None):
    """log p(y | x) for full rows ``input_ids`` = [x, y] by one forward without a cache.

    ``pad_mask`` (same shape as the continuation) marks positions to leave out.
    A reference for tests and for rescoring.
    """
    out = model(input_ids)
    logp = out.logits[:, prompt_len - 1 : -1].float().log_softmax(-1)
    tok = input_ids[:, prompt_len:]
    lp = logp.gather(-1, tok[..., None])[..., 0]
    if pad_mask is not None:
        lp = lp.masked_fill(pad_mask, 0.0)
    return lp.sum(-1)
