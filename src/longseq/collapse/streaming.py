"""Run a Mamba-2 LM over very long inputs with memory that does not grow with length.

Without a sliding window the recurrent state is carried from segment to segment by
the model's cache. With the sliding-window mitigation the model keeps no state: each
segment is run with the tokens before it that are still inside the model's receptive
field (layers x (window + d_conv - 1)), which gives exactly the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from longseq.collapse.mitigations import window_of
from longseq.lm import model_device


def receptive_context(model) -> int | None:
    w = window_of(model)
    if w is None:
        return None
    cfg = model.config
    return cfg.n_layer * (w + cfg.d_conv - 1)


@torch.no_grad()
def stream_logits(
    model, ids: torch.Tensor, segment: int = 1024, on_segment: Callable | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, logits of ids[start : start + segment]) for consecutive segments of a
    1-d token tensor; ``on_segment(start, cache)`` is called after each one."""
    model.eval()
    device = model_device(model)
    ids = ids.to(device).reshape(-1)
    ctx = receptive_context(model)
    cache = None
    for start in range(0, len(ids), segment):
        piece = ids[start : start + segment]
        if ctx is None:
            out = model(piece[None], cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits[0]
        else:
            lo = max(0, start - ctx)
            logits = model(ids[lo : start + len(piece)][None]).logits[0, start - lo :]
        if on_segment is not None:
            on_segment(start, cache)
        yield start, logits


@torch.no_grad()
def per_position_nll(model, ids: torch.Tensor, segment: int = 1024) -> torch.Tensor:
    """Negative log-likelihood of every token after the first (float32, on the CPU)."""
    ids = ids.reshape(-1)
    out = []
    for start, logits in stream_logits(model, ids, segment):
        targets = ids[start + 1 : start + 1 + len(logits)].to(logits.device)
        lp = logits[: len(targets)].float().log_softmax(-1)
        out.append(-lp.gather(-1, targets[:, None])[:, 0].cpu())
    return torch.cat(out)


@torch.no_grad()
def greedy_continue(model, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding of ``n`` tokens after a 1-d prompt, streaming the prompt."""
    ids = ids.reshape(-1)
    ctx = receptive_context(model)
    if ctx is None:
        device = model_device(model)
        state = {}
        for _, seg_logits in stream_logits(model, ids, 4096, lambda _, c: state.update(cache=c)):
            logits = seg_logits[-1]
        cache = state["cache"]
        new = []
        for _ in range(n):
            tok = int(logits.argmax())
            new.append(tok)
            out = model(torch.tensor([[tok]], device=device), cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[0, -1]
        return new
    seq = ids.tolist()
    device = model_device(model)
    for _ in range(n):
        tail = torch.tensor(seq[-(ctx + 1) :], device=device)
        seq.append(int(model(tail[None]).logits[0, -1].argmax()))
    return seq[len(ids) :]
