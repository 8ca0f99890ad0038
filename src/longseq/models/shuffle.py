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

Two ways to use it, one implementation: :class:`LayerwiseShuffle` holds a block list
and runs it (the project's ``Vim`` and ``ViT``); :func:`patch` puts the same shuffle on
a model's own block list in place, by wrapping each block's ``forward`` on the instance
(as ``accelerate`` attaches its hooks), so a transformers ViT or a ``mamba_ssm`` Vim
keeps its forward, its module tree and its state-dict keys::

    shuffle = patch(model, "vit.layers", p_max=0.5)   # transformers ViTForImageClassification

Drop-path (:class:`DropPath`) zeroes a block's residual branch for a random subset of
the samples in a batch and scales the kept ones by 1 / (1 - rate); block l of L gets the
rate ``drop_path_rates(L, rate)[l] = rate * l / (L - 1)`` (timm's and Vim's rule).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

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

    Each block is called with the previous block's output (a tuple output, e.g. Vim's
    ``(hidden, residual)``, is spread over the next block's positional arguments) and
    with the keyword arguments given to the stack, unchanged::

        stack = LayerwiseShuffle(blocks, p_max=0.5)
        hidden = stack(tokens)                        # block(hidden) -> hidden
        hidden, residual = stack(tokens)              # Vim: block(hidden, residual=None)
        hidden = stack(tokens, attention_mask=None)   # keyword arguments reach every block

    When a block fires, every per-token tensor among its arguments is permuted along the
    token axis, and every per-token tensor in its output (a tensor, or one inside a
    tuple, list or dict) is put back in the original order. Anything else (``None``, a
    head mask, a cache, a flag) passes through untouched. Per-token tensors are told
    apart by their shape against the first argument, the hidden states ``(batch, tokens,
    ...)`` with the tokens on ``token_dim``:

    - the same shape (the hidden states, a residual stream): the token axis;
    - the shape up to the token axis, ``(batch, tokens)``: a padding mask, position ids;
    - ``(batch or 1, ..., tokens, tokens)``: an attention mask or attention map, both
      of its last two axes.

    ``token_args`` (names or positions of the block's arguments) lists the per-token
    arguments instead; they must have one of the shapes above (``None`` passes).

    The class token is one of the tokens: it moves with the permutation inside the
    block and is back at its index in the output, as the method prescribes.

    To shuffle a model's own block list in place (its module tree and state-dict keys
    unchanged), use :func:`patch`; the stack it returns drives the blocks' wrapped
    ``forward``.
    """

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        p_max: float = 0.0,
        schedule: str = "linear",
        token_dim: int = 1,
        generator: torch.Generator | None = None,
        token_args: Sequence[str | int] | None = None,
    ) -> None:
        super().__init__()
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("blocks is empty: give at least one block")
        if not isinstance(token_dim, int) or token_dim < 1:
            raise ValueError(f"token_dim must be an integer >= 1 (batch first), got {token_dim!r}")
        if token_args is not None and (
            isinstance(token_args, str | int)
            or not all(isinstance(a, str | int) for a in token_args)
        ):
            raise TypeError(
                f"token_args must be a list of argument names or positions, got {token_args!r}"
            )
        self.schedule = schedule
        self.probs = shuffle_probabilities(len(self.blocks), p_max, schedule)
        self.token_dim = token_dim
        self.token_args = None if token_args is None else tuple(token_args)
        self.generator = generator
        self.fired: list[bool] = [False] * len(self.blocks)  # last call of each block
        self._patched: list = []  # set by patch(): (block, its instance forward before)
        self._arg_names: dict[int, list[str]] = {}

    @property
    def p_max(self) -> float:
        return max(self.probs)

    def _draw(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def forward(self, *args, **kwargs):
        for i, block in enumerate(self.blocks):
            if self._patched:  # the blocks' wrapped forward shuffles
                out = block(*args, **kwargs)
            else:  # kwargs stay in token order for the next block
                a, kw, undo = self._shuffle_inputs(i, block, args, kwargs)
                out = self._restore(block(*a, **kw), undo)
            args = tuple(out) if isinstance(out, tuple) else (out,)
        return args if len(args) > 1 else args[0]

    # -- the shuffle of one block call: inputs before, outputs after --------------------

    def _shuffle_inputs(self, i: int, block: nn.Module, args: tuple, kwargs: dict):
        """Decide whether block ``i`` fires; if so, permute its per-token arguments.
        Returns (args, kwargs, undo), ``undo`` being None or (inverse permutation,
        hidden-state shape) for :meth:`_restore`."""
        p = self.probs[i]
        fire = block.training and p > 0 and self._draw() < p
        self.fired[i] = fire
        if not fire:
            return args, kwargs, None
        hidden = args[0] if args else kwargs.get(self._names(i, block)[0])
        if not isinstance(hidden, torch.Tensor) or hidden.dim() <= self.token_dim:
            raise TypeError(
                f"block {i} ({type(block).__name__}): its first argument must be the hidden "
                f"states, a tensor with tokens on axis {self.token_dim}; got "
                f"{_describe(hidden)}"
            )
        ref = tuple(hidden.shape)
        n = ref[self.token_dim]
        perm = torch.randperm(n, generator=self.generator).to(hidden.device)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n, device=perm.device)
        if self.token_args is None:
            args = tuple(_permute(a, _token_axes(a, ref, self.token_dim), perm) for a in args)
            kwargs = {
                k: _permute(v, _token_axes(v, ref, self.token_dim), perm) for k, v in kwargs.items()
            }
            return args, kwargs, (inv, ref)
        names = self._names(i, block)
        args, kwargs = list(args), dict(kwargs)
        for which in self.token_args:
            if isinstance(which, int):
                if which >= len(args):
                    continue  # not given: its default (None, usually) passes
                name, value = f"argument {which}", args[which]
            else:
                name, value = which, None
                if which in kwargs:
                    value = kwargs[which]
                elif which in names and names.index(which) < len(args):
                    value = args[names.index(which)]
            if value is None:
                continue
            axes = _token_axes(value, ref, self.token_dim)
            if axes is None:
                raise ValueError(
                    f"block {i}: token_args names {name!r}, but it is {_describe(value)}, not "
                    f"a per-token tensor for hidden states of shape {ref}"
                )
            value = _permute(value, axes, perm)
            if isinstance(which, int):
                args[which] = value
            elif which in kwargs:
                kwargs[which] = value
            else:
                args[names.index(which)] = value
        return tuple(args), kwargs, (inv, ref)

    def _restore(self, out, undo):
        """Put every per-token tensor of a block's output back in token order."""
        if undo is None:
            return out
        inv, ref = undo
        if isinstance(out, torch.Tensor):
            return _permute(out, _token_axes(out, ref, self.token_dim), inv)
        if isinstance(out, tuple | list):
            items = [self._restore(o, undo) for o in out]
            return type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
        if isinstance(out, dict):  # also transformers' ModelOutput
            for k, v in list(out.items()):
                out[k] = self._restore(v, undo)
            return out
        return out

    def _names(self, i: int, block: nn.Module) -> list[str]:
        """The names of block ``i``'s positional parameters, in order."""
        if i not in self._arg_names:
            params = inspect.signature(block.forward).parameters.values()
            self._arg_names[i] = [
                p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        return self._arg_names[i]

    # -- patch(): the shuffle inside each block's forward ---------------------------------

    def _wrap(self, i: int, block: nn.Module) -> None:
        """Make block ``i`` shuffle around its own forward. An instance attribute, so
        the class, the parameters and the state-dict keys stay as they are, and hooks
        others put on the block see its arguments and output in token order."""
        self._names(i, block)  # the signature of the plain forward
        before = vars(block).get("forward")  # one another tool put on the instance
        self._patched.append((block, before))
        block.forward = _ShuffledForward(self, i, block, before)

    def remove(self) -> None:
        """Take the shuffle off the blocks :func:`patch` put it on (nothing else changes)."""
        for block, before in self._patched:
            if before is None:
                del block.forward
            else:
                block.forward = before
        self._patched = []
        if getattr(self.blocks, _PATCHED, None) is self:
            object.__delattr__(self.blocks, _PATCHED)


_PATCHED = "_longseq_layerwise_shuffle"


class _ShuffledForward:
    """Block ``i``'s forward with the shuffle around it, as :func:`patch` puts it on the
    block instance. An object, not a closure, so that ``copy.deepcopy`` of the model (an
    EMA copy, say) and pickling give a copy that runs its own blocks."""

    def __init__(self, stack: LayerwiseShuffle, i: int, block: nn.Module, before) -> None:
        self.stack, self.i, self.block, self.before = stack, i, block, before
        self.__wrapped__ = before if before is not None else type(block).forward
        self.__doc__ = self.__wrapped__.__doc__

    def __call__(self, *args, **kwargs):
        args, kwargs, undo = self.stack._shuffle_inputs(self.i, self.block, args, kwargs)
        if self.before is not None:
            out = self.before(*args, **kwargs)
        else:
            out = type(self.block).forward(self.block, *args, **kwargs)
        return self.stack._restore(out, undo)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return "None" if x is None else f"a {type(x).__name__}"


def _token_axes(t, ref: tuple[int, ...], token_dim: int) -> tuple[int, ...] | None:
    """The token axes of ``t`` if it is a per-token tensor for hidden states of shape
    ``ref`` (see :class:`LayerwiseShuffle`), else None."""
    if not isinstance(t, torch.Tensor):
        return None
    shape, n = tuple(t.shape), ref[token_dim]
    if shape == ref or shape == ref[: token_dim + 1]:
        return (token_dim,)
    if t.dim() >= 3 and shape[-2:] == (n, n) and shape[0] in (1, ref[0]):
        return (t.dim() - 2, t.dim() - 1)
    return None


def _permute(t, axes: tuple[int, ...] | None, perm: torch.Tensor):
    if axes is None:
        return t
    for axis in axes:
        t = t.index_select(axis, perm.to(t.device))
    return t


def patch(
    model: nn.Module,
    blocks_attr: str | None = None,
    p_max: float = 0.5,
    schedule: str = "linear",
    token_dim: int = 1,
    generator: torch.Generator | None = None,
    token_args: Sequence[str | int] | None = None,
) -> LayerwiseShuffle:
    """Put the layer-wise shuffle on ``model``'s block list in place.

    ``blocks_attr`` is the dotted path of the list (``"vit.layers"`` for a
    transformers ``ViTForImageClassification``, ``"layers"`` for a Vim from
    ``mamba_ssm``, ``"blocks"`` for a timm ViT, whose ``nn.Sequential`` works too); left
    out, the model's only non-empty ``nn.ModuleList`` is taken.

    The model's own forward keeps calling its blocks. Each block's ``forward`` is
    wrapped on the instance: when the block fires (training mode, one draw per call with
    the schedule's probability) its per-token arguments are permuted, the block runs, and
    its output is put back in token order, so hooks on the block (transformers' output
    recording, for one) see arguments and outputs in token order. Nothing is added to
    the model: its modules, parameters and state-dict keys are unchanged, so checkpoints
    saved before or after load either way, and in eval mode the model computes exactly
    what it did. ``p_max`` defaults to the paper's 0.5 (ShuffleMamba-B); the other
    arguments are :class:`LayerwiseShuffle`'s.

    Returns the :class:`LayerwiseShuffle` that drives the blocks (``.fired`` tells which
    blocks fired on their last call; ``.remove()`` takes the shuffle off).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    blocks = _block_list(model, blocks_attr)
    if getattr(blocks, _PATCHED, None) is not None:
        raise ValueError(
            "these blocks already carry a layer-wise shuffle; call .remove() on the "
            "object patch() returned before patching again"
        )
    for m in model.modules():
        if isinstance(m, LayerwiseShuffle) and m.blocks is blocks and m.p_max > 0:
            raise ValueError(
                f"these blocks already run in a LayerwiseShuffle (p_max={m.p_max:g}); set "
                "its p_max to 0 (e.g. shuffle_p_max=0 in the model's config) to patch them"
            )
    stack = LayerwiseShuffle(blocks, p_max, schedule, token_dim, generator, token_args)
    for i, block in enumerate(blocks):
        stack._wrap(i, block)
    object.__setattr__(blocks, _PATCHED, stack)  # a plain attribute: not a submodule
    return stack


def _block_list(model: nn.Module, blocks_attr: str | None) -> nn.ModuleList | nn.Sequential:
    """The block list at ``blocks_attr`` (an nn.ModuleList or nn.Sequential), or the
    model's only non-empty nn.ModuleList; ValueError / TypeError naming the problem and
    the lists the model has."""
    named = [(n, m) for n, m in model.named_modules() if len(getattr(m, "_modules", ())) > 0]
    lists = [n for n, m in named if isinstance(m, nn.ModuleList)]
    seqs = [n for n, m in named if isinstance(m, nn.Sequential)]
    found = ", ".join(repr(n) for n in lists + seqs) or "none"
    if blocks_attr is None:
        if len(lists) != 1:
            raise ValueError(
                f"{type(model).__name__} has {len(lists)} non-empty nn.ModuleLists "
                f"(block lists: {found}); say which holds the blocks with blocks_attr="
            )
        return model.get_submodule(lists[0])
    if not isinstance(blocks_attr, str) or not blocks_attr:
        raise TypeError(f"blocks_attr must be a dotted attribute path, got {blocks_attr!r}")
    obj = model
    for depth, part in enumerate(blocks_attr.split(".")):
        if not hasattr(obj, part):
            where = ".".join(blocks_attr.split(".")[:depth]) or "the model"
            raise ValueError(
                f"blocks_attr={blocks_attr!r}: {where} ({type(obj).__name__}) has no "
                f"attribute {part!r}; the model's block lists: {found}"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, nn.ModuleList | nn.Sequential):
        raise TypeError(
            f"blocks_attr={blocks_attr!r} is a {type(obj).__name__}, not an nn.ModuleList "
            f"(or nn.Sequential) of blocks; the model's block lists: {found}"
        )
    if len(obj) == 0:
        raise ValueError(f"blocks_attr={blocks_attr!r} is an empty block list")
    return obj
