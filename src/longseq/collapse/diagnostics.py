"""State statistics of a Mamba-2 LM versus position, streamed over long inputs.

After every segment of ``segment`` tokens the recurrent state h (per layer and head,
headdim x d_state) is read from the cache: its Frobenius norm, mean, variance, and
its largest channel (value and (p, n) index); the SSM inputs of the segment give the
mean of dt, of the decay a_t = exp(dt * A), and of |B| and |x| per head. Memory stays
flat in the input length; the trace is a few numbers per segment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from longseq.collapse.mitigations import mixers, window_of
from longseq.collapse.streaming import stream_logits

STATE_KEYS = ("norm", "mean", "var", "max_abs")
INPUT_KEYS = ("dt", "decay", "B_abs", "x_abs")


@dataclass
class StateTrace:
    positions: list[int] = field(default_factory=list)  # tokens seen after each segment
    # key -> [segment][layer][head]
    stats: dict[str, list] = field(default_factory=lambda: {k: [] for k in STATE_KEYS + INPUT_KEYS})
    max_channel: list = field(default_factory=list)  # [segment][layer][head] -> (p, n)
    nll: list[float] = field(default_factory=list)  # mean NLL of each segment

    def tensor(self, key: str) -> torch.Tensor:
        """(segments, layers, heads)."""
        return torch.tensor(self.stats[key])

    def to_json(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self)))
        return Path(path)

    @classmethod
    def from_json(cls, path: str | Path) -> StateTrace:
        return cls(**json.loads(Path(path).read_text()))


class _InputStats:
    """Probe accumulating per-head means of dt, decay, |B|, |x| over one segment."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def __call__(self, x, B, C, dt, log_decay) -> None:
        vals = {
            "dt": dt.reshape(-1, dt.shape[-1]),
            "decay": log_decay.exp().reshape(-1, dt.shape[-1]),
            "B_abs": B.abs().mean(-1).reshape(-1, dt.shape[-1]),
            "x_abs": x.abs().mean(-1).reshape(-1, dt.shape[-1]),
        }
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0) + v.float().sum(0).cpu()
        self.count += vals["dt"].shape[0]

    def means(self) -> dict[str, list[float]]:
        return {k: (v / max(self.count, 1)).tolist() for k, v in self.sums.items()}


@torch.no_grad()
def state_statistics(model, ids: torch.Tensor, segment: int = 256) -> StateTrace:
    """Stream ``ids`` (1-d) through ``model`` and trace its state after every segment."""
    if window_of(model) is not None:
        raise ValueError("state statistics need the carried state: clear the window mitigation")
    ms = mixers(model)
    probes = [_InputStats() for _ in ms]
    for m, p in zip(ms, probes, strict=True):
        m.probe = p
    trace = StateTrace()
    ids = ids.reshape(-1)

    def record(start: int, cache) -> None:
        trace.positions.append(min(start + segment, len(ids)))
        per = {k: [] for k in STATE_KEYS}
        chans = []
        for layer in cache.layers:
            h = layer.recurrent_states[0].float()  # (heads, p, n)
            flat = h.flatten(1)
            per["norm"].append(flat.norm(dim=-1).tolist())
            per["mean"].append(flat.mean(-1).tolist())
            per["var"].append(flat.var(-1).tolist())
            amax = flat.abs().max(-1)
            per["max_abs"].append(amax.values.tolist())
            chans.append([divmod(int(i), h.shape[-1]) for i in amax.indices])
        for k in STATE_KEYS:
            trace.stats[k].append(per[k])
        trace.max_channel.append(chans)
        inputs = [p.means() for p in probes]
        for k in INPUT_KEYS:
            trace.stats[k].append([inp[k] for inp in inputs])
        for p in probes:
            p.reset()

    try:
        for start, logits in stream_logits(model, ids, segment, on_segment=record):
            tgt = ids[start + 1 : start + 1 + len(logits)].to(logits.device)
            lp = logits[: len(tgt)].float().log_softmax(-1)
            trace.nll.append(float(-lp.gather(-1, tgt[:, None]).mean()) if len(tgt) else 0.0)
    finally:
        for m in ms:
            m.probe = None
    return trace
