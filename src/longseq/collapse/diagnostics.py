"""State statistics of a Mamba-2 LM versus position, streamed over long inputs.

After every segment of ``segment`` tokens the recurrent state h (per layer and head,
headdim x d_state) is read from the cache: its Frobenius norm, mean, variance, its
largest channel (value and (p, n) index), and its cosine similarity with the previous
reading. The SSM inputs of the segment give the mean of dt, of the decay
a_t = exp(dt * A), and of |B|, |C| and |x| per head; the conv state (the last
d_conv - 1 inputs of the convolution) gives its mean, variance, RMS and largest value
for its x, B and C channels. At chosen positions a histogram of all state values of
each layer is kept. The trace holds a few float32 numbers per reading (no Python
floats), so memory stays flat in the input length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from longseq.collapse.mitigations import as_mamba2, mixers
from longseq.collapse.streaming import segment_nll, stream_logits

STATE_KEYS = ("norm", "mean", "var", "max_abs", "cos_prev")  # (readings, layers, heads)
INPUT_KEYS = ("dt", "decay", "B_abs", "C_abs", "x_abs")  # (readings, layers, heads)
CONV_KEYS = ("conv_mean", "conv_var", "conv_rms", "conv_max_abs")  # (readings, layers, 3)
CONV_PARTS = ("x", "B", "C")


class _Rows:
    """A float32 (or int32) array that grows by rows, doubling its capacity."""

    def __init__(self, dtype=np.float32) -> None:
        self.buf: np.ndarray | None = None
        self.n = 0
        self.dtype = dtype

    def append(self, row) -> None:
        row = np.asarray(row, dtype=self.dtype)
        if self.buf is None:
            self.buf = np.empty((16, *row.shape), self.dtype)
        if self.n == len(self.buf):
            self.buf = np.concatenate([self.buf, np.empty_like(self.buf)])
        self.buf[self.n] = row
        self.n += 1

    def array(self) -> np.ndarray:
        return self.buf[: self.n] if self.buf is not None else np.zeros((0,), self.dtype)


@dataclass
class StateTrace:
    """Readings after each segment. ``stats[key]`` is a float32 array (readings, layers,
    heads) for state and input keys, (readings, layers, 3) for conv keys (x, B, C)."""

    positions: list[int] = field(default_factory=list)  # tokens seen at each reading
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    max_channel: np.ndarray | None = None  # (readings, layers, heads, 2): (p, n)
    nll: np.ndarray | None = None  # (readings,) mean NLL of each segment
    # [{"position", "edges": [layer][bins + 1], "counts": [layer][bins]}]
    histograms: list[dict] = field(default_factory=list)

    def tensor(self, key: str) -> torch.Tensor:
        """(readings, layers, heads), or (readings, layers, 3) for conv keys."""
        return torch.from_numpy(np.asarray(self.stats[key]))

    def to_json(self, path: str | Path) -> Path:
        """Write the trace as JSON, one reading at a time (no copy of the whole trace as
        Python objects); numbers with 6 significant digits."""
        with open(path, "w") as f:
            f.write('{"positions": ' + json.dumps(self.positions) + ', "stats": {')
            for i, (key, arr) in enumerate(self.stats.items()):
                f.write(("," if i else "") + f'"{key}": ')
                _write_rows(f, arr)
            f.write('}, "max_channel": ')
            _write_rows(f, self.max_channel if self.max_channel is not None else np.zeros(0))
            f.write(', "nll": ')
            _write_rows(f, self.nll if self.nll is not None else np.zeros(0))
            f.write(', "histograms": ' + json.dumps(self.histograms) + "}\n")
        return Path(path)

    @classmethod
    def from_json(cls, path: str | Path) -> StateTrace:
        d = json.loads(Path(path).read_text())
        stats = {k: np.asarray(v, dtype=np.float32) for k, v in d["stats"].items()}
        return cls(
            d["positions"],
            stats,
            np.asarray(d["max_channel"], dtype=np.int32),
            np.asarray(d["nll"], dtype=np.float32),
            d.get("histograms", []),
        )


def _fmt(a: np.ndarray) -> str:
    if a.ndim == 0:
        v = float(a)
        return "NaN" if math.isnan(v) else (f"{v:.6g}" if a.dtype.kind == "f" else str(int(v)))
    return "[" + ",".join(_fmt(x) for x in a) + "]"


def _write_rows(f, arr: np.ndarray) -> None:
    f.write("[")
    for i, row in enumerate(arr):
        f.write(("," if i else "") + _fmt(np.asarray(row)))
    f.write("]")


class _InputStats:
    """Probe accumulating per-head means of dt, decay, |B|, |C|, |x| over one segment."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def __call__(self, x, B, C, dt, log_decay) -> None:
        h = dt.shape[-1]
        vals = {
            "dt": dt.reshape(-1, h),
            "decay": log_decay.exp().reshape(-1, h),
            "B_abs": B.abs().mean(-1).reshape(-1, h),
            "C_abs": C.abs().mean(-1).reshape(-1, h),
            "x_abs": x.abs().mean(-1).reshape(-1, h),
        }
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0) + v.float().sum(0).cpu()
        self.count += vals["dt"].shape[0]

    def means(self) -> dict[str, torch.Tensor]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def _conv_stats(conv: torch.Tensor, cfg) -> torch.Tensor:
    """(4 stats, 3 parts) of one layer's conv state (conv_dim, d_conv - 1)."""
    gn = cfg.ngroups * cfg.d_state
    parts = torch.split(conv.float(), [cfg.d_inner, gn, gn], dim=0)
    return torch.tensor(
        [
            [p.mean(), p.var(), p.pow(2).mean().sqrt(), p.abs().max()]
            for p in (t.flatten() for t in parts)
        ]
    ).T


@torch.no_grad()
def state_statistics(
    model,
    ids: torch.Tensor,
    segment: int = 256,
    histogram_at: Sequence[int] = (),
    bins: int = 40,
) -> StateTrace:
    """Stream ``ids`` (1-d) through ``model`` and trace its state after every segment.

    ``histogram_at``: positions at which to keep a histogram of each layer's state
    values (``bins`` equal bins over [-max |h|, max |h|] of that layer), taken at the
    first reading at or after each position. Under the sliding-window mitigation the
    state read is the window's."""
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    model = as_mamba2(model)
    ms = mixers(model)
    cfg = model.config
    probes = [_InputStats() for _ in ms]
    for m, p in zip(ms, probes, strict=True):
        m.probe = p
    ids = ids.reshape(-1)
    rows = {k: _Rows() for k in STATE_KEYS + INPUT_KEYS + CONV_KEYS}
    chans, nll = _Rows(np.int32), _Rows()
    positions: list[int] = []
    histograms: list[dict] = []
    wanted = sorted(set(int(p) for p in histogram_at))
    prev: list[torch.Tensor | None] = [None] * len(ms)

    def record(start: int, cache) -> None:
        pos = min(start + segment, len(ids))
        positions.append(pos)
        per = {k: [] for k in STATE_KEYS + CONV_KEYS}
        layer_chans = []
        for i, layer in enumerate(cache.layers):
            h = layer.recurrent_states[0].float()  # (heads, p, n)
            flat = h.flatten(1)
            per["norm"].append(flat.norm(dim=-1))
            per["mean"].append(flat.mean(-1))
            per["var"].append(flat.var(-1))
            amax = flat.abs().max(-1)
            per["max_abs"].append(amax.values)
            layer_chans.append(
                torch.stack([amax.indices // h.shape[-1], amax.indices % h.shape[-1]], -1)
            )
            per["cos_prev"].append(
                torch.full((h.shape[0],), math.nan)
                if prev[i] is None
                else torch.nn.functional.cosine_similarity(flat, prev[i], dim=-1, eps=1e-30)
            )
            prev[i] = flat
            conv = _conv_stats(layer.conv_states[0], cfg)
            for k, row in zip(CONV_KEYS, conv, strict=True):
                per[k].append(row)
        for k, v in per.items():
            rows[k].append(torch.stack(v).numpy())
        chans.append(torch.stack(layer_chans).numpy())
        inputs = [p.means() for p in probes]
        for k in INPUT_KEYS:
            rows[k].append(torch.stack([inp[k] for inp in inputs]).numpy())
        for p in probes:
            p.reset()
        while wanted and wanted[0] <= pos:
            want = wanted.pop(0)
            edges, counts = [], []
            for layer in cache.layers:
                vals = layer.recurrent_states[0].float().flatten()
                top = float(vals.abs().max()) or 1.0
                counts.append(torch.histc(vals, bins, -top, top).int().tolist())
                edges.append(torch.linspace(-top, top, bins + 1).tolist())
            histograms.append(
                {"requested": want, "position": pos, "edges": edges, "counts": counts}
            )

    try:
        for start, logits in stream_logits(model, ids, segment, on_segment=record):
            tgt = ids[start + 1 : start + 1 + len(logits)]
            nll.append(float(segment_nll(logits, tgt).mean()) if len(tgt) else 0.0)
    finally:
        for m in ms:
            m.probe = None
    return StateTrace(
        positions,
        {k: r.array() for k, r in rows.items()},
        chans.array(),
        nll.array(),
        histograms,
    )
