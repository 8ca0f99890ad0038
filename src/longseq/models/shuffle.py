"""Stochastic layer-wise token shuffle (ShuffleMamba), as a plug-in for any block stack.

A layer the models build on (``Vim``, ``ViT``); :mod:`longseq.shuffle` re-exports it with
the training and the experiment.

During training, layer l of L (0-based) fires with probability

    p_l = p_max * l / (L - 1)      ("linear", deeper layers more often; the paper's choice)
    p_l = p_max                    ("constant", the ablation)

once per forward. When it fires, one random permutation of the token axis (shared
over the batch) is applied to every stream the block takes (hidden states and, for
blocks that carry it separately, the residual stream; the class token is just
another token), the block runs, and the inverse permutation restores the order for
the next layer. In eval mode nothing is shuffled, so inference is exactly the plain
model at no extra cost. The plug-in has no parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

SCHEDULES = ("linear", "constant")


def shuffle_probabilities(depth: int, p_max: float, schedule: str = "linear") -> list[float]:
    """Per-layer shuffle probabilities for a stack of ``depth`` layers."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not 0.0 <= p_max <= 1.0:
        raise ValueError(f"p_max must be in [0, 1], got {p_max!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return [float(p_max)] * depth
    if depth == 1:
        return [0.0]
    return [p_max * layer / (depth - 1) for layer in range(depth)]


class LayerwiseShuffle(nn.Module):
    """Run ``blocks`` in order, shuffling the tokens around each one as scheduled.

    Each block is called as ``block(*streams)`` where every stream is a tensor with
    the token axis at ``token_dim`` (default 1: (batch, tokens, ...)); it may return
    one tensor or a tuple of tensors (e.g. ``(hidden, residual)``), all of which are
    un-shuffled. Works for the project's Vim blocks and for any residual block such
    as `timm`'s ViT ``Block``.
    """

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        p_max: float = 0.0,
        schedule: str = "linear",
        token_dim: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.schedule = schedule
        self.probs = shuffle_probabilities(len(self.blocks), p_max, schedule)
        self.token_dim = token_dim
        self.generator = generator
        self.fired: list[bool] = [False] * len(self.blocks)  # last forward, for inspection

    @property
    def p_max(self) -> float:
        return max(self.probs) if self.schedule == "linear" else self.probs[0]

    def _draw(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def forward(self, *streams: torch.Tensor):
        for i, block in enumerate(self.blocks):
            fire = self.training and self.probs[i] > 0 and self._draw() < self.probs[i]
            self.fired[i] = fire
            if not fire:
                out = block(*streams)
            else:
                n = streams[0].shape[self.token_dim]
                perm = torch.randperm(n, generator=self.generator).to(streams[0].device)
                inv = torch.empty_like(perm)
                inv[perm] = torch.arange(n, device=perm.device)
                out = block(*(s.index_select(self.token_dim, perm) for s in streams))
                if isinstance(out, tuple):
                    out = tuple(o.index_select(self.token_dim, inv) for o in out)
                else:
                    out = out.index_select(self.token_dim, inv)
            streams = out if isinstance(out, tuple) else (out,)
        return streams if len(streams) > 1 else streams[0]
