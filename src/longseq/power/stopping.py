"""Stop strings: a particle ends as soon as its generated text contains one.

A stop string ends a sequence exactly like EOS does (it is absorbing, and the token
that completes it is kept), so the target stays p^alpha, over sequences that end at
their first stop string, EOS or the length bound.

Checks are cheap: only live rows are looked at, and only those whose new token could
complete a stop string (its own text contains the last character of one, or is empty
or a partial character); their last few tokens are decoded in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StopStrings:
    """``stops``: non-empty strings; ``tokenizer``: anything with ``decode(list[int])``
    (a `transformers` tokenizer, :class:`longseq.hub.TextCodec`, ...); its
    ``batch_decode`` is used when present."""

    def __init__(self, stops: Sequence[str], tokenizer) -> None:
        if isinstance(stops, str):
            stops = [stops]
        stops = list(stops)
        if not stops or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise ValueError("stop_strings need a tokenizer= with a decode() method")
        self.stops = stops
        self.tokenizer = tokenizer
        # decoded tail: enough tokens to hold the longest stop string even with a few
        # tokens that decode to nothing (partial UTF-8 pieces)
        self.window = max(len(s) for s in stops) + 4
        self._last_chars = {s[-1] for s in stops}
        self._every_token = any(s[-1].isspace() for s in stops)  # leading spaces vanish
        self._may_end: dict[int, bool] = {}

    def _decode(self, rows: list[list[int]]) -> list[str]:
        if hasattr(self.tokenizer, "batch_decode"):
            return list(self.tokenizer.batch_decode(rows))
        return [self.tokenizer.decode(r) for r in rows]

    def _may_complete(self, token: int) -> bool:
        hit = self._may_end.get(token)
        if hit is None:
            text = self._decode([[token]])[0]
            hit = not text or "\ufffd" in text or any(c in text for c in self._last_chars)
            self._may_end[token] = hit
        return hit

    def check(self, tokens: torch.Tensor, t: int, live: torch.Tensor) -> torch.Tensor | None:
        """Rows (bool, like ``live``) whose text up to token ``t`` of ``tokens`` (rows,
        max_len) now contains a stop string; None when no row does."""
        live_rows = torch.nonzero(live).flatten().tolist()
        if not live_rows:
            return None
        new = tokens[:, t].tolist()
        rows = [r for r in live_rows if self._every_token or self._may_complete(new[r])]
        if not rows:
            return None
        lo = max(0, t + 1 - self.window)
        tails = tokens[rows, lo : t + 1].tolist()
        texts = self._decode(tails)
        hits = [r for r, s in zip(rows, texts, strict=True) if any(x in s for x in self.stops)]
        if not hits:
            return None
        out = torch.zeros_like(live)
        out[torch.tensor(hits, device=live.device)] = True
        return out

    def first_end(self, ids: list[int], start: int) -> int | None:
        """The smallest e > ``start`` such that the text of ``ids[:e]`` contains a stop
        string (read through a window of the last tokens), or None. One decode per
        position: for the sequential MH chains, not the batched decoding loop."""
        for e in range(start + 1, len(ids) + 1):
            text = self._decode([ids[max(0, e - self.window) : e]])[0]
            if any(x in text for x in self.stops):
                return e
        return None
