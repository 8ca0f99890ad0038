"""Stochastic layer-wise token shuffle (ShuffleMamba), as a plug-in for any block stack,
and stochastic depth (drop-path), the regularizer it is trained beside.

A layer the models build on (``Vim``, ``ViT``); :mod:`longseq.shuffle` re-exports it with
the training and the experiment.

During training, layer l of L (0-based) fires with probability

    p_l = p_max * l / (L - 1)          ("linear": torch.linspace(0, p_max, L), deeper
                                        layers more often; the authors' default)
    p_l = 0 for l = 0, else p_max      ("constant": [0] + [p_max] * (L - 1), the
                                        authors' constant variant)
    p_l = p_max                        ("uniform": every layer, the first included)

once per forward. When it fires, one random permutation of the token axis (shared
over the batch) is applied to every stream the block takes (hidden states and, for
blocks that carry it separately, the residual stream; the class token is just
another token), the block runs, and the inverse permutation restores the order for
the next layer. In eval mode nothing is shuffled, so inference is exactly the plain
model at no extra cost. The plug-in has no parameters.

Drop-path (:class:`DropPath`) zeroes a block's residual branch for a random subset of
the samples in a batch and scales the kept ones by 1 / (1 - rate); block l of L gets the
rate ``drop_path_rates(L, rate)[l] = rate * l / (L - 1)`` (timm's and Vim's rule).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

SCHEDULES = ("linear", "constant", "uniform")


def shuffle_probabilities(depth: int, p_max: float, schedule: str = "linear") -> list[float]:
    """Per-layer shuffle probabilities for a stack of ``depth`` layers (see the module
    docstring for the three schedules)."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not 0.0 <= p_max <= 1.0:
        raise ValueError(f"p_max must be in [0, 1], got {p_max!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "uniform":
        return [float(p_max)] * depth
    if schedule == "constant":
        return [0.0] + [float(p_max)] * (depth - 1)
    return _linear(depth, p_max)


def _linear(depth: int, top: float) -> list[float]:
    """``torch.linspace(0, top, depth)`` as Python floats (``[0.0]`` for one layer)."""
    if depth == 1:
        return [0.0]
    return [top * layer / (depth - 1) for layer in range(depth)]


def drop_path_rates(depth: int, rate: float) -> list[float]:
    """Drop-path rate of each of ``depth`` blocks: ``rate * l / (depth - 1)``, 0 for the
    first block and ``rate`` for the last (timm's and Vim's linear decay rule)."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop-path rate must be in [0, 1), got {rate!r}")
    return _linear(depth, rate)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: in training, each sample's branch output is
    zeroed with probability ``rate`` and otherwise scaled by 1 / (1 - rate), so its
    expectation is unchanged; in eval mode the branch passes through untouched."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        keep = 1.0 - self.rate
        shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)  # one draw per sample
        mask = torch.empty(shape, dtype=branch.dtype, device=branch.device).bernoulli_(keep)
        return branch * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


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
        return max(self.probs)

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
