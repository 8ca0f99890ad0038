"""Run a Mamba-2 LM over very long inputs with memory that does not grow with length.

Segments of the input go through the model one after another, the model's cache
carrying everything between them: the recurrent state, or, under the sliding-window
mitigation, the window state and each layer's ring buffer of its last r SSM inputs.
Either way the cost per token and the memory do not depend on how much came before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from longseq.collapse.mitigations import as_mamba2
from longseq.lm import model_device


def check_vocabulary(model, ids: torch.Tensor) -> None:
    """A one-line ValueError when a token id is outside the model's vocabulary."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None or not len(ids):
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(
            f"token id {bad} is outside the model's vocabulary (ids 0 to {vocab - 1}): "
            "encode the text with the model's own tokenizer"
        )


@torch.no_grad()
def stream_logits(
    model, ids: torch.Tensor, segment: int = 1024, on_segment: Callable | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, logits of ids[start : start + segment]) for consecutive segments of a
    1-d token tensor; ``on_segment(start, cache)`` is called after each one."""
    model = as_mamba2(model)
    check_vocabulary(model, ids)
    model.eval()
    ids = ids.to(model_device(model)).reshape(-1)
    cache = None
    for start in range(0, len(ids), segment):
        out = model(ids[start : start + segment][None], cache=cache, use_cache=True)
        cache = out.cache
        if on_segment is not None:
            on_segment(start, cache)
        yield start, out.logits[0]


@torch.no_grad()
def per_position_nll(model, ids: torch.Tensor, segment: int = 1024) -> torch.Tensor:
    """Negative log-likelihood of every token after the first (float32, on the CPU)."""
    ids = ids.reshape(-1)
    out = []
    for start, logits in stream_logits(model, ids, segment):
        out.append(segment_nll(logits, ids[start + 1 : start + 1 + len(logits)]).cpu())
    return torch.cat(out)


def segment_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL of ``targets`` under the first len(targets) rows of ``logits`` (float32)."""
    lp = logits[: len(targets)].float().log_softmax(-1)
    return -lp.gather(-1, targets.to(logits.device)[:, None])[:, 0]


@torch.no_grad()
def greedy_continue(model, ids: torch.Tensor, n: int, segment: int = 4096) -> list[int]:
    """Greedy decoding of ``n`` tokens after a 1-d prompt: the prompt is streamed in
    segments, then each new token is one recurrent step."""
    model = as_mamba2(model)
    device = model_device(model)
    held: dict = {}
    for _, seg_logits in stream_logits(model, ids, segment, lambda _, c: held.update(cache=c)):
        logits = seg_logits[-1]
    cache, new = held["cache"], []
    for _ in range(n):
        new.append(int(logits.argmax()))
        out = model(torch.tensor([[new[-1]]], device=device), cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[0, -1]
    return new
