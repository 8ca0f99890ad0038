"""Apply the training-free state-collapse mitigations to a loaded Mamba-2 model.

from longseq.collapse import apply_mitigation, parse_mitigation
apply_mitigation(model, parse_mitigation("forget:0.9999,0.75"))   # every layer
apply_mitigation(model, SSMControl(window=256), layers=[0, 1])
apply_mitigation(model, SSMControl(dt_scale=0.5, b_clip=1.0), layers=[3])
clear_mitigations(model)

A `transformers` ``Mamba2ForCausalLM`` is accepted wherever a model is: the toolkit runs
our Mamba-2 over its parameters (the same tensors, see `as_mamba2`); the mitigated model
is the one returned (the transformers object's own forward is unchanged).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch

from longseq.models.mamba2 import Mamba2ForCausalLM, Mamba2Mixer, SSMControl

#: paper values for "forget more, remember less" (lambda_alpha on the decay, lambda_B on B)
PAPER_DECAY_SCALE, PAPER_B_SCALE = 0.9999, 0.75


#: transformers model -> our Mamba-2 over its parameters (one per model, so that a
#: mitigation set through one call is seen by the next)
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_mamba2(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself, or for a `transformers` ``Mamba2ForCausalLM`` our Mamba-2 over
    its parameters (built once per model, without copying a weight)."""
    if isinstance(model, Mamba2ForCausalLM):
        return model
    if getattr(getattr(model, "config", None), "model_type", None) != "mamba2":
        return model
    view = _VIEWS.get(model)
    if view is None:
        view = _VIEWS[model] = Mamba2ForCausalLM.from_transformers(model)
    return view


def mixers(model: torch.nn.Module) -> list[Mamba2Mixer]:
    found = [m for m in as_mamba2(model).modules() if isinstance(m, Mamba2Mixer)]
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        raise TypeError(
            f"{type(model).__name__}{f' (model_type {kind!r})' if kind else ''} has no "
            "Mamba-2 mixers to change: pass longseq's or transformers' Mamba2ForCausalLM"
        )
    return found


def apply_mitigation(
    model: torch.nn.Module, control: SSMControl | None, layers: Iterable[int] | None = None
) -> torch.nn.Module:
    """Set ``control`` on the mixers of ``layers`` (all when None); None clears them.
    Returns the model to run: ``model``, or for a `transformers` Mamba-2 our Mamba-2
    over its weights (see `as_mamba2`)."""
    ms = mixers(model)
    idx = range(len(ms)) if layers is None else list(layers)
    for i in idx:
        if not 0 <= i < len(ms):
            raise ValueError(f"layer {i} out of range: the model has {len(ms)} Mamba-2 layers")
        ms[i].control = control
    return as_mamba2(model)


def clear_mitigations(model: torch.nn.Module) -> torch.nn.Module:
    return apply_mitigation(model, None)


def parse_mitigation(spec: str | None) -> SSMControl | None:
    """``none`` | ``forget[:DECAY_SCALE[,B_SCALE]]`` | ``norm:BOUND`` | ``window:TOKENS``
    | ``dt:SCALE`` | ``a:SCALE`` | ``bclip:VALUE``.

    ``forget`` alone uses the paper's values (0.9999, 0.75); ``dt`` scales dt after the
    softplus, ``a`` scales A, ``bclip`` clamps B to [-VALUE, VALUE]."""
    if spec is None or spec in ("", "none"):
        return None
    kind, _, arg = spec.partition(":")
    try:
        if kind == "forget":
            vals = [float(v) for v in arg.split(",")] if arg else []
            decay = vals[0] if vals else PAPER_DECAY_SCALE
            b = vals[1] if len(vals) > 1 else PAPER_B_SCALE
            return SSMControl(decay_scale=decay, b_scale=b)
        if kind == "norm":
            return SSMControl(state_bound=float(arg))
        if kind == "window":
            return SSMControl(window=int(arg))
        if kind == "dt":
            return SSMControl(dt_scale=float(arg))
        if kind == "a":
            return SSMControl(a_scale=float(arg))
        if kind == "bclip":
            return SSMControl(b_clip=float(arg))
    except ValueError as e:
        raise ValueError(f"bad mitigation {spec!r}: {e}") from e
    raise ValueError(
        f"unknown mitigation {spec!r}: use none, forget[:DECAY,B], norm:BOUND, window:TOKENS, "
        "dt:SCALE, a:SCALE or bclip:VALUE"
    )
