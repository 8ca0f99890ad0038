"""Data-parallel evaluation: the answers of :func:`longseq.power.evaluate` shared out
over the processes of ``torchrun`` (or ``accelerate launch``).

    torchrun --nproc-per-node 8 -m longseq power eval math500.jsonl --model ~/models/m ...

Each answer (problem, sample) has its own seed, so it is the same wherever it runs.
The answers still to sample are dealt round-robin to the ranks (answer i to rank
i mod K, in the order of a one-process run); each rank appends its answers to its own
file, ``OUT/METHOD.rank{r}-of-{K}.jsonl`` (the run's header plus the rank), and at the
end rank 0 merges every file into ``OUT/METHOD.jsonl``, in the order and with the
header of a one-process run, and removes the rank files. A resumed run reads every
rank file there is, whatever world size wrote it, so a run killed on one rank resumes
on any number of processes. ``torch.distributed`` carries only the barriers and the
gathered notes; the process group is joined by :func:`longseq.utils.setup_distributed`,
as in the training scripts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Ranks:
    """This process's place among the evaluating processes. ``barrier`` waits for all of
    them; ``all_gather`` returns every rank's ``obj``, in rank order. One process: rank
    0 of 1, both immediate."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank must be in [0, world_size); got rank {self.rank} of {self.world_size}"
            )

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def current() -> Ranks:
    """The ranks of ``torch.distributed``'s default group when it is initialized, else
    one process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def shard(items: list, ranks: Ranks) -> list:
    """The items of rank r: those at positions r, r + K, r + 2K, ... (balanced to one
    item, the same on every rank and every run)."""
    return items[ranks.rank :: ranks.world_size]


def rank_file(path: Path, rank: int, world_size: int) -> Path:
    """``OUT/METHOD.rank{r}-of-{K}.jsonl`` for the results file ``OUT/METHOD.jsonl``."""
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def rank_files(path: Path) -> list[Path]:
    """The rank files of ``path`` on disk, any world size, ordered by (world size, rank)."""
    pattern = re.compile(rf"{re.escape(path.stem)}\.rank(\d+)-of-(\d+){re.escape(path.suffix)}")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.append(((int(m[2]), int(m[1])), p))
    return [p for _, p in sorted(found)]
