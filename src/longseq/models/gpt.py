"""A small causal language model in the nanoGPT mould, with a KV cache.

The calling convention is the one of `transformers` 5::

    out = model(input_ids, cache=cache, use_cache=True)
    out.logits   # (b, t, vocab)
    out.cache    # pass back with the next tokens to continue every row

The cache mirrors `transformers.DynamicCache`: ``cache.layers[i].keys`` and
``cache.layers[i].values`` are ``(b, n_head, t, head_dim)`` tensors, so the
generic cache utilities in :mod:`longseq.lm` treat both the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from longseq.lm import causal_lm_loss
from longseq.models.config import ConfigDict


@dataclass
class GPTConfig(ConfigDict):
    """Size of the network. Defaults are the shipped ``power-arith-gpt`` model."""

    vocab_size: int = 32
    block_size: int = 64  # longest sequence (prompt + generation) the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    extra: dict = field(default_factory=dict)  # free-form metadata (tokenizer, training run)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    cache: GPTCache | None = None
    loss: torch.Tensor | None = None


class _KVLayer:
    """Keys and values of one attention layer: (b, n_head, t, head_dim).

    ``keys``/``values`` are views of buffers with room to grow (doubled when full), so a
    decoding step writes one position instead of copying the whole cache. Code that
    replaces ``keys``/``values`` with new tensors (row selection) is fine: the next
    update sees they are no longer views of the buffers and starts new ones.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self._k: torch.Tensor | None = None  # (b, n_head, capacity, head_dim)
        self._v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys, self.values = k, v
            return k, v
        n, t = self.keys.shape[2], k.shape[2]
        fits = (
            self._k is not None
            and self._k.shape[0] == k.shape[0]
            and self.keys.data_ptr() == self._k.data_ptr()
            and self.values.data_ptr() == self._v.data_ptr()
            and n + t <= self._k.shape[2]
        )
        if not fits:
            shape = (*self.keys.shape[:2], max(2 * (n + t), 16), self.keys.shape[3])
            self._k, self._v = self.keys.new_empty(shape), self.values.new_empty(shape)
            self._k[:, :, :n], self._v[:, :, :n] = self.keys, self.values
        self._k[:, :, n : n + t], self._v[:, :, n : n + t] = k, v
        self.keys, self.values = self._k[:, :, : n + t], self._v[:, :, : n + t]
        return self.keys, self.values


class GPTCache:
    """Per-layer KV cache. Rows are batch entries; all rows share one length."""

    def __init__(self, n_layer: int) -> None:
        self.layers = [_KVLayer() for _ in range(n_layer)]

    def get_seq_length(self) -> int:
        keys = self.layers[0].keys
        return 0 if keys is None else keys.shape[2]

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (with repeats), like `transformers`' caches."""
        for layer in self.layers:
            if layer.keys is not None:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, layer_cache: _KVLayer | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        # (b, h, t, d)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        past = 0
        if layer_cache is not None:
            past = 0 if layer_cache.keys is None else layer_cache.keys.shape[2]
            k, v = layer_cache.update(k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is not None:  # padded batch: (b, 1, t, past + t) built by GPT.forward
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # several new tokens after a cached prefix: causal within the new block
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, layer_cache: _KVLayer | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer_cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer: token + learned position embeddings, pre-norm blocks,
    tied output head."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2 scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: GPTCache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """``attention_mask`` (b, past + t), 1 on tokens and 0 on padding, and
        ``position_ids`` (b, t) decode a left-padded batch: padding is never attended to
        and each row's positions start at its first token."""
        b, t = input_ids.shape
        if use_cache and cache is None:
            cache = GPTCache(self.config.n_layer)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            pos = torch.arange(past, past + t, device=input_ids.device)
            longest = past + t
        else:
            pos = position_ids
            longest = int(pos.max()) + 1
        if longest > self.config.block_size:
            raise ValueError(
                f"sequence length {longest} exceeds the model's block_size {self.config.block_size}"
            )
        mask = None
        if attention_mask is not None:
            # (b, 1, t, past + t): causal, padding hidden; each position also sees
            # itself, so a padding query is never fully masked (no NaN in the cache)
            keys = torch.arange(past + t, device=input_ids.device)
            query = torch.arange(past, past + t, device=input_ids.device)[:, None]
            mask = (keys <= query) & attention_mask.bool()[:, None, None, :]
            mask = mask | (keys == query)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, cache.layers[i] if cache is not None else None, mask)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:  # labels are aligned with input_ids; -100 is ignored
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutput(logits=logits, cache=cache if use_cache else None, loss=loss)
