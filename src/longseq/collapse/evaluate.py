"""Passkey retrieval and per-position loss far beyond the training length.

Text reaches the model through its tokenizer: ``tokenizer`` is a
:class:`longseq.hub.TextCodec`, a `transformers` tokenizer, or None for a byte-level
model (tokens are UTF-8 bytes, as for the shipped models). Lengths count tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from longseq.collapse.diagnostics import state_statistics
from longseq.collapse.mitigations import (
    apply_mitigation,
    as_mamba2,
    clear_mitigations,
    mixers,
    parse_mitigation,
)
from longseq.collapse.streaming import greedy_continue, segment_nll, stream_logits
from longseq.data.text import (
    ByteTokenizer,
    passkey_fixed_length,
    passkey_prompt,
    stdlib_corpus,
)
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


def encoder(tokenizer=None) -> Callable[[str], list[int]]:
    """text -> token ids without special tokens: UTF-8 bytes when ``tokenizer`` is None."""
    if tokenizer is None:
        return lambda text: list(text.encode("utf-8"))
    if hasattr(tokenizer, "encode_plain"):  # TextCodec
        return tokenizer.encode_plain
    if hasattr(tokenizer, "all_special_ids"):  # a transformers tokenizer
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False))
    return lambda text: list(tokenizer.encode(text))


def decoder(tokenizer=None) -> Callable[[list[int]], str]:
    """token ids -> text (special tokens dropped)."""
    if tokenizer is None:
        return ByteTokenizer().decode
    if hasattr(tokenizer, "all_special_ids"):
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode


def passkey_min_length(tokenizer=None) -> int:
    """The shortest passkey prompt in ``tokenizer``'s tokens (its fixed text)."""
    return passkey_fixed_length(encoder(tokenizer))


def passkey_accuracy(
    model,
    lengths: list[int],
    depths: list[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 4,
    seed: int = 0,
    progress: bool = True,
    on_length: Callable[[int], object] | None = None,
    tokenizer=None,
) -> PasskeyResult:
    """Greedy-decode the 5-digit key after prompts of each length (in tokens) and needle
    depth. The prompts are built in ``tokenizer``'s tokens (None: bytes); the model
    generates as many tokens as the answer " KEY." takes in them and is right when the
    text they decode to holds the key.

    ``on_length(length)`` is called before the prompts of each length (to set a
    mitigation that depends on it); the prompts do not depend on it."""
    encode, decode = encoder(tokenizer), decoder(tokenizer)
    least = passkey_fixed_length(encode)
    if not lengths or min(lengths) < least:
        raise ValueError(
            f"lengths must be >= {least} tokens (the prompt's fixed text), got {list(lengths)}"
        )
    rng = np.random.default_rng(seed)
    acc = []
    with progress_bar("passkey", len(lengths) * len(depths) * trials, progress) as advance:
        for length in lengths:
            if on_length is not None:
                on_length(length)
            row = []
            for depth in depths:
                ok = 0
                for _ in range(trials):
                    s = passkey_prompt(length, depth, rng, encode)
                    answer = len(encode(f" {s.key}."))
                    ok += s.key in decode(greedy_continue(model, s.ids, answer))
                    advance()
                row.append(ok / trials)
            acc.append(row)
    return PasskeyResult(list(lengths), list(depths), acc, trials)


def passkey_calibration(
    length: int, n: int = 32, seed: int = 12345, tokenizer=None
) -> list[torch.Tensor]:
    """``n`` passkey prompts of ``length`` tokens at random depths, with their own keys
    (another seed than `passkey_accuracy`'s prompts): inputs to calibrate state bounds on."""
    rng = np.random.default_rng(seed)
    encode = encoder(tokenizer)
    return [passkey_prompt(length, float(rng.uniform()), rng, encode).ids for _ in range(n)]


def long_text(length: int, prompt: str = "text", tokenizer=None) -> torch.Tensor:
    """``length`` tokens of held-out stdlib source (``prompt="text"``), or of "\\n"
    repeated (``prompt="newline"``), in ``tokenizer``'s tokens (None: bytes)."""
    if prompt not in ("text", "newline"):
        raise ValueError(f"prompt must be 'text' or 'newline', got {prompt!r}")
    if prompt == "newline":
        return text_tokens("\n", length, tokenizer)
    corpus = stdlib_corpus("val")
    if tokenizer is None or getattr(tokenizer, "byte_level", False):
        reps = math.ceil(length / len(corpus))
        return torch.from_numpy(np.tile(corpus, reps)[:length].astype(np.int64))
    return text_tokens(corpus.tobytes().decode("utf-8", errors="replace"), length, tokenizer)


def text_tokens(text: str, length: int, tokenizer=None, piece: int = 1 << 16) -> torch.Tensor:
    """The first ``length`` tokens of ``text`` in ``tokenizer``'s tokens (None: bytes),
    the text repeated when it is shorter. A long text is encoded piece by piece (cut at
    line ends), only as far as needed."""
    encode = encoder(tokenizer)
    ids: list[int] = []
    start = 0
    while start < len(text) and len(ids) < length:
        end = min(len(text), start + piece)
        if end < len(text):  # cut after the last line end in the piece, if any
            end = text.rfind("\n", start, end) + 1 or end
        ids += encode(text[start:end])
        start = end
    if not ids:
        raise ValueError("the text encodes to no tokens")
    if len(ids) < length:
        ids = ids * math.ceil(length / len(ids))
    return torch.tensor(ids[:length], dtype=torch.long)


@dataclass
class LossCurve:
    """Mean NLL of the positions in log-spaced bins [edges[i], edges[i + 1]), and how
    many tokens each bin holds."""

    train_length: int | None  # None when not known
    edges: list[int]  # log-spaced position bins
    mean_nll: list[float]  # per bin
    counts: list[int]  # tokens per bin

    def to_dict(self) -> dict:
        return asdict(self)

    def mean_between(self, lo: int, hi: int, weighting: str = "token") -> float:
        """Mean NLL over the positions in [lo, hi) (bins that lie inside the range only):
        every token weighing the same (``weighting="token"``), or the plain mean of the
        bins' means (``"bins"``: every log-spaced bin weighing the same, so short
        distances count more)."""
        if weighting not in ("token", "bins"):
            raise ValueError(f"weighting must be 'token' or 'bins', got {weighting!r}")
        total = weight = 0.0
        for a, b, v, c in zip(
            self.edges[:-1], self.edges[1:], self.mean_nll, self.counts, strict=True
        ):
            if a >= lo and b <= hi and c:
                w = c if weighting == "token" else 1
                total += v * w
                weight += w
        return total / weight if weight else float("nan")


def log_bins(n: int, bins_per_octave: int = 4) -> list[int]:
    """Bin edges 0, 1, 2, ... 2^(k / bins_per_octave) ..., n: every power of two is an edge."""
    edges = {
        int(round(2 ** (k / bins_per_octave)))
        for k in range(int(bins_per_octave * math.log2(max(n, 2))) + 1)
    }
    return [0] + sorted(e for e in edges | {n} if 0 < e <= n)


def loss_curve(
    model,
    ids: torch.Tensor,
    train_length: int | None = None,
    bins_per_octave: int = 4,
    segment: int = 1024,
    progress: bool = False,
) -> LossCurve:
    """Per-position NLL of ``ids`` averaged in log-spaced bins, binned while streaming:
    memory does not grow with the length. ``train_length`` (if known) is recorded with
    the curve, for plots and tables."""
    ids = ids.reshape(-1)
    n = len(ids) - 1
    if n < 1:
        raise ValueError(f"a loss curve needs at least 2 tokens, got {len(ids)}")
    edges = torch.tensor(log_bins(n, bins_per_octave))
    sums = torch.zeros(len(edges) - 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) - 1, dtype=torch.long)
    with progress_bar("loss curve", n, progress) as advance:
        for start, logits in stream_logits(model, ids, segment):
            nll = segment_nll(logits, ids[start + 1 : start + 1 + len(logits)]).cpu()
            where = torch.bucketize(torch.arange(start, start + len(nll)), edges, right=True) - 1
            sums.index_add_(0, where, nll.double())
            counts.index_add_(0, where, torch.ones_like(where))
            advance(len(nll))
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
    return LossCurve(train_length, edges.tolist(), means.tolist(), counts.tolist())


def calibrated_controls(
    model,
    kind: str,
    train_length: int,
    calibration_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    every: int = 16,
    per_head: bool = True,
    read_length: int | None = None,
    tokenizer=None,
) -> list:
    """Per-layer mitigations set from the model itself: ``window`` = the training
    length; ``norm`` = each head's (``per_head=False``: each layer's) largest state norm
    at any position (read every ``every`` tokens) within the first ``train_length``
    tokens of each calibration input (default: held-out text in ``tokenizer``'s tokens,
    None: bytes), since the state never
    needs to be larger than it is inside the training length; ``dt`` = Delta-t scaled by
    train_length / read_length, which stretches the decays seen in training over the
    whole input (the LongMamba-style baseline)."""
    model = as_mamba2(model)
    n_layers = len(mixers(model))
    if not train_length or train_length < 1:
        raise ValueError(f"train_length must be a number of tokens >= 1, got {train_length!r}")
    if kind == "window":
        return [SSMControl(window=train_length)] * n_layers
    if kind == "dt":
        if not read_length:
            raise ValueError("mitigation 'dt' needs the length of the input to scale dt for")
        return [SSMControl(dt_scale=min(1.0, train_length / read_length))] * n_layers
    if kind != "norm":
        raise ValueError(f"kind must be 'norm', 'window' or 'dt', got {kind!r}")
    if calibration_ids is None:
        calibration_ids = [long_text(train_length, tokenizer=tokenizer)]
    elif isinstance(calibration_ids, torch.Tensor):
        calibration_ids = [calibration_ids]
    if not calibration_ids or min(len(ids) for ids in calibration_ids) < 1:
        raise ValueError("calibration_ids must hold at least one non-empty input")
    clear_mitigations(model)
    bounds = None
    for ids in calibration_ids:
        norm = state_statistics(model, ids[:train_length], segment=every).tensor("norm")
        top = norm.amax(dim=0)  # (layers, heads): over positions
        bounds = top if bounds is None else torch.maximum(bounds, top)
    if per_head:
        return [SSMControl(state_bound=tuple(b.tolist())) for b in bounds]
    return [SSMControl(state_bound=float(b.max())) for b in bounds]


#: named mitigations calibrated from the model (see `apply_named_mitigation`)
CALIBRATED = ("norm", "norm:head", "norm:layer", "window", "dt")
#: how to give each of them without a training length
NEEDS_VALUE = {
    "norm": "norm:BOUND",
    "norm:head": "norm:BOUND",
    "norm:layer": "norm:BOUND",
    "window": "window:TOKENS",
    "dt": "dt:SCALE",
}


def apply_named_mitigation(
    model,
    spec: str,
    train_length: int | None = None,
    calibration_ids: torch.Tensor | Sequence[torch.Tensor] | None = None,
    read_length: int | None = None,
    tokenizer=None,
) -> torch.nn.Module:
    """Clear the model's mitigations, then apply ``spec``: anything `parse_mitigation`
    reads, or one calibrated per layer from the model at ``train_length`` (see
    `calibrated_controls`): ``norm`` (= ``norm:head``, bounds per head), ``norm:layer``
    (one bound per layer), ``window`` (r = train_length) or ``dt`` (Delta-t scaled by
    train_length / read_length). Returns the model to run (see `apply_mitigation`)."""
    model = as_mamba2(model)
    clear_mitigations(model)
    if spec in CALIBRATED:
        if not train_length:
            raise ValueError(
                f"mitigation {spec!r} needs the model's training length: pass "
                f"train_length=N, or give its value ({NEEDS_VALUE[spec]})"
            )
        kind = spec.partition(":")[0]
        controls = calibrated_controls(
            model,
            kind,
            train_length,
            calibration_ids,
            per_head=spec != "norm:layer",
            read_length=read_length,
            tokenizer=tokenizer,
        )
        for layer, ctl in enumerate(controls):
            apply_mitigation(model, ctl, [layer])
        return model
    return apply_mitigation(model, parse_mitigation(spec))
