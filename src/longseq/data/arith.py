"""Multi-step addition with a "shortcut trap": the task behind the Power-SMC demo.

A problem is ``a+b+c=`` with two-digit operands. The training text answers it in
one of two ways:

* worked (probability ``1 - p_guess``): ``S`` then the steps and the answer,
  ``S47+85=132;132+23=155>155`` -- every token is determined by the problem;
* guess (probability ``p_guess``): ``G>`` then a number drawn uniformly from
  ``answer - spread .. answer + spread``, right only one time in ``2*spread + 1``.

This mirrors what power sampling is for: the shortcut's first token is the more
likely one, but its probability mass is spread over many continuations, so a
token-level low temperature (which only looks one token ahead) prefers it even
more, while the sequence-level power distribution p(y)^alpha concentrates on the
worked answer whose single continuation carries all of its mass. Answers are
checked exactly by :func:`verify`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
CHARS = "0123456789+=;>SG"


class CharTokenizer:
    """Character-level tokenizer with pad/bos/eos specials."""

    def __init__(self, chars: str = CHARS) -> None:
        self.itos = [PAD, BOS, EOS, *chars]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        bad = sorted({ch for ch in text if ch not in self.stoi})
        if bad:
            raise ValueError(f"characters {bad} are not in the vocabulary {CHARS!r}")
        ids = [self.stoi[ch] for ch in text]
        return ([self.bos_token_id] if bos else []) + ids + ([self.eos_token_id] if eos else [])

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        out = []
        for i in ids.tolist() if torch.is_tensor(ids) else ids:
            if i == self.eos_token_id and stop_at_eos:
                break
            if i >= 3:
                out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.itos[3:])}


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "+".join(str(x) for x in self.operands) + "="

    @property
    def answer(self) -> int:
        return sum(self.operands)

    def worked(self) -> str:
        steps, acc = [], self.operands[0]
        for x in self.operands[1:]:
            steps.append(f"{acc}+{x}={acc + x}")
            acc += x
        return "S" + ";".join(steps) + f">{acc}"

    def guess(self, rng: np.random.Generator, spread: int) -> str:
        return f"G>{self.answer + int(rng.integers(-spread, spread + 1))}"


@dataclass(frozen=True)
class ArithTask:
    """Problem distribution. Defaults are the ones the shipped model was trained on."""

    n_operands: int = 3
    low: int = 10  # operands are two-digit numbers in [low, high]
    high: int = 99
    p_guess: float = 0.65  # share of training answers that take the shortcut
    spread: int = 8  # a guess is uniform on answer +- spread

    def is_heldout(self, p: Problem) -> bool:
        """Deterministic 10% of all problems never appear in training."""
        h = 0
        for x in p.operands:
            h = (h * 1_000_003 + x) % 2_147_483_647
        return (h * 2654435761) % 2_147_483_647 % 10 == 0

    def sample_problems(self, n: int, split: str, seed: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = np.random.default_rng(seed)
        out: list[Problem] = []
        while len(out) < n:
            ops = tuple(int(v) for v in rng.integers(self.low, self.high + 1, self.n_operands))
            p = Problem(ops)
            if self.is_heldout(p) == (split == "test"):
                out.append(p)
        return out

    def training_text(self, p: Problem, rng: np.random.Generator) -> str:
        return p.guess(rng, self.spread) if rng.random() < self.p_guess else p.worked()

    def max_new_tokens(self) -> int:
        """Longest answer (worked form) plus EOS."""
        biggest = Problem((self.high,) * self.n_operands)
        return len(biggest.worked()) + 1


def verify(problem: Problem, completion: str) -> bool:
    """True when the completion ends with ``>N`` and N is the right answer."""
    m = re.search(r">(\d+)$", completion)
    return m is not None and int(m.group(1)) == problem.answer


def make_batch(
    task: ArithTask,
    tok: CharTokenizer,
    batch_size: int,
    seed: int,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch: (input_ids, labels); prompt and padding are masked with -100."""
    rng = np.random.default_rng(seed)
    problems = task.sample_problems(batch_size, "train", seed=int(rng.integers(2**31)))
    ids = torch.full((batch_size, block_size), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, block_size), -100, dtype=torch.long)
    for i, p in enumerate(problems):
        prompt = tok.encode(p.prompt, bos=True)
        full = prompt + tok.encode(task.training_text(p, rng), eos=True)
        ids[i, : len(full)] = torch.tensor(full)
        labels[i, len(prompt) : len(full)] = torch.tensor(full[len(prompt) :])
    return ids, labels


def encode_prompts(problems: list[Problem], tok: CharTokenizer) -> torch.Tensor:
    """Prompts as one (n, prompt_len) tensor; all prompts of a task have one length."""
    rows = [tok.encode(p.prompt, bos=True) for p in problems]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("prompts of different lengths cannot be batched")
    return torch.tensor(rows, dtype=torch.long)
