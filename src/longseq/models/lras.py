"""A local random-access sequence (LRAS-style) model of frame pairs.

Frames are cut into ``patch`` x ``patch`` pixel patches; a local patch quantizer
(:class:`PatchQuantizer`, a k-means codebook over raw patch pixels) gives each
patch a code. Frame 1 is modelled autoregressively in a random order of patch
slots: the sequence interleaves a *pointer* (which slot comes next) and a
*content* token (that slot's patch), and the model predicts the code of the patch
at every pointer, so it can be asked for any patch given frame 0 and any subset of
frame-1 patches. Patches enter the network as pixels (a linear embedding, as a
ViT's), so conditioning keeps sub-patch detail; at each pointer the network
predicts a patch, and the distribution over codes scores every codeword by its
squared distance to it (plus a learned per-code bias), so carrying content over
from frame 0 is a linear map and the codes follow. Slots carry learned embeddings
and 2-D rotary positions in attention.

The sequence is laid out in three parts, which is equivalent to the interleaved
``P1 C1 P2 C2 ...`` order under a causal mask, but lets every query run in one
forward pass:

    [frame-0 tokens (all slots)] [frame-1 content tokens, in order] [pointer tokens]

* frame-0 tokens attend to each other (frame 0 is given whole);
* content token k attends to frame 0 and content tokens 0..k;
* pointer token k attends to frame 0, content tokens 0..k-1 and itself, and
  predicts the code of slot ``order[k]``.

At inference :meth:`LRAS.predict` reveals a set of frame-1 patches and asks for
any number of other slots at once: every pointer then sees the whole revealed set
(the training condition of the pointer at position ``len(revealed)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.models.config import ConfigDict
from longseq.models.gpt import MLP


@dataclass
class LRASConfig(ConfigDict):
    image_size: int = 32
    patch: int = 4
    codebook_size: int = 512
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    rope: bool = True  # 2-D rotary positions of the patch slots in attention
    rope_base: float = 16.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def n_slots(self) -> int:
        return self.grid**2


class PatchQuantizer(nn.Module):
    """Nearest-codeword quantizer of ``patch`` x ``patch`` x 3 pixel patches
    (values scaled to [0, 1]). The codebook is fit by k-means (:meth:`fit`)."""

    def __init__(self, codebook_size: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.register_buffer("codebook", torch.zeros(codebook_size, patch * patch * 3))

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 or float in [0, 255] -> (B, n_slots, p*p*3) in [0, 1]."""
        b, h, w, c = images.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = images.float().div(255.0).reshape(b, h // p, p, w // p, p, c)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, n_slots, p*p*3) in [0, 1] -> (B, H, W, 3) in [0, 255]."""
        b, p = patches.shape[0], self.patch
        x = patches.reshape(b, h // p, w // p, p, p, 3).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, 3) * 255.0

    def assign(self, patches: torch.Tensor) -> torch.Tensor:
        """Nearest codes (B, N) of patches (B, N, p*p*3) in [0, 1]."""
        d = torch.cdist(patches, self.codebook[None].expand(patches.shape[0], -1, -1))
        return d.argmin(-1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B, n_slots) of (B, H, W, 3) images."""
        return self.assign(self.patchify(images.to(self.codebook.device)))

    def decode(self, codes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.unpatchify(self.codebook[codes], h, w)

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, iters: int = 20, seed: int = 0) -> float:
        """k-means on (N, p*p*3) patches; returns the final mean squared error."""
        g = torch.Generator().manual_seed(seed)
        k = self.codebook.shape[0]
        if len(patches) < k:
            raise ValueError(f"need at least {k} patches to fit {k} codes, got {len(patches)}")
        centers = patches[torch.randperm(len(patches), generator=g)[:k]].clone()
        for _ in range(iters):
            assign = torch.cdist(patches, centers).argmin(-1)
            sums = torch.zeros_like(centers).index_add_(0, assign, patches)
            counts = torch.bincount(assign, minlength=k).float()
            empty = counts == 0  # re-seed dead codes on random patches
            centers = sums / counts.clamp(min=1)[:, None]
            if empty.any():
                idx = torch.randint(len(patches), (int(empty.sum()),), generator=g)
                centers[empty] = patches[idx]
        self.codebook.copy_(centers)
        assign = torch.cdist(patches, centers).argmin(-1)
        return float((patches - centers[assign]).pow(2).mean())


def rope_angles(slots: torch.Tensor, grid: int, head_dim: int, base: float) -> torch.Tensor:
    """Rotary angles (B, T, head_dim / 2) of patch slots: the first half of the frequency
    pairs rotate with the slot's column, the second half with its row, so attention
    scores depend on the 2-D offset between slots (motion is translation-equivariant)."""
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float32, device=slots.device) / quarter)
    col, row = (slots % grid).float(), (slots // grid).float()
    return torch.cat([col[..., None] * freqs, row[..., None] * freqs], -1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by angles (B, T, D/2); dimensions beyond 2 * len(angles) pass."""
    n = angles.shape[-1]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    x1, x2, rest = x[..., :n], x[..., n : 2 * n], x[..., 2 * n :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)


class MaskedSelfAttention(nn.Module):
    def __init__(self, cfg: LRASConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, angles: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for z in self.c_attn(x).split(c, dim=2)
        )
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: LRASConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = MaskedSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, angles: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, angles)
        return x + self.mlp(self.ln_2(x))


def lras_mask(n0: int, m: int, q: int, device: torch.device, queries_see_all: bool) -> torch.Tensor:
    """Boolean attention mask (True = may attend) for ``n0`` frame-0 tokens, ``m``
    content tokens and ``q`` pointer tokens. With ``queries_see_all`` every pointer
    sees all ``m`` content tokens (inference); otherwise pointer k sees content < k."""
    t = n0 + m + q
    mask = torch.zeros(t, t, dtype=torch.bool, device=device)
    mask[:, :n0] = True  # everyone sees frame 0
    mask[n0 : n0 + m, n0 : n0 + m] = torch.ones(m, m, dtype=torch.bool, device=device).tril()
    if queries_see_all:
        mask[n0 + m :, n0 : n0 + m] = True
    else:
        mask[n0 + m :, n0 : n0 + m] = torch.ones(q, m, dtype=torch.bool, device=device).tril(-1)
    idx = torch.arange(n0 + m, t, device=device)
    mask[idx, idx] = True
    return mask


class LRAS(nn.Module):
    """Random-order autoregressive transformer over a frame pair's patches, with its
    patch quantizer (``self.quantizer``) stored in the same checkpoint. Patches enter
    as pixels (a linear embedding of the 4x4x3 values); the model predicts the
    quantizer's code of each queried frame-1 patch."""

    FRAME0, CONTENT, POINTER = 0, 1, 2

    def __init__(self, cfg: LRASConfig) -> None:
        super().__init__()
        self.config = cfg
        self.quantizer = PatchQuantizer(cfg.codebook_size, cfg.patch)
        self.patch_in = nn.Linear(cfg.patch * cfg.patch * 3, cfg.n_embd)
        self.slot_emb = nn.Embedding(cfg.n_slots, cfg.n_embd)
        self.type_emb = nn.Embedding(3, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        # output: a predicted patch, scored against every codeword by squared distance
        self.head = nn.Linear(cfg.n_embd, cfg.patch * cfg.patch * 3)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.code_bias = nn.Parameter(torch.zeros(cfg.codebook_size))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- the frame-pair protocol of KL-tracing --------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch(self) -> int:
        return self.config.patch

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook

    def frame1_logprobs(
        self, frame0: torch.Tensor, frame1: torch.Tensor, revealed: torch.Tensor
    ) -> torch.Tensor:
        """log-probabilities (B, n_slots, K) of every frame-1 patch's code given frame 0,
        the frame-1 patches at the ``revealed`` (B, n_slots) bool slots (the same count in
        every row) and nothing else: one :meth:`predict` pass whose pointers query every
        hidden slot (frames (B, H, W, 3) in [0, 255]; revealed rows are uniform)."""
        b = frame0.shape[0]
        n_rev = revealed.sum(1)
        if b and not (n_rev == n_rev[0]).all():
            raise ValueError("every row must reveal the same number of slots")
        r = int(n_rev[0]) if b else 0
        order = revealed.float().argsort(dim=1, descending=True, stable=True)
        rev, qry = order[:, :r], order[:, r:]
        p0, p1 = self.quantizer.patchify(frame0), self.quantizer.patchify(frame1)
        content = p1.gather(1, rev[..., None].expand(-1, -1, p1.shape[-1]))
        logp = self.predict(p0, rev, content, qry).float().log_softmax(-1)
        k = logp.shape[-1]
        out = torch.full((b, self.config.n_slots, k), -math.log(k), device=logp.device)
        return out.scatter(1, qry[..., None].expand(-1, -1, k), logp)

    def _tokens(self, patches: torch.Tensor | None, slots: torch.Tensor, kind: int) -> torch.Tensor:
        x = self.slot_emb(slots) + self.type_emb.weight[kind]
        return x if patches is None else x + self.patch_in(patches - 0.5)

    def _run(
        self, x: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor, n_out: int
    ) -> torch.Tensor:
        cfg = self.config
        angles = None
        if cfg.rope:
            angles = rope_angles(slots, cfg.grid, cfg.n_embd // cfg.n_head, cfg.rope_base)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, angles)
        return self.code_logits(self.head(self.ln_f(x[:, -n_out:])) + 0.5)

    def code_logits(self, patch: torch.Tensor) -> torch.Tensor:
        """Logits over codes of predicted patches (..., p*p*3):
        ``-exp(log_scale) * ||patch - codeword||^2 + code_bias``."""
        cb = self.quantizer.codebook
        d2 = (patch**2).sum(-1, keepdim=True) - 2 * patch @ cb.T + (cb**2).sum(-1)
        return -self.log_scale.exp() * d2 + self.code_bias

    def forward(
        self, frame0: torch.Tensor, frame1: torch.Tensor, order: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass on patch tensors (B, n_slots, p*p*3) in [0, 1] (see
        ``quantizer.patchify``). ``order`` (B, M) lists frame-1 slots in generation order
        (M <= n_slots: a prefix of the order); returns logits (B, M, K) for those slots
        and the mean cross-entropy against the quantizer's codes of frame 1."""
        b, n0, _ = frame0.shape
        m = order.shape[1]
        slots0 = torch.arange(n0, device=frame0.device).expand(b, -1)
        content = frame1.gather(1, order[..., None].expand(-1, -1, frame1.shape[-1]))
        target = self.quantizer.assign(content)
        x = torch.cat(
            [
                self._tokens(frame0, slots0, self.FRAME0),
                self._tokens(content, order, self.CONTENT),
                self._tokens(None, order, self.POINTER),
            ],
            1,
        )
        mask = lras_mask(n0, m, m, x.device, queries_see_all=False)
        logits = self._run(x, torch.cat([slots0, order, order], 1), mask, m)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
        return logits, loss

    def predict(
        self,
        frame0: torch.Tensor,
        revealed_slots: torch.Tensor,
        revealed: torch.Tensor,
        query_slots: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, Q, K) of frame-1 codes at ``query_slots`` (B, Q) given all of frame
        0 (B, n_slots, p*p*3) and the revealed frame-1 patches ``revealed`` (B, R, p*p*3)
        at ``revealed_slots`` (B, R)."""
        b, n0, _ = frame0.shape
        slots0 = torch.arange(n0, device=frame0.device).expand(b, -1)
        x = torch.cat(
            [
                self._tokens(frame0, slots0, self.FRAME0),
                self._tokens(revealed, revealed_slots, self.CONTENT),
                self._tokens(None, query_slots, self.POINTER),
            ],
            1,
        )
        r, q = revealed_slots.shape[1], query_slots.shape[1]
        # pointer tokens see frame 0, the revealed patches and themselves, not each other,
        # so any number of queries fit one pass
        mask = lras_mask(n0, r, q, x.device, queries_see_all=True)
        return self._run(x, torch.cat([slots0, revealed_slots, query_slots], 1), mask, q)
