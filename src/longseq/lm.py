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

Prompts of different lengths travel as a :class:`PromptBatch` (left-padded, built by
:func:`prompt_batch` from a list of prompts, ids + attention mask, or a tokenizer's
``BatchEncoding``); a model decodes it padded when it takes ``attention_mask`` and
``position_ids`` (:func:`takes_padding`). :class:`Streams` gives each prompt its own
random stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
def _forward_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in _forward_params(cls)


def takes_padding(model) -> bool:
    """Whether ``model`` decodes left-padded batches: its forward takes an
    ``attention_mask`` (batch, past + new) and ``position_ids`` (batch, new), as every
    `transformers` attention model and :class:`longseq.models.gpt.GPT` do."""
    params = _forward_params(type(model))
    return "attention_mask" in params and "position_ids" in params


def forward(
    model,
    input_ids: torch.Tensor,
    cache=None,
    float32: bool = True,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
):
    """One call of ``model`` with a cache; returns (last-position logits, cache).

    The logits are float32 unless ``float32=False`` (then in the model's dtype, so a
    caller that upcasts in its own buffer avoids a second (batch, vocab) copy). Models
    that take ``logits_to_keep`` (every `transformers` causal LM) compute the output
    head for the last position only. ``attention_mask`` (1 = token, 0 = padding, over
    the cached and the new positions) and ``position_ids`` are passed on when given (a
    left-padded batch; see :func:`takes_padding`). Raises a clear error when the model
    does not follow the calling convention.
    """
    kw = {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if position_ids is not None:
        kw["position_ids"] = position_ids
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


class Streams:
    """One random stream per prompt of a batch whose rows come in equal blocks, one
    block per prompt (its particles or samples).

    A sampler draws from a prompt's stream only while that prompt decodes, so what a
    prompt draws does not depend on the other prompts of its batch: decoded alone with
    the same seed it sees the same random numbers.
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    @classmethod
    def seeded(cls, device: torch.device, seeds: Sequence[int]) -> Streams:
        return cls([make_generator(device, s) for s in seeds])

    def subset(self, index: Sequence[int]) -> Streams:
        """The streams of prompts ``index`` (the same generator objects)."""
        return Streams([self.generators[i] for i in index])

    def rand(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) float64 uniforms, ``n / len(self)`` from each prompt's stream in turn."""
        k = n // len(self.generators)
        parts = [
            torch.rand(k, generator=g, device=device, dtype=torch.float64) for g in self.generators
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __len__(self) -> int:
        return len(self.generators)


def uniforms(source: torch.Generator | Streams, n: int, device: torch.device) -> torch.Tensor:
    """(n,) float64 uniforms from one generator, or from per-prompt :class:`Streams`."""
    if isinstance(source, Streams):
        return source.rand(n, device)
    return torch.rand(n, generator=source, device=device, dtype=torch.float64)


@dataclass
class PromptBatch:
    """Prompts of different lengths as one left-padded batch.

    ``ids`` (B, P): each prompt right-aligned, padding on the left; ``lengths`` (B,):
    the real tokens of each. The attention mask and the position ids follow from them.
    """

    ids: torch.Tensor
    lengths: list[int]
    single: bool = False  # the caller gave one prompt (outputs drop the batch dimension)

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    @property
    def padded(self) -> bool:
        return min(self.lengths) < self.width

    def mask(self) -> torch.Tensor:
        """(B, P) long: 1 on tokens, 0 on the left padding."""
        start = torch.tensor([self.width - n for n in self.lengths], device=self.ids.device)
        return (torch.arange(self.width, device=self.ids.device) >= start[:, None]).long()

    def positions(self) -> torch.Tensor:
        """(B, P) position ids: 0 at each prompt's first token (and on its padding)."""
        return (self.mask().cumsum(-1) - 1).clamp_min(0)

    def select(self, index: Sequence[int]) -> PromptBatch:
        """Prompts ``index``, with only the padding they need."""
        lengths = [self.lengths[i] for i in index]
        rows = self.ids[torch.tensor(list(index), device=self.ids.device)]
        return PromptBatch(rows[:, self.width - max(lengths) :], lengths)

    def prompt(self, i: int) -> torch.Tensor:
        return self.ids[i, self.width - self.lengths[i] :]


def _int_ids(x, what: str) -> torch.Tensor:
    if torch.is_tensor(x):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{what} must hold integer token ids, got dtype {x.dtype}")
        return x.long()
    if isinstance(x, Sequence) and not isinstance(x, str):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
            raise TypeError(f"{what} must be a list of integer token ids")
        return torch.tensor(list(x), dtype=torch.long)
    raise TypeError(
        f"{what} must be a LongTensor, a list of token ids or a list of prompts, "
        f"got {type(x).__name__}"
    )


def prompt_batch(input_ids, attention_mask=None, pad_token_id: int = 0, device=None) -> PromptBatch:
    """Normalize the prompt arguments every sampler takes into a :class:`PromptBatch`.

    ``input_ids``: one prompt (1-d tensor or list of ids), a (B, P) tensor, a list of
    prompts of any lengths, or a tokenizer's ``BatchEncoding`` / a dict with
    ``input_ids`` (and ``attention_mask``). With an ``attention_mask`` each row's
    tokens are the positions marked 1, which must be contiguous: left- and right-padded
    batches both work (right padding is moved to the left). A 1-d prompt or a batch of
    one is ``single``.
    """
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise TypeError("the prompt mapping has no 'input_ids'")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    listed = isinstance(input_ids, Sequence) and not isinstance(input_ids, str) and input_ids
    if listed and not all(isinstance(v, int) and not isinstance(v, bool) for v in input_ids):
        rows = [_int_ids(r, "each prompt") for r in input_ids]
        if any(r.dim() != 1 for r in rows):
            raise ValueError("each prompt of a list must be a 1-d sequence of token ids")
        if attention_mask is not None:  # e.g. a BatchEncoding without tensors
            if len(attention_mask) != len(rows):
                raise ValueError(
                    f"attention_mask has {len(attention_mask)} rows for {len(rows)} prompts"
                )
            pairs = enumerate(zip(rows, attention_mask, strict=True))
            rows = [_unmask(i, r, m) for i, (r, m) in pairs]
        return _pack(rows, pad_token_id, device, single=len(rows) == 1)
    ids = _int_ids(input_ids, "input_ids")
    if ids.dim() not in (1, 2) or ids.shape[-1] < 1 or ids.numel() == 0:
        raise ValueError(
            "input_ids must be a non-empty prompt of shape (prompt_len,) or (batch, prompt_len), "
            f"got shape {tuple(ids.shape)}"
        )
    single = ids.dim() == 1 or ids.shape[0] == 1
    ids = ids if ids.dim() == 2 else ids[None]
    if attention_mask is None:
        return PromptBatch(_to(ids, device), [ids.shape[1]] * ids.shape[0], single)
    mask = torch.as_tensor(attention_mask)
    if mask.dim() == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}"
        )
    pairs = enumerate(zip(ids, mask.cpu(), strict=True))
    rows = [_unmask(i, r, m) for i, (r, m) in pairs]
    return _pack(rows, pad_token_id, device, single)


def _unmask(i: int, row: torch.Tensor, mask) -> torch.Tensor:
    """The tokens of prompt ``i``: the positions its mask marks 1, which must be one run."""
    m = torch.as_tensor(mask).bool().cpu()
    if m.shape != row.shape:
        raise ValueError(
            f"prompt {i}: attention_mask has {m.numel()} positions for {row.numel()} tokens"
        )
    on = torch.nonzero(m).flatten()
    if on.numel() == 0:
        raise ValueError(f"prompt {i} is empty: its attention_mask is all 0")
    if on[-1] - on[0] + 1 != on.numel():
        raise ValueError(
            f"prompt {i}: its attention_mask has padding between tokens; a row must be "
            "one run of 1s (left or right padding)"
        )
    return row[int(on[0]) : int(on[-1]) + 1]


def _pack(rows: list[torch.Tensor], pad: int, device, single: bool) -> PromptBatch:
    if any(r.numel() == 0 for r in rows):
        raise ValueError("every prompt must hold at least one token")
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.numel() :] = r.cpu()
    return PromptBatch(_to(ids, device), [r.numel() for r in rows], single)


def _to(x: torch.Tensor, device) -> torch.Tensor:
    return x if device is None else x.to(device)


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
