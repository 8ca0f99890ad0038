"""Mamba-2 (SSD) in plain PyTorch: chunked scan for training and prefill, a recurrent
step with a fixed-size cache for decoding, and the `transformers` checkpoint layout.

Per head, with a scalar decay (Dao & Gu 2024, "Transformers are SSMs"):

    dt_t = softplus(dt_raw_t + dt_bias)             clamped to dt_limit
    a_t  = exp(dt_t * A),  A = -exp(A_log)           decay in (0, 1)
    h_t  = a_t * h_{t-1} + dt_t * x_t B_t^T          state (headdim, d_state)
    y_t  = h_t C_t + D * x_t

A block is in_proj -> (z, xBC, dt); causal depthwise conv1d (width d_conv) + SiLU
over xBC; split into x, B, C; the SSD above; gated RMSNorm (y * silu(z), normalized
per group); out_proj. Module and parameter names follow `transformers`'
``Mamba2ForCausalLM``, so its checkpoints load as they are
(:meth:`Mamba2ForCausalLM.from_pretrained`).

The calling convention is the `transformers` 5 one::

    out = model(input_ids, cache=cache, use_cache=True)    # out.logits, out.cache

``cache.layers[i].conv_states`` (b, conv_dim, d_conv - 1) and
``cache.layers[i].recurrent_states`` (b, nheads, headdim, d_state) are the whole
memory of the sequence so far: their size does not grow with its length. Under the
sliding-window control (:class:`SSMControl`) a layer also keeps its last ``window`` SSM
inputs (``cache.layers[i].window``), again whatever the length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.lm import causal_lm_loss
from longseq.models.config import ConfigDict

# --------------------------------------------------------------------------- config


@dataclass
class Mamba2Config(ConfigDict):
    """Sizes of a Mamba-2 LM. Defaults follow the reference implementation
    (``mamba_ssm``'s Mamba2 and `transformers`' Mamba2Config)."""

    vocab_size: int = 256
    d_model: int = 256
    n_layer: int = 4
    d_state: int = 64  # N: state size per head
    headdim: int = 32  # P
    expand: int = 2  # d_inner = expand * d_model = nheads * headdim
    ngroups: int = 1  # B and C are shared by nheads // ngroups heads
    d_conv: int = 4
    chunk_size: int = 64
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    tie_embeddings: bool = True
    residual_in_fp32: bool = True

    def __post_init__(self) -> None:
        if self.d_inner % self.headdim:
            raise ValueError(
                f"expand * d_model = {self.d_inner} must be a multiple of headdim={self.headdim}"
            )
        if self.nheads % self.ngroups:
            raise ValueError(f"nheads={self.nheads} must be a multiple of ngroups={self.ngroups}")
        self.dt_limit = tuple(self.dt_limit)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def state_elements(self) -> int:
        """SSM state size of the whole model (the paper's S): layers x heads x P x N."""
        return self.n_layer * self.nheads * self.headdim * self.d_state

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["dt_limit"] = list(self.dt_limit)
        return d

    # `transformers` Mamba2Config <-> ours
    _HF = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layer",
        "vocab_size": "vocab_size",
        "state_size": "d_state",
        "head_dim": "headdim",
        "expand": "expand",
        "n_groups": "ngroups",
        "conv_kernel": "d_conv",
        "chunk_size": "chunk_size",
        "use_conv_bias": "conv_bias",
        "use_bias": "bias",
        "layer_norm_epsilon": "norm_eps",
        "time_step_min": "dt_min",
        "time_step_max": "dt_max",
        "time_step_floor": "dt_init_floor",
        "time_step_limit": "dt_limit",
        "tie_word_embeddings": "tie_embeddings",
        "residual_in_fp32": "residual_in_fp32",
    }

    @classmethod
    def from_hf(cls, hf: dict) -> Mamba2Config:
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, the checkpoint has {act!r}")
        kw = {ours: hf[theirs] for theirs, ours in cls._HF.items() if theirs in hf}
        if "dt_limit" in kw:
            kw["dt_limit"] = tuple(_json_float(v) for v in kw["dt_limit"])
        cfg = cls(**kw)
        if "num_heads" in hf and hf["num_heads"] != cfg.nheads:
            raise ValueError(
                f"num_heads={hf['num_heads']} does not match expand*hidden_size/head_dim="
                f"{cfg.nheads}"
            )
        return cfg

    @classmethod
    def from_mamba_ssm(cls, ms: dict) -> Mamba2Config:
        """Read the config of an original ``mamba_ssm`` checkpoint (``MambaConfig``:
        d_model, n_layer, vocab_size, ssm_cfg, ...; the layout of the public
        state-spaces/mamba2-* models). The vocabulary is padded up to a multiple of
        ``pad_vocab_size_multiple``, as ``mamba_ssm`` does. Anything this Mamba-2 cannot
        run raises a ValueError naming the field."""
        ssm = dict(ms.get("ssm_cfg") or {})
        layer = ssm.get("layer", "Mamba1")  # mamba_ssm's default when absent
        if layer != "Mamba2":
            raise ValueError(
                f"ssm_cfg.layer is {layer!r}{'' if 'layer' in ssm else ' (the default)'}: "
                "only 'Mamba2' layers are supported"
            )
        unsupported = {
            "d_intermediate": (ms.get("d_intermediate", 0), 0, "blocks with an MLP"),
            "attn_layer_idx": (list(ms.get("attn_layer_idx") or []), [], "attention layers"),
            "rms_norm": (ms.get("rms_norm", True), True, "LayerNorm blocks"),
            "ssm_cfg.D_has_hdim": (ssm.get("D_has_hdim", False), False, "a D per channel"),
            "ssm_cfg.rmsnorm": (ssm.get("rmsnorm", True), True, "no gated RMSNorm"),
            "ssm_cfg.norm_before_gate": (
                ssm.get("norm_before_gate", False),
                False,
                "the norm before the gate",
            ),
        }
        for name, (value, wanted, what) in unsupported.items():
            if value != wanted:
                raise ValueError(f"{name}={value!r} ({what}) is not supported, only {wanted!r}")
        vocab = int(ms["vocab_size"])
        multiple = int(ms.get("pad_vocab_size_multiple", 8) or 1)
        vocab += (-vocab) % multiple
        kw = dict(
            vocab_size=vocab,
            d_model=int(ms["d_model"]),
            n_layer=int(ms["n_layer"]),
            d_state=ssm.get("d_state", 128),
            headdim=ssm.get("headdim", 64),
            expand=ssm.get("expand", 2),
            ngroups=ssm.get("ngroups", 1),
            d_conv=ssm.get("d_conv", 4),
            chunk_size=ssm.get("chunk_size", 256),
            conv_bias=ssm.get("conv_bias", True),
            bias=ssm.get("bias", False),
            dt_min=ssm.get("dt_min", 0.001),
            dt_max=ssm.get("dt_max", 0.1),
            dt_init_floor=ssm.get("dt_init_floor", 1e-4),
            dt_limit=tuple(_json_float(v) for v in ssm.get("dt_limit", (0.0, float("inf")))),
            tie_embeddings=ms.get("tie_embeddings", True),
            residual_in_fp32=ms.get("residual_in_fp32", True),
        )
        d_ssm = ssm.get("d_ssm")
        if d_ssm is not None and d_ssm != kw["expand"] * kw["d_model"]:
            raise ValueError(
                f"ssm_cfg.d_ssm={d_ssm} (part of the inner width as a gated MLP) is not "
                f"supported, only expand * d_model = {kw['expand'] * kw['d_model']}"
            )
        return cls(**kw)

    def to_hf(self) -> dict:
        d = {theirs: getattr(self, ours) for theirs, ours in self._HF.items()}
        d["time_step_limit"] = [
            v if math.isfinite(v) else {"__float__": "Infinity"} for v in self.dt_limit
        ]
        d.update(
            model_type="mamba2",
            architectures=["Mamba2ForCausalLM"],
            num_heads=self.nheads,
            hidden_act="silu",
            rms_norm=True,
        )
        return d


def _json_float(v) -> float:
    """`transformers` writes non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"].replace("Infinity", "inf"))
    return float(v)


# --------------------------------------------------------------------------- SSD math


def segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = a[..., j+1] + ... + a[..., i] for j <= i, -inf above the diagonal.

    Summed from masked copies (not as a difference of cumsums) to stay exact."""
    t = a.shape[-1]
    x = a[..., None].expand(*a.shape, t)  # x[..., i, j] = a_i
    below = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1)
    x = x.masked_fill(~below, 0.0).cumsum(dim=-2)
    return x.masked_fill(~torch.ones_like(below).tril(0), -torch.inf)


def _bound(state: torch.Tensor, bound: torch.Tensor | float | None) -> torch.Tensor:
    """Rescale each head's state (.., h, p, n) whose Frobenius norm exceeds its bound
    (a number, or one per head: a (h,) tensor)."""
    if bound is None:
        return state
    norm = state.flatten(-2).norm(dim=-1)  # (.., h)
    return state * torch.clamp(bound / norm.clamp_min(1e-30), max=1.0)[..., None, None]


def _bounded_chunk(
    state: torch.Tensor, xdt: torch.Tensor, B: torch.Tensor, a: torch.Tensor, bound: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token state normalization inside one chunk, without materializing the states.

    h_i = s_i (exp(a_i) h_{i-1} + u_i), u_i = xdt_i B_i^T, s_i = min(1, bound / |pre-clip|).
    Every h_i is c_i h_0 + sum_s w_is u_s, so its norm follows from the Gram matrix of the
    inputs (<u_s, u_t> = (xdt_s . xdt_t)(B_s . B_t)) and <h_0, u_t>: a loop over tokens on
    (b, h, q) numbers, in float64. Returns log s (b, h, q) and the state at the chunk end.

    state (b, h, p, n)   xdt (b, q, h, p)   B (b, q, h, n)   a (b, h, q)   bound (h,)
    """
    q = xdt.shape[1]
    x64, b64, h64 = xdt.double(), B.double(), state.double()
    gram = torch.einsum("bihp,bjhp->bhij", x64, x64) * torch.einsum("bihn,bjhn->bhij", b64, b64)
    cross = torch.einsum("bihp,bhpn,bihn->bhi", x64, h64, b64)  # <h_0, u_i>
    bound2 = bound.double().pow(2)
    e = a.double().exp()  # (b, h, q)
    # the states without normalization: norms of all q at once; loop from the first overflow
    cum = a.double().cumsum(-1)
    decay = torch.exp(segsum(a.double()))  # (b, h, q, q): exp(sum_{s<k<=i} a_k), 0 above
    free2 = (
        torch.exp(2 * cum) * h64.pow(2).sum((-2, -1))[..., None]
        + 2 * torch.exp(cum) * torch.einsum("bhis,bhs->bhi", decay, cross)
        + torch.einsum("bhis,bhst,bhit->bhi", decay, gram, decay)
    )
    over = (free2 > bound2[:, None]).flatten(0, 1).any(0)  # (q,)
    log_s = torch.zeros_like(e)
    if not over.any():
        w, c = decay[..., -1, :], torch.exp(cum[..., -1])
    else:
        first = int(over.nonzero()[0])
        if first:  # unclipped so far
            w = torch.cat([decay[..., first - 1, :first], e.new_zeros(*e.shape[:2], q - first)], -1)
            c, norm2 = torch.exp(cum[..., first - 1]), free2[..., first - 1]
        else:
            w, c, norm2 = torch.zeros_like(e), torch.ones_like(e[..., 0]), h64.pow(2).sum((-2, -1))
        for i in range(first, q):
            dot = c * cross[..., i] + (w * gram[..., i]).sum(-1)  # <h_{i-1}, u_i>
            pre2 = e[..., i] ** 2 * norm2 + 2 * e[..., i] * dot + gram[..., i, i]
            s = torch.clamp(bound2 / pre2.clamp_min(1e-60), max=1.0).sqrt()
            norm2 = s * s * pre2
            c = s * e[..., i] * c
            w = w * (s * e[..., i])[..., None]
            w[..., i] = s
            log_s[..., i] = s.log()
    end = c[..., None, None] * h64 + torch.einsum("bhi,bihp,bihn->bhpn", w, x64, b64)
    return log_s.to(a.dtype), end.to(state.dtype)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    log_decay_offset: float = 0.0,
    state_bound: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan in chunks: quadratic inside a chunk, recurrent across chunks.

    x: (b, l, h, p)   dt: (b, l, h)   A: (h,)   B, C: (b, l, h, n) (already per head)
    initial_state: (b, h, p, n) or None.  Returns y (b, l, h, p) and the final state.
    ``log_decay_offset`` is added to every log-decay dt*A (log of a decay scale);
    ``state_bound`` (a number or one per head) renormalizes every head's state after
    every token, exactly as :func:`ssd_step` does: the result does not depend on
    ``chunk_size`` or on where a sequence is split.
    """
    b, l, h, p = x.shape
    q = chunk_size
    pad = (-l) % q
    a = dt * A + log_decay_offset  # (b, l, h) log-decays
    if pad:  # padding: no decay, no input
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt, a = (F.pad(t, (0, 0, 0, pad)) for t in (dt, a))
    nc = x.shape[1] // q
    # (b, c, q, ...) chunks
    x, B, C = (t.reshape(b, nc, q, *t.shape[2:]) for t in (x, B, C))
    dt = dt.reshape(b, nc, q, h)
    a = a.reshape(b, nc, q, h).permute(0, 3, 1, 2)  # (b, h, c, q)
    xdt = x * dt[..., None]  # (b, c, q, h, p)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state

    if state_bound is not None:
        # the normalization factors s_t, chunk by chunk (each needs the state before it);
        # then h_t = s_t (a_t h_{t-1} + u_t) is the plain scan with decays s_t a_t, inputs s_t u_t
        bound = torch.as_tensor(state_bound, dtype=torch.float32, device=x.device).expand(h)
        starts, log_s = [], []
        for c in range(nc):
            starts.append(state)
            ls, state = _bounded_chunk(state, xdt[:, c], B[:, c], a[:, :, c], bound)
            log_s.append(ls)
        log_s = torch.stack(log_s, 2)  # (b, h, c, q)
        a = a + log_s
        xdt = xdt * log_s.exp().permute(0, 2, 3, 1)[..., None]
        starts = torch.stack(starts, dim=1)
        a_cum = a.cumsum(-1)
    else:
        a_cum = a.cumsum(-1)  # (b, h, c, q)
        # each chunk's contribution to the state at its end
        to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, q)
        chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xdt)
        # states at chunk starts, by the recurrence across chunks
        chunk_decay = torch.exp(a_cum[..., -1])  # (b, h, c)
        starts = []
        for c in range(nc):
            starts.append(state)
            state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]
        starts = torch.stack(starts, dim=1)  # (b, c, h, p, n)

    # inside each chunk: y_l = sum_{s<=l} exp(sum_{s<k<=l} a_k) (C_l . B_s) dt_s x_s
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * torch.exp(segsum(a))
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)
    # plus the start state read out inside each chunk: exp(a_cum_l) C_l . H_c
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, starts, torch.exp(a_cum))
    y = y.reshape(b, nc * q, h, p)[:, :l]
    return y, state


def ssd_windowed(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    window: int,
    log_decay_offset: float = 0.0,
) -> torch.Tensor:
    """Reference for :func:`ssd_window_scan` (quadratic in the window): the SSD output of
    the state of the last ``window`` tokens only,

        h_t^(r) = h_t - (a_{t-r+1} ... a_t) h_{t-r}
        y_t     = C_t . h_t^(r) = sum_{t-r < s <= t} exp(sum_{s<k<=t} a_k) (C_t . B_s) dt_s x_s

    in chunks of ``window`` tokens: each chunk reads itself (causally) and the part of
    the previous chunk that is still inside the window. Shapes as in :func:`ssd_chunked`;
    returns y (b, l, h, p)."""
    b, l, h, p = x.shape
    r = window
    pad = (-l) % r
    a = dt * A + log_decay_offset
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt, a = (F.pad(t, (0, 0, 0, pad)) for t in (dt, a))
    nc = x.shape[1] // r
    x, B, C = (t.reshape(b, nc, r, *t.shape[2:]) for t in (x, B, C))
    xdt = x * dt.reshape(b, nc, r, h)[..., None]
    a = a.reshape(b, nc, r, h).permute(0, 3, 1, 2)  # (b, h, c, r)
    a_cum = a.cumsum(-1)
    # own chunk, causal
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * torch.exp(segsum(a))
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)
    if nc > 1:  # previous chunk, sources j > i only (still within the window)
        prev_to_end = a_cum[:, :, :-1, -1:] - a_cum[:, :, :-1]  # (b, h, c-1, r) for sources
        log_w = a_cum[:, :, 1:, :, None] + prev_to_end[:, :, :, None, :]  # (b,h,c-1,i,j)
        later = torch.ones(r, r, dtype=torch.bool, device=x.device).triu(1)
        w = torch.exp(log_w.masked_fill(~later, -torch.inf))
        scores = torch.einsum("bclhn,bcshn->bhcls", C[:, 1:], B[:, :-1]) * w
        y[:, 1:] = y[:, 1:] + torch.einsum("bhcls,bcshp->bclhp", scores, xdt[:, :-1])
    return y.reshape(b, nc * r, h, p)[:, :l]


@dataclass
class WindowState:
    """What the sliding window keeps of one layer: its last r SSM inputs (a ring buffer,
    oldest at ``head``), the state of the window h_t - (a_{t-r+1}..a_t) h_{t-r}, and the
    sum of the window's log-decays. Size: r x (nheads x (headdim + 1) + ngroups x d_state)
    numbers per sequence, whatever the length of the stream."""

    xdt: torch.Tensor  # (b, r, h, p)   dt_s x_s
    B: torch.Tensor  # (b, r, g, n)
    log_decay: torch.Tensor  # (b, r, h)   log a_s
    state: torch.Tensor  # (b, h, p, n)
    log_decay_sum: torch.Tensor  # (b, h) float64: sum of log a over the window
    head: int = 0

    @classmethod
    def empty(cls, b: int, r: int, h: int, p: int, g: int, n: int, like: torch.Tensor):
        z = like.new_zeros
        f64 = torch.zeros(b, h, dtype=torch.float64, device=like.device)
        return cls(z(b, r, h, p), z(b, r, g, n), z(b, r, h), z(b, h, p, n), f64)

    def chronological(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t.roll(-self.head, dims=1) for t in (self.xdt, self.B, self.log_decay))

    def index_select(self, index: torch.Tensor) -> WindowState:
        return WindowState(
            *(t.index_select(0, index) for t in (self.xdt, self.B, self.log_decay)),
            self.state.index_select(0, index),
            self.log_decay_sum.index_select(0, index),
            self.head,
        )


def _window_chunks(xdt, a, B, C, sxdt, sa, sB, before, state):
    """Chunks of q tokens of the windowed scan (see :func:`ssd_window_scan`).

    xdt (b, c, q, h, p), a (b, h, c, q), B/C (b, c, q, h, n): the chunks' own inputs;
    sxdt, sa, sB (same shapes): the inputs r tokens earlier, which leave the window one
    per token over the chunk; before (b, h, c) float64: the log-decay sum of the window
    that ends just before each chunk; state (b, h, p, n): the window state before the
    first chunk. Returns y (b, c, q, h, p) and the window state after the last chunk."""
    q = a.shape[-1]
    a_cum = a.cumsum(-1)  # (b, h, c, q)
    # log-decay from leaving source j to the chunk start, then to query i
    leave = before[..., None] - sa.double().cumsum(-1)  # (b, h, c, q)
    gone = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()  # j <= i has left
    log_w = a_cum.double()[..., :, None] + leave[..., None, :]  # (b, h, c, i, j)
    w_leave = torch.exp(log_w.masked_fill(~gone, -torch.inf)).to(a.dtype)
    own = torch.einsum("bclhn,bcshn->bhcls", C, B) * torch.exp(segsum(a))
    left = torch.einsum("bclhn,bcshn->bhcls", C, sB) * w_leave
    y = torch.einsum("bhcls,bcshp->bclhp", own, xdt) - torch.einsum(
        "bhcls,bcshp->bclhp", left, sxdt
    )
    # each chunk's change to the window state at its end: its inputs in, q old ones out
    to_end = torch.exp(a_cum[..., -1:] - a_cum)
    left_to_end = torch.exp(leave + a_cum[..., -1:].double()).to(a.dtype)
    change = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xdt) - torch.einsum(
        "bclhn,bhcl,bclhp->bchpn", sB, left_to_end, sxdt
    )
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, h, c)
    starts = []
    for c in range(a.shape[2]):
        starts.append(state)
        state = chunk_decay[:, :, c, None, None] * state + change[:, c]
    starts = torch.stack(starts, dim=1)  # (b, c, h, p, n)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, starts, torch.exp(a_cum))
    return y, state


def ssd_window_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    window: int,
    chunk_size: int = 64,
    past: WindowState | None = None,
    log_decay_offset: float = 0.0,
    ngroups: int = 1,
) -> tuple[torch.Tensor, WindowState]:
    """The sliding window by state difference, in chunks, at a cost per token that does
    not depend on the window r:

        W_t = h_t - (a_{t-r+1} ... a_t) h_{t-r} = sum_{t-r < s <= t} exp(sum_{s<k<=t} a_k) u_s
        y_t = C_t . W_t

    Inside a chunk of q <= r tokens, W_t is the window state before the chunk, decayed,
    plus the chunk's own inputs up to t, minus the inputs that left the window since the
    chunk began (those r tokens before the chunk's first t' <= t). ``past`` carries the
    last r inputs and W from a previous call (None: an empty stream). Shapes as in
    :func:`ssd_chunked` (B, C per head; ``ngroups`` of them are distinct); returns y and
    the :class:`WindowState` after the last token."""
    b, l, h, p = x.shape
    n, r, rep = B.shape[-1], window, h // ngroups
    xdt = x * dt[..., None]
    a = dt * A + log_decay_offset  # (b, l, h)
    if past is None:
        past = WindowState.empty(b, r, h, p, ngroups, n, x)
    old_xdt, old_B, old_a = past.chronological()
    ext_xdt = torch.cat([old_xdt, xdt], 1)  # (b, r + l, h, p): position t's leaver is at t
    ext_B = torch.cat([old_B, B[:, :, ::rep]], 1)
    ext_a = torch.cat([old_a, a], 1)
    cum = F.pad(ext_a.double().cumsum(1), (0, 0, 1, 0))  # cum[m] = sum of ext_a[:m]
    q = min(chunk_size, r)
    ys, state, pos = [], past.state, 0
    for size, qq in ((l - l % q, q), (l % q, l % q)):  # full chunks, then the rest
        if not size:
            continue
        nc = size // qq
        part = slice(pos, pos + size)

        def chunks(t, qq=qq, nc=nc):
            return t.reshape(b, nc, qq, *t.shape[2:])

        starts = torch.arange(pos, pos + size, qq, device=x.device)
        before = (cum[:, starts + r] - cum[:, starts]).permute(0, 2, 1)  # (b, h, c)
        y, state = _window_chunks(
            chunks(xdt[:, part]),
            chunks(a[:, part]).permute(0, 3, 1, 2),
            chunks(B[:, part]),
            chunks(C[:, part]),
            chunks(ext_xdt[:, part]),
            chunks(ext_a[:, part]).permute(0, 3, 1, 2),
            chunks(ext_B[:, part].repeat_interleave(rep, dim=2)),
            before,
            state,
        )
        ys.append(y.reshape(b, size, h, p))
        pos += size
    keep = slice(l, l + r)
    new = WindowState(
        ext_xdt[:, keep].clone(),
        ext_B[:, keep].clone(),
        ext_a[:, keep].clone(),
        state,
        cum[:, l + r] - cum[:, l],
    )
    return torch.cat(ys, 1), new


def ssd_window_step(
    past: WindowState,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    log_decay_offset: float = 0.0,
) -> tuple[torch.Tensor, WindowState]:
    """One token of the sliding window, O(1) in r: W_t = a_t W_{t-1} + u_t
    - (a_{t-r+1} ... a_t) u_{t-r}, with u_{t-r} and the window's log-decay sum read from
    (and the new input written into) ``past``'s ring buffer, in place. Shapes as in
    :func:`ssd_step`; returns y (b, h, p) and ``past``."""
    h = x.shape[1]
    rep = h // past.B.shape[2]
    i = past.head
    xdt, a = x * dt[..., None], dt * A + log_decay_offset  # (b, h, p), (b, h)
    old_u = past.xdt[:, i, :, :, None] * past.B[:, i].repeat_interleave(rep, 1)[:, :, None, :]
    past.log_decay_sum = past.log_decay_sum + a.double() - past.log_decay[:, i].double()
    past.state = (
        torch.exp(a)[..., None, None] * past.state
        + xdt[..., None] * B[:, :, None, :]
        - torch.exp(past.log_decay_sum).to(x.dtype)[..., None, None] * old_u
    )
    past.xdt[:, i], past.B[:, i], past.log_decay[:, i] = xdt, B[:, ::rep], a
    past.head = (i + 1) % past.xdt.shape[1]
    return torch.einsum("bhpn,bhn->bhp", past.state, C), past


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    log_decay_offset: float = 0.0,
    state_bound: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step. state (b, h, p, n), x (b, h, p), dt (b, h), B/C (b, h, n);
    ``state_bound`` (a number or one per head) caps each head's state norm."""
    decay = torch.exp(dt * A + log_decay_offset)[..., None, None]
    state = decay * state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    state = _bound(state, state_bound)
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd_naive(
    x, dt, A, B, C, initial_state=None, log_decay_offset=0.0, window=None, state_bound=None
):
    """Token-by-token reference of :func:`ssd_chunked` / :func:`ssd_window_scan` (for
    tests): the window as a difference of stored states."""
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state
    ys, states, logd = [], [], []
    for t in range(l):
        y, state = ssd_step(
            state, x[:, t], dt[:, t], A, B[:, t], C[:, t], log_decay_offset, state_bound
        )
        states.append(state)
        logd.append(dt[:, t] * A + log_decay_offset)
        if window is not None and t >= window:
            decay = torch.exp(torch.stack(logd[t - window + 1 : t + 1]).sum(0))
            old = decay[..., None, None] * states[t - window]
            y = y - torch.einsum("bhpn,bhn->bhp", old, C[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


# --------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) computed per group of channels (norm after gating)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        y = y.float() * F.silu(z.float().contiguous())
        g = y.view(*y.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.view_as(y).to(dtype)


class Mamba2LayerState:
    """Cache of one layer: conv inputs of the last d_conv - 1 steps and the SSM state
    (under the sliding-window mitigation: the window state, and ``window`` holds the
    ring buffer of the last r SSM inputs)."""

    def __init__(self) -> None:
        self.conv_states: torch.Tensor | None = None  # (b, conv_dim, d_conv - 1)
        self.recurrent_states: torch.Tensor | None = None  # (b, nheads, headdim, d_state)
        self.window: WindowState | None = None


class Mamba2Cache:
    """Fixed-size decoding state of a Mamba-2 LM (one entry per layer)."""

    def __init__(self, n_layer: int) -> None:
        self.layers = [Mamba2LayerState() for _ in range(n_layer)]
        self.seen_tokens = 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def reorder_cache(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            for name in ("conv_states", "recurrent_states"):
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.index_select(0, index))
            if layer.window is not None:
                layer.window = layer.window.index_select(index)


@dataclass
class SSMControl:
    """Inference-time changes to one layer's SSM: the training-free state-collapse
    mitigations of Stuffed Mamba and the other knobs of its authors' code. Defaults
    change nothing.

    decay_scale: lambda_alpha, multiplies every decay a_t (< 1 forgets more);
    b_scale: lambda_B, multiplies B (< 1 writes less into the state);
    state_bound: after every token, rescale each head's state to this Frobenius norm
        when it is above it: one number for every head, or one per head. Prefill,
        chunked continuation and token-by-token decoding give the same result;
    window: only the state of the last ``window`` tokens is read,
        h_t - (a_{t-r+1}...a_t) h_{t-r}; a cache keeps the layer's last r SSM inputs;
    dt_scale: multiplies dt after the softplus (and after ``dt_limit``), which scales
        both the decay's log and the input (Delta-t scaling, as in LongMamba-style
        context extension; the authors' ``dt_mult``);
    a_scale: multiplies A, i.e. raises every decay to this power (their ``a_mult``);
    b_clip: clamps every entry of B to [-b_clip, b_clip] (after ``b_scale``).
    """

    decay_scale: float = 1.0
    b_scale: float = 1.0
    state_bound: float | tuple[float, ...] | None = None
    window: int | None = None
    dt_scale: float = 1.0
    a_scale: float = 1.0
    b_clip: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.decay_scale <= 1.0:
            raise ValueError(f"decay_scale must be in (0, 1], got {self.decay_scale}")
        for name in ("b_scale", "dt_scale", "a_scale"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.b_clip is not None and not self.b_clip > 0:
            raise ValueError(f"b_clip must be > 0, got {self.b_clip}")
        if self.state_bound is not None:
            bounds = (
                tuple(float(v) for v in self.state_bound)
                if isinstance(self.state_bound, (list, tuple))
                else float(self.state_bound)
            )
            if not bounds or min(bounds if isinstance(bounds, tuple) else (bounds,)) <= 0:
                raise ValueError(f"state_bound must be > 0, got {self.state_bound}")
            self.state_bound = bounds
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.window is not None and self.state_bound is not None:
            raise ValueError(
                "state_bound and window cannot be combined: the window is a difference of "
                "states, which a renormalized state does not have"
            )

    def bound_tensor(self, nheads: int, device) -> torch.Tensor | None:
        """The bound of each head, (nheads,), or None."""
        if self.state_bound is None:
            return None
        bound = torch.tensor(self.state_bound, dtype=torch.float32, device=device)
        if bound.dim() and bound.numel() != nheads:
            raise ValueError(
                f"state_bound has {bound.numel()} values, the layer has {nheads} heads"
            )
        return bound.expand(nheads)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 token mixer: (b, l, d_model) -> (b, l, d_model).

    ``control`` (an :class:`SSMControl`) changes the SSM at inference; ``probe``, when
    set, is called with the SSM inputs of every forward (for state diagnostics).
    """

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_inner + cfg.conv_dim + h, bias=cfg.bias)
        self.conv1d = nn.Conv1d(
            cfg.conv_dim,
            cfg.conv_dim,
            cfg.d_conv,
            groups=cfg.conv_dim,
            padding=cfg.d_conv - 1,
            bias=cfg.conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.A_log = nn.Parameter(torch.empty(h))
        self.D = nn.Parameter(torch.empty(h))
        self.norm = GatedRMSNorm(cfg.d_inner, cfg.d_inner // cfg.ngroups, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
        self.control: SSMControl | None = None
        self.probe = None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """A in [1, nheads] (log-spaced decay rates), D = 1, dt log-uniform in
        [dt_min, dt_max] stored through the inverse softplus."""
        cfg = self.cfg
        self.A_log.copy_(torch.log(torch.arange(1, cfg.nheads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        dt = torch.exp(
            torch.rand(cfg.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
            + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def ssm_inputs(self, xbc: torch.Tensor, dt_raw: torch.Tensor):
        """Split activated conv output into per-head x, B, C and the discretized dt.

        Returns x (.., h, p), B and C (.., h, n) repeated over the heads of a group,
        dt (.., h) and A (h,), all float32 (the scan runs in float32)."""
        cfg = self.cfg
        gn = cfg.ngroups * cfg.d_state
        x, B, C = torch.split(xbc, [cfg.d_inner, gn, gn], dim=-1)
        x = x.reshape(*x.shape[:-1], cfg.nheads, cfg.headdim).float()
        rep = cfg.nheads // cfg.ngroups
        B = B.reshape(*B.shape[:-1], cfg.ngroups, cfg.d_state).float()
        C = C.reshape(*C.shape[:-1], cfg.ngroups, cfg.d_state).float()
        B = B.repeat_interleave(rep, dim=-2)
        C = C.repeat_interleave(rep, dim=-2)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        dt = dt.clamp(cfg.dt_limit[0], cfg.dt_limit[1])
        A = -torch.exp(self.A_log.float())
        return x, B, C, dt, A

    def forward(self, u: torch.Tensor, layer_state: Mamba2LayerState | None = None) -> torch.Tensor:
        cfg = self.cfg
        b, l, _ = u.shape
        z, xbc, dt_raw = torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, cfg.nheads], -1)
        k = cfg.d_conv - 1
        prev = layer_state.conv_states if layer_state is not None else None
        if prev is None:
            prev = xbc.new_zeros(b, cfg.conv_dim, k)
        window = torch.cat([prev, xbc.transpose(1, 2)], dim=-1)  # (b, conv_dim, k + l)
        xbc = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=cfg.conv_dim)
        xbc = F.silu(xbc.transpose(1, 2).contiguous())  # (b, l, conv_dim)
        x, B, C, dt, A = self.ssm_inputs(xbc, dt_raw)
        ctl = self.control or SSMControl()
        if ctl.dt_scale != 1.0:
            dt = dt * ctl.dt_scale
        if ctl.a_scale != 1.0:
            A = A * ctl.a_scale
        if ctl.b_scale != 1.0:
            B = B * ctl.b_scale
        if ctl.b_clip is not None:
            B = B.clamp(-ctl.b_clip, ctl.b_clip)
        offset = math.log(ctl.decay_scale)
        bound = ctl.bound_tensor(cfg.nheads, x.device)
        state = layer_state.recurrent_states if layer_state is not None else None
        if self.probe is not None:
            self.probe(x=x, B=B, C=C, dt=dt, log_decay=dt * A + offset)
        if ctl.window is not None:
            past = layer_state.window if layer_state is not None else None
            if past is not None and past.xdt.shape[1] != ctl.window:
                raise ValueError(
                    f"the cache was filled with window {past.xdt.shape[1]}, the layer now has "
                    f"window {ctl.window}: start a new cache"
                )
            if l == 1 and past is not None:
                y, past = ssd_window_step(past, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], offset)
                y = y[:, None]
            else:
                y, past = ssd_window_scan(
                    x, dt, A, B, C, ctl.window, cfg.chunk_size, past, offset, cfg.ngroups
                )
            if layer_state is not None:
                layer_state.window, state = past, past.state
        else:
            if layer_state is not None and layer_state.window is not None:
                raise ValueError(
                    "the cache holds a sliding window, the layer has none: start a new cache"
                )
            if l == 1 and state is not None:
                y, state = ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], offset, bound)
                y = y[:, None]
            else:
                y, state = ssd_chunked(x, dt, A, B, C, cfg.chunk_size, state, offset, bound)
        if layer_state is not None:
            layer_state.conv_states = window[..., window.shape[-1] - k :]
            layer_state.recurrent_states = state
        y = y + x * self.D.float()[:, None]
        y = self.norm(y.reshape(b, l, cfg.d_inner).to(u.dtype), z)
        return self.out_proj(y)


class Mamba2Block(nn.Module):
    """Pre-norm residual block around the mixer."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def forward(self, x: torch.Tensor, layer_state: Mamba2LayerState | None = None):
        residual = x.float() if self.residual_in_fp32 else x
        return residual + self.mixer(self.norm(x.to(self.norm.weight.dtype)), layer_state)


class Mamba2Backbone(nn.Module):
    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Mamba2Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


@dataclass
class Mamba2Output:
    logits: torch.Tensor
    cache: Mamba2Cache | None = None
    loss: torch.Tensor | None = None


class Mamba2ForCausalLM(nn.Module):
    """Mamba-2 language model with the `transformers` module layout and calling convention."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = Mamba2Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for layer in self.backbone.layers:
            m = layer.mixer
            nn.init.normal_(m.in_proj.weight, std=0.02)
            # residual projections scaled by depth (GPT-2 style)
            nn.init.normal_(m.out_proj.weight, std=0.02 / math.sqrt(2 * self.config.n_layer))
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Mamba2Cache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
    ) -> Mamba2Output:
        if use_cache and cache is None:
            cache = Mamba2Cache(self.config.n_layer)
        x = self.backbone.embeddings(input_ids)
        for i, layer in enumerate(self.backbone.layers):
            x = layer(x, cache.layers[i] if cache is not None else None)
        x = self.backbone.norm_f(x.to(self.backbone.norm_f.weight.dtype))
        logits = self.lm_head(x.to(self.lm_head.weight.dtype))
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return Mamba2Output(logits=logits, cache=cache if use_cache else None, loss=loss)

    # ----------------------------------------------------------- checkpoint layout

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Mamba2ForCausalLM:
        """Load a Mamba-2 checkpoint directory in either layout, told apart by its
        config.json: the `transformers` one (``model_type: "mamba2"``, written by
        ``Mamba2ForCausalLM.save_pretrained``) or the original ``mamba_ssm`` one
        (``d_model``, ``n_layer``, ``ssm_cfg``, ...). Weights: model.safetensors, a
        sharded safetensors index, or pytorch_model.bin."""
        path = Path(path)
        cfile = path / "config.json"
        if not cfile.exists():
            raise FileNotFoundError(f"{cfile} not found: not a Mamba-2 checkpoint directory")
        raw = json.loads(cfile.read_text())
        layout = checkpoint_layout(raw)
        if layout is None:
            raise ValueError(
                f"{cfile} is not a Mamba-2 config: it has model_type={raw.get('model_type')!r} "
                "(transformers layout: 'mamba2') and no d_model/n_layer/ssm_cfg (mamba_ssm layout)"
            )
        cfg = (
            Mamba2Config.from_hf(raw)
            if layout == "transformers"
            else Mamba2Config.from_mamba_ssm(raw)
        )
        state = _read_weights(path)
        state = {k.replace("embedding.", "embeddings."): v for k, v in state.items()}
        model = cls(cfg)
        expected = set(model.state_dict())
        if cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
            expected.discard("lm_head.weight")
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not match Mamba2ForCausalLM: missing keys {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''}"
            )
        own = model.state_dict()
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(
                    f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the config gives "
                    f"{tuple(own[k].shape)}"
                )
        model.load_state_dict(state, strict=False)
        if dtype is not None:
            model = model.to(dtype)
        return model.to(device).eval()

    @classmethod
    def from_transformers(cls, model: nn.Module) -> Mamba2ForCausalLM:
        """Our Mamba-2 over the parameters of a `transformers` ``Mamba2ForCausalLM``: the
        same tensors, not copies (no memory is added, and a change to either model's
        weights is seen by both), so the collapse toolkit can change its SSM."""
        hf_cfg = getattr(model, "config", None)
        model_type = getattr(hf_cfg, "model_type", None)
        if model_type != "mamba2" or not hasattr(model, "lm_head"):
            raise TypeError(
                f"{type(model).__name__} (model_type {model_type!r}) is not a transformers "
                "Mamba2ForCausalLM"
            )
        cfg = Mamba2Config.from_hf(hf_cfg.to_dict())
        with torch.device("meta"):
            ours = cls(cfg)
        theirs = dict(model.named_parameters(remove_duplicate=False))
        for name, mine in list(ours.named_parameters(remove_duplicate=False)):
            if name not in theirs or theirs[name].shape != mine.shape:
                raise TypeError(
                    f"{type(model).__name__} does not match its config: parameter {name} "
                    f"{'is missing' if name not in theirs else 'has another shape'}"
                )
            owner, _, leaf = name.rpartition(".")
            ours.get_submodule(owner)._parameters[leaf] = theirs[name]
        return ours.train(model.training)

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write config.json (the `transformers` Mamba2Config layout, plus ``extra`` under
        ``"longseq"``) and model.safetensors; `transformers` loads it as it is."""
        from longseq.utils import save_safetensors

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        save_safetensors(state, path / "model.safetensors", metadata={"format": "pt"})
        hf = self.config.to_hf()
        if extra:
            hf["longseq"] = extra
        (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        return path


def checkpoint_layout(config: dict) -> str | None:
    """``"transformers"``, ``"mamba_ssm"`` or None (not a Mamba-2 config) for the
    contents of a checkpoint's config.json."""
    if config.get("model_type") == "mamba2":
        return "transformers"
    ours_or_other = "model_type" in config or "architecture" in config
    mamba_ssm = "ssm_cfg" in config or {"d_model", "n_layer", "vocab_size"} <= set(config)
    return "mamba_ssm" if mamba_ssm and not ours_or_other else None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").exists():
        return load_file(str(path / "model.safetensors"))
    if (path / "model.safetensors.index.json").exists():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    if (path / "pytorch_model.bin").exists():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"no weights in {path}: none of model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin"
    )
