"""Accuracy and wall time of every sampler on held-out problems of the arithmetic task,
all problems decoded as one batch (for any dataset and model, one problem at a time,
see :mod:`longseq.power.evaluation`).

Shared by ``longseq power demo`` and ``benchmarks/power_bench.py``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from longseq.data.arith import ArithTask, CharTokenizer, Problem, encode_prompts, verify
from longseq.power.baselines import best_of_n, mh_power_sample, sample
from longseq.power.smc import power_smc
from longseq.utils import progress_bar, synchronize

METHODS = ("temp-1", "temp-1/alpha", "best-of-n", "mh", "smc-no-ramp", "smc")


@dataclass
class MethodResult:
    method: str
    accuracy: float
    n_problems: int
    seconds: float
    seconds_per_problem: float
    settings: str

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(problems: list[Problem], rows: torch.Tensor, tok: CharTokenizer, plen: int):
    ok = [verify(p, tok.decode(r[plen:])) for p, r in zip(problems, rows.cpu(), strict=True)]
    return sum(ok) / len(ok)


def evaluate_methods(
    model,
    tok: CharTokenizer,
    task: ArithTask,
    problems: list[Problem],
    alpha: float = 4.0,
    n_particles: int = 16,
    block_size: int = 4,
    ramp_tokens: int = 16,
    mh_blocks: int = 4,
    mh_steps: int = 10,
    seed: int = 0,
    methods: tuple[str, ...] = METHODS,
    progress: bool = True,
) -> list[MethodResult]:
    """One answer per problem from each method; all problems decoded as one batch
    (MH runs its chains one after the other, as it must)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {list(METHODS)}")
    device = next(model.parameters()).device
    prompts = encode_prompts(problems, tok).to(device)
    plen = prompts.shape[1]
    max_new = task.max_new_tokens()
    eos = tok.eos_token_id
    results = []
    with progress_bar("methods", len(methods), enabled=progress) as advance:
        for method in methods:
            synchronize(device)
            t0 = time.perf_counter()
            if method in ("temp-1", "temp-1/alpha"):
                temp = 1.0 if method == "temp-1" else 1.0 / alpha
                rows = sample(
                    model,
                    prompts,
                    n=1,
                    temperature=temp,
                    max_new_tokens=max_new,
                    eos_token_id=eos,
                    seed=seed,
                ).sequences
                rows = rows[:, 0] if rows.dim() == 3 else rows.reshape(len(problems), -1)
                settings = f"T={temp:g}"
            elif method == "best-of-n":
                rows = best_of_n(
                    model,
                    prompts,
                    n=n_particles,
                    max_new_tokens=max_new,
                    eos_token_id=eos,
                    seed=seed,
                ).sequences
                rows = rows.reshape(len(problems), -1)
                settings = f"N={n_particles}"
            elif method in ("smc", "smc-no-ramp"):
                ramp = ramp_tokens if method == "smc" else 0
                out = power_smc(
                    model,
                    prompts,
                    alpha=alpha,
                    n_particles=n_particles,
                    max_new_tokens=max_new,
                    eos_token_id=eos,
                    block_size=block_size,
                    ramp_tokens=ramp,
                    seed=seed,
                )
                rows = out.sample.reshape(len(problems), -1)
                settings = f"alpha={alpha:g} N={n_particles} block={block_size} ramp={ramp}"
            else:
                outs = mh_power_sample(
                    model,
                    prompts,
                    alpha=alpha,
                    max_new_tokens=max_new,
                    eos_token_id=eos,
                    n_blocks=mh_blocks,
                    mh_steps=mh_steps,
                    seed=seed,
                )
                outs = outs if isinstance(outs, list) else [outs]
                width = max(o.sequence.numel() for o in outs)
                rows = torch.full((len(outs), width), eos, dtype=torch.long)
                for i, o in enumerate(outs):
                    rows[i, : o.sequence.numel()] = o.sequence.cpu()
                settings = f"alpha={alpha:g} blocks={mh_blocks} K={mh_steps}"
            synchronize(device)
            secs = time.perf_counter() - t0
            results.append(
                MethodResult(
                    method,
                    _accuracy(problems, rows, tok, plen),
                    len(problems),
                    secs,
                    secs / len(problems),
                    settings,
                )
            )
            advance()
    return results
