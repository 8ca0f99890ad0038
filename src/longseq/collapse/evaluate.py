"""Passkey retrieval and per-position loss far beyond the training length."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from longseq.collapse.diagnostics import state_statistics
from longseq.collapse.mitigations import (
    apply_mitigation,
    clear_mitigations,
    mixers,
    parse_mitigation,
)
from longseq.collapse.streaming import greedy_continue, per_position_nll
from longseq.data.text import ByteTokenizer, passkey_prompt, stdlib_corpus
from longseq.models.mamba2 import SSMControl
from longseq.utils import progress_bar


@dataclass
class PasskeyResult:
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]  # [length][depth]
    trials: int

    def to_dict(self) -> dict:
        return asdict(self)

    def mean_by_length(self) -> list[float]:
        return [float(np.mean(row)) for row in self.accuracy]


def passkey_accuracy(
    model,
    lengths: list[int],
    depths: list[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> PasskeyResult:
    """Greedy-decode the 5-digit key after prompts of each length and needle depth."""
    if not lengths or min(lengths) < 200:
        raise ValueError(f"lengths must be >= 200 bytes (the prompt's fixed text), got {lengths}")
    tok = ByteTokenizer()
    rng = np.random.default_rng(seed)
    acc = []
    with progress_bar("passkey", len(lengths) * len(depths) * trials, progress) as advance:
        for length in lengths:
            row = []
            for depth in depths:
                ok = 0
                for _ in range(trials):
                    s = passkey_prompt(length, depth, rng)
                    ok += s.key in tok.decode(greedy_continue(model, s.ids, 7))
                    advance()
                row.append(ok / trials)
            acc.append(row)
    return PasskeyResult(list(lengths), list(depths), acc, trials)


def passkey_calibration(length: int, n: int = 32, seed: int = 12345) -> list[torch.Tensor]:
    """``n`` passkey prompts of ``length`` bytes at random depths, with their own keys
    (another seed than `passkey_accuracy`'s prompts): inputs to calibrate state bounds on."""
    rng = np.random.default_rng(seed)
    return [passkey_prompt(length, float(rng.uniform()), rng).ids for _ in range(n)]


def long_text(length: int, prompt: str = "text") -> torch.Tensor:
    """``length`` bytes of held-out stdlib source, or of "\\n" repeated (``prompt="newline"``)."""
    if prompt == "newline":
        return torch.full((length,), ord("\n"), dtype=torch.long)
    if prompt != "text":
        raise ValueError(f"prompt must be 'text' or 'newline', got {prompt!r}")
    corpus = stdlib_corpus("val")
    reps = math.ceil(length / len(corpus))
    return torch.from_numpy(np.tile(corpus, reps)[:length].astype(np.int64))


@dataclass
class LossCurve:
    train_length: int
    edges: list[int]  # log-spaced position bins
    mean_nll: list[float]  # per bin

    def to_dict(self) -> dict:
        return asdict(self)

    def mean_between(self, lo: int, hi: int) -> float:
        vals = [
            v
            for a, b, v in zip(self.edges[:-1], self.edges[1:], self.mean_nll, strict=True)
            if a >= lo and b <= hi and not math.isnan(v)
        ]
        return float(np.mean(vals)) if vals else float("nan")


def loss_curve(
    model, ids: torch.Tensor, train_length: int, bins_per_octave: int = 4, segment: int = 1024
) -> LossCurve:
    """Per-position NLL of ``ids`` averaged in log-spaced bins (memory flat in length)."""
    nll = per_position_nll(model, ids, segment)
    n = len(nll)
    edges = sorted(
        {
            int(round(2 ** (k / bins_per_octave)))
            for k in range(int(bins_per_octave * math.log2(max(n, 2))) + 1)
        }
        | {n}
    )
    edges = [0] + [e for e in edges if e <= n]
    means = [
        float(nll[a:b].mean()) if b > a else float("nan")
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return LossCurve(train_length, edges, means)


def calibrated_controls(
    model,
    kind: str,
    train_length: int,
    calibration_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    every: int = 16,
) -> list:
    """Per-layer mitigations set from the model itself: ``window`` = the training
    length; ``norm`` = each layer's largest head-state norm at any position (read every
    ``every`` tokens) within the first ``train_length`` tokens of each calibration
    input (default: held-out text), since the state never needs to be larger than it
    is inside the training length."""
    n_layers = len(mixers(model))
    if kind == "window":
        return [SSMControl(window=train_length)] * n_layers
    if kind != "norm":
        raise ValueError(f"kind must be 'norm' or 'window', got {kind!r}")
    if calibration_ids is None:
        calibration_ids = [long_text(train_length)]
    elif isinstance(calibration_ids, torch.Tensor):
        calibration_ids = [calibration_ids]
    if not calibration_ids or min(len(ids) for ids in calibration_ids) < 1:
        raise ValueError("calibration_ids must hold at least one non-empty input")
    clear_mitigations(model)
    bounds = torch.zeros(n_layers)
    for ids in calibration_ids:
        norm = state_statistics(model, ids[:train_length], segment=every).tensor("norm")
        bounds = torch.maximum(bounds, norm.amax(dim=(0, 2)))  # over positions and heads
    return [SSMControl(state_bound=float(b)) for b in bounds]


def apply_named_mitigation(
    model,
    spec: str,
    train_length: int | None = None,
    calibration_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Clear the model's mitigations, then apply ``spec``: anything `parse_mitigation`
    reads, or ``norm`` / ``window`` without a value, calibrated per layer from the
    model at ``train_length`` (see `calibrated_controls`)."""
    clear_mitigations(model)
    if spec in ("norm", "window"):
        if not train_length:
            raise ValueError(
                f"mitigation {spec!r} needs a value: no training length to calibrate it from"
            )
        for layer, ctl in enumerate(
            calibrated_controls(model, spec, train_length, calibration_ids)
        ):
            apply_mitigation(model, ctl, [layer])
        return model
    return apply_mitigation(model, parse_mitigation(spec))
