"""Byte-level text: a real corpus that is on every machine, and the passkey task.

The corpus is the Python standard library's own source (``*.py`` under the running
interpreter's stdlib), read as UTF-8 bytes in a fixed file order; files are split
into train and validation by a hash of their path. Tokens are bytes (vocabulary 256).

The passkey task follows the Stuffed Mamba / Landmark-attention format::

    There is an important info hidden inside a lot of irrelevant text. Find it and
    memorize it. <filler ...> The passkey is 12345. Remember it. 12345 is the passkey.
    <filler ...> What is the pass key? The passkey is

with the filler "The grass is green. The sky is blue. The sun is yellow. Here we go.
There and back again." repeated; the model must continue with the 5 digits.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PASSKEY_PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
)
PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
PASSKEY_SUFFIX = "What is the pass key? The passkey is"


def needle(key: str) -> str:
    return f"The passkey is {key}. Remember it. {key} is the passkey. "


class ByteTokenizer:
    vocab_size = 256
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "idlelib", "lib2to3", "tkinter")
    files = [p for p in sorted(root.rglob("*.py")) if not any(s in p.parts for s in skip)]
    if not files:
        raise FileNotFoundError(f"no Python sources under {root}")
    return files


def stdlib_corpus(split: str = "train", max_bytes: int | None = None) -> np.ndarray:
    """The stdlib sources of a split (~95% train / 5% val by file) as one uint8 array."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    chunks, total = [], 0
    for p in stdlib_files():
        h = int(hashlib.sha256(p.name.encode()).hexdigest(), 16) % 20
        if (h == 0) != (split == "val"):
            continue
        data = p.read_bytes()
        chunks.append(np.frombuffer(data, dtype=np.uint8))
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    out = np.concatenate(chunks)
    return out[:max_bytes] if max_bytes is not None else out


@dataclass(frozen=True)
class PasskeySample:
    ids: torch.Tensor  # prompt bytes (1-d)
    key: str
    depth: float


def passkey_prompt(
    length: int,
    depth: float,
    rng: np.random.Generator,
    encode: Callable[[str], list[int]] | None = None,
) -> PasskeySample:
    """A passkey prompt of about ``length`` tokens with the needle at ``depth`` in [0, 1].

    ``encode`` (text -> token ids, no special tokens) builds it in a tokenizer's tokens:
    the prefix, filler, needle and question are encoded once each and the filler repeated
    as tokens, so the length is counted in tokens; the default is UTF-8 bytes."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    encode = encode or _utf8
    key = "".join(str(d) for d in rng.integers(0, 10, 5))
    prefix, filler, need, suffix = (
        encode(t) for t in (PASSKEY_PREFIX, PASSKEY_FILLER, needle(key), PASSKEY_SUFFIX)
    )
    fixed = len(prefix) + len(need) + len(suffix)
    n_fill = max(0, (length - fixed) // len(filler))
    before = round(n_fill * depth)
    ids = prefix + filler * before + need + filler * (n_fill - before) + suffix
    return PasskeySample(torch.tensor(ids, dtype=torch.long), key, depth)


def passkey_fixed_length(encode: Callable[[str], list[int]] | None = None) -> int:
    """Tokens of a passkey prompt without filler (its shortest length)."""
    encode = encode or _utf8
    return sum(len(encode(t)) for t in (PASSKEY_PREFIX, needle("00000"), PASSKEY_SUFFIX))


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def passkey_training_text(length: int, rng: np.random.Generator) -> bytes:
    """A passkey document with its answer, about ``length`` bytes, at a random depth."""
    s = passkey_prompt(length - 7, float(rng.uniform()), rng)
    return bytes(s.ids.tolist()) + f" {s.key}.".encode()


def lm_batch(
    corpus: np.ndarray,
    batch: int,
    seq_len: int,
    rng: np.random.Generator,
    passkey_frac: float = 0.0,
) -> torch.Tensor:
    """(batch, seq_len + 1) byte windows: random corpus slices, a share of them passkey
    documents (right-aligned so the answer is always inside the window)."""
    out = np.empty((batch, seq_len + 1), dtype=np.int64)
    for i in range(batch):
        if rng.random() < passkey_frac:
            doc = np.frombuffer(passkey_training_text(seq_len + 1, rng), dtype=np.uint8)
            filler = corpus[(s := rng.integers(0, len(corpus) - seq_len - 1)) : s + seq_len + 1]
            row = np.concatenate([filler, doc])[-(seq_len + 1) :]
        else:
            s = rng.integers(0, len(corpus) - seq_len - 1)
            row = corpus[s : s + seq_len + 1]
        out[i] = row
    return torch.from_numpy(out)
