"""`evaluate(..., batch_size=B)` / `power eval --batch-size B`: the same answers as one
problem at a time, on prompts of different lengths, and resumable."""

import json

import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.power import SamplerConfig, evaluate
from longseq.power import evaluation as ev
from longseq.power.problems import Problem

TIMES = ("seconds", "cpu_seconds")


def _problems():
    terms = [(7, 8, 2), (34, 81, 82), (5, 61, 9), (12, 3, 40), (99, 98, 97), (1, 2, 3)]
    return [
        Problem(f"p{i}", "exact", "+".join(map(str, t)) + "=", str(sum(t)))
        for i, t in enumerate(terms)
    ]


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], [{k: v for k, v in r.items() if k not in TIMES} for r in lines[1:]]


@pytest.mark.parametrize("method", ["smc", "temp-1", "best-of-n", "mh"])
def test_batches_give_the_answers_of_one_problem_at_a_time(arith_model, tmp_path, method):
    model, codec = arith_model
    problems = _problems()
    assert len({len(codec.encode(p.question)) for p in problems}) > 1  # padding is used
    cfg = SamplerConfig(
        method,
        n_particles=6,
        block_size=4,
        ramp_tokens=8,
        mh_blocks=2,
        mh_steps=2,
        seed=3,
        max_new_tokens=24,
    )
    one = evaluate(model, codec, problems, cfg, out=tmp_path / "1.jsonl", progress=False)
    four = evaluate(
        model, codec, problems, cfg, out=tmp_path / "4.jsonl", progress=False, batch_size=4
    )
    head1, rows1 = _rows(tmp_path / "1.jsonl")
    head4, rows4 = _rows(tmp_path / "4.jsonl")
    assert head1 == head4 and rows1 == rows4
    assert one.correct == four.correct and one.notes == four.notes


def test_batched_evaluation_resumes(arith_model, tmp_path, monkeypatch):
    model, codec = arith_model
    problems = _problems()
    cfg = SamplerConfig("smc", n_particles=4, block_size=4, max_new_tokens=32)
    out = tmp_path / "smc.jsonl"
    evaluate(model, codec, problems[:3], cfg, out=out, progress=False, batch_size=2)
    sizes = []
    real = ev.run_batch
    monkeypatch.setattr(ev, "run_batch", lambda m, p, *a: sizes.append(len(p)) or real(m, p, *a))
    s = evaluate(model, codec, problems, cfg, out=out, progress=False, batch_size=2)
    assert sizes == [2] and s.n == 6  # problems 4-5 in one batch, then problem 6 alone
    _, rows = _rows(out)
    assert [r["id"] for r in rows] == [p.id for p in problems]
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, codec, problems, cfg, batch_size=0)


def test_cli_batch_size(tmp_path):
    args = ["power", "eval", "arith", "--limit", "4", "--method", "temp-1", "--seed", "1"]
    for b in ("1", "3"):
        res = CliRunner().invoke(app, [*args, "--batch-size", b, "--out", str(tmp_path / b)])
        assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "1" / "temp-1.jsonl") == _rows(tmp_path / "3" / "temp-1.jsonl")
    res = CliRunner().invoke(app, [*args, "--batch-size", "0"])
    assert res.exit_code == 2


def test_batch_benchmark_runs_and_batches_agree(tmp_path, monkeypatch):
    from benchmarks import power_batch

    out = tmp_path / "pb"
    argv = ["power_batch.py", "--problems", "6", "--batch-sizes", "1", "3", "--repeats", "1"]
    argv += ["--skip-llama", "--mh-problems", "0", "--tmp", str(tmp_path), "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    threads = torch.get_num_threads()
    try:
        power_batch.main()
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.with_suffix(".json").read_text())
    rows = res["arith"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 3]
    assert all(r["answers_differing_from_b1"] == 0 for r in rows)
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    assert "| 3 |" in out.with_suffix(".md").read_text()


def test_batches_on_a_model_without_attention_mask():
    """A model whose forward takes no attention mask (here a scripted one) still
    evaluates in batches: its prompts of different lengths decode in groups of one
    length, with the answers of one at a time."""
    from tests.power.test_eval import Scripted, chat_tokenizer

    tok = chat_tokenizer()
    problems = [Problem(f"q{i}", "exact", q, a) for i, (q, a) in enumerate(
        [("2+2=", "4"), ("10+10=", "20"), ("3+3=", "6"), ("100+1=", "101"), ("7=", "7")]
    )]  # fmt: skip
    ids = {p.id: ev.build_prompt(p, tok, chat=False)[0] for p in problems}
    answers = {p.id: tok(p.answer, add_special_tokens=False)["input_ids"] for p in problems}
    model = Scripted(len(tok), {tuple(ids[k]): answers[k] for k in ids}, tok.eos_token_id)
    for method in ("smc", "temp-1"):
        cfg = SamplerConfig(method, n_particles=2, max_new_tokens=8)
        s = evaluate(model, tok, problems, cfg, chat=False, progress=False, batch_size=3)
        assert s.accuracy == 1.0 and s.n == 5


def test_batches_of_samples_give_the_answers_of_one_at_a_time(arith_model, tmp_path):
    """With several samples per problem, the samples (each its own seed) batch too."""
    model, codec = arith_model
    problems = _problems()[:3]
    cfg = SamplerConfig("temp-1", max_new_tokens=24, seed=5)
    for b in (1, 4):
        evaluate(model, codec, problems, cfg, out=tmp_path / f"{b}.jsonl", samples=3,
                 progress=False, batch_size=b)  # fmt: skip
    head1, rows1 = _rows(tmp_path / "1.jsonl")
    head4, rows4 = _rows(tmp_path / "4.jsonl")
    assert head1 == head4 and rows1 == rows4 and len(rows1) == 9
    assert len({r["completion"] for r in rows1 if r["id"] == "p0"}) > 1  # samples differ
