"""Data-parallel `evaluate` / `power eval` under torchrun: the answers are shared out over
the ranks and merged into the file and summary one process gives, and a run killed on
any rank resumes on any number of processes."""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.power import SamplerConfig, evaluate, parallel
from longseq.power import evaluation as ev
from longseq.power.problems import Problem
from longseq.utils import launched, setup_distributed

TIMES = ("seconds", "cpu_seconds")
SRC = Path(__file__).resolve().parents[2] / "src"


def _problems():
    terms = [(7, 8, 2), (34, 81, 82), (5, 61, 9), (12, 3, 40), (99, 98, 97)]
    return [
        Problem(f"p{i}", "exact", "+".join(map(str, t)) + "=", str(sum(t)))
        for i, t in enumerate(terms)
    ]


CFG = SamplerConfig("smc", n_particles=4, block_size=4, ramp_tokens=8, max_new_tokens=24, seed=1)


pytestmark = pytest.mark.usefixtures("one_thread")


class ThreadRanks:
    """K ranks as K threads of this process: what `evaluate` asks of a process group."""

    def __init__(self, rank, world_size, sync, board):
        self.rank, self.world_size, self._sync, self._board = rank, world_size, sync, board

    def barrier(self):
        self._sync.wait()

    def all_gather(self, obj):
        self._board[self.rank] = obj
        self._sync.wait()
        out = list(self._board)
        self._sync.wait()
        return out


def _run_ranks(world_size, fn):
    """fn(ranks) on `world_size` threads at once; their results in rank order."""
    sync, board = threading.Barrier(world_size, timeout=120), [None] * world_size
    with ThreadPoolExecutor(world_size) as pool:
        futures = [
            pool.submit(fn, ThreadRanks(r, world_size, sync, board)) for r in range(world_size)
        ]
        return [f.result() for f in futures]


def _lines(path):
    """Header and rows of a results file, the times left out (they differ run to run)."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    return lines[0], [{k: v for k, v in r.items() if k not in TIMES} for r in lines[1:]]


def _same_summary(a, b):
    strip = lambda s: {k: v for k, v in s.items() if k not in (*TIMES, "out")}  # noqa: E731
    assert strip(a) == strip(b)


def test_shards_are_round_robin_balanced_and_cover_every_item():
    items = list(range(23))
    for k in (1, 2, 3, 5, 23, 30):
        shards = [parallel.shard(items, parallel.Ranks(r, k)) for r in range(k)]
        assert sorted(x for s in shards for x in s) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert all(x % k == r for r, s in enumerate(shards) for x in s)


def test_rank_files_are_found_for_any_world_size(tmp_path):
    out = tmp_path / "smc.jsonl"
    assert parallel.rank_file(out, 1, 4) == tmp_path / "smc.rank1-of-4.jsonl"
    for name in ("smc.rank1-of-2.jsonl", "smc.rank0-of-2.jsonl", "smc.rank2-of-3.jsonl"):
        (tmp_path / name).write_text("")
    for name in ("mh.rank0-of-2.jsonl", "smc.jsonl", "smc.rank0-of-2.jsonl.tmp"):
        (tmp_path / name).write_text("")
    found = [p.name for p in parallel.rank_files(out)]
    assert found == ["smc.rank0-of-2.jsonl", "smc.rank1-of-2.jsonl", "smc.rank2-of-3.jsonl"]
    with pytest.raises(ValueError, match="rank must be in"):
        parallel.Ranks(2, 2)


def test_without_torchrun_nothing_is_initialized(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not launched()
    assert setup_distributed(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert parallel.current() == parallel.Ranks(0, 1)


@pytest.mark.parametrize("world_size, batch_size", [(2, 1), (3, 2)])
def test_ranks_merge_into_the_file_and_summary_of_one_process(
    arith_model, tmp_path, world_size, batch_size
):
    model, codec = arith_model
    problems = _problems()
    one = evaluate(
        model, codec, problems, CFG, out=tmp_path / "1/smc.jsonl", samples=2, progress=False
    )
    out = tmp_path / "k/smc.jsonl"
    summaries = _run_ranks(
        world_size,
        lambda ranks: evaluate(
            model,
            codec,
            problems,
            CFG,
            out=out,
            samples=2,
            progress=False,
            ranks=ranks,
            batch_size=batch_size,
        ),
    )
    assert _lines(out) == _lines(tmp_path / "1/smc.jsonl")
    assert [p.name for p in out.parent.iterdir()] == ["smc.jsonl"]  # rank files merged
    for s in summaries:
        _same_summary(s.to_dict(), one.to_dict())


def test_a_killed_run_resumes_from_every_rank_file_on_another_world_size(
    arith_model, tmp_path, monkeypatch
):
    model, codec = arith_model
    problems = _problems()
    ref = tmp_path / "ref.jsonl"
    evaluate(model, codec, problems, CFG, out=ref, samples=2, progress=False)
    text = ref.read_text().splitlines()
    head, rows = json.loads(text[0]), text[1:]
    # what two ranks left when killed: rank 0 cut in the middle of a line
    out = tmp_path / "run/smc.jsonl"
    out.parent.mkdir()
    for r, kept in ((0, rows[0:7:2]), (1, rows[1:4:2])):
        f = parallel.rank_file(out, r, 2)
        f.write_text("\n".join([json.dumps({**head, "rank": r, "world_size": 2}), *kept]) + "\n")
    with parallel.rank_file(out, 0, 2).open("a") as f:
        f.write(rows[9][:40])
    sampled = []
    real = ev.run_sampler

    def counting(model, ids, cfg, eos, tokenizer, seed):
        sampled.append(seed)
        return real(model, ids, cfg, eos, tokenizer, seed)

    monkeypatch.setattr(ev, "run_sampler", counting)
    summaries = _run_ranks(
        3,
        lambda ranks: evaluate(
            model, codec, problems, CFG, out=out, samples=2, progress=False, ranks=ranks
        ),
    )
    assert len(sampled) == len(rows) - 6  # 4 + 2 answers were on file
    assert _lines(out) == _lines(ref)
    assert [p.name for p in out.parent.iterdir()] == ["smc.jsonl"]
    assert summaries[0].correct == sum(json.loads(r)["correct"] for r in rows)


def test_one_process_finishes_a_killed_parallel_run(arith_model, tmp_path):
    model, codec = arith_model
    problems = _problems()
    ref = tmp_path / "ref.jsonl"
    evaluate(model, codec, problems, CFG, out=ref, progress=False)
    text = ref.read_text().splitlines()
    out = tmp_path / "run/smc.jsonl"
    out.parent.mkdir()
    head = {**json.loads(text[0]), "rank": 1, "world_size": 2}
    parallel.rank_file(out, 1, 2).write_text(json.dumps(head) + "\n" + text[2] + "\n")
    evaluate(model, codec, problems, CFG, out=out, progress=False)
    assert _lines(out) == _lines(ref)
    assert [p.name for p in out.parent.iterdir()] == ["smc.jsonl"]


def test_a_rank_file_of_other_settings_is_refused_in_one_line(arith_model, tmp_path):
    model, codec = arith_model
    problems = _problems()[:2]
    out = tmp_path / "smc.jsonl"
    evaluate(model, codec, problems, CFG, out=tmp_path / "one.jsonl", progress=False)
    head = json.loads((tmp_path / "one.jsonl").read_text().splitlines()[0])
    parallel.rank_file(out, 0, 2).write_text(json.dumps({**head, "rank": 0}) + "\n")
    with pytest.raises(ValueError) as e:
        evaluate(model, codec, problems, CFG, out=out, samples=3, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "smc.rank0-of-2.jsonl" in msg
    assert "samples (--samples) was 1, now 3" in msg


def test_torchrun_with_two_cpu_processes_gives_the_one_process_results(tmp_path):
    args = ["power", "eval", "arith", "--limit", "5", "--method", "smc", "--method", "temp-1"]
    args += ["--particles", "4", "--block-size", "4", "--max-new-tokens", "24", "--samples"]
    args += ["2", "--batch-size", "2", "--seed", "2"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(COLUMNS="300")  # one line per message
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    cmd += ["2", "-m", "longseq", *args, "--out", str(tmp_path / "two")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "x 2 processes" in run.stdout and run.stdout.count("power eval:") == 1
    for method in ("smc", "temp-1"):
        assert _lines(tmp_path / f"two/{method}.jsonl") == _lines(tmp_path / f"one/{method}.jsonl")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "smc.jsonl",
        "summary.json",
        "temp-1.jsonl",
    ]
    one = json.loads((tmp_path / "one/summary.json").read_text())
    two = json.loads((tmp_path / "two/summary.json").read_text())
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        _same_summary(a, b)
    # other settings on resume: every rank stops, rank 0 says why in one line
    cmd[cmd.index("--samples") + 1] = "3"
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stdout.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1, run.stdout
    assert "samples (--samples) was 2, now 3" in errors[0]
