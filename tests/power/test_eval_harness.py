"""Evaluation runs: resume that cannot mix or lose answers, samples with pass@k and
maj@k, per-subject accuracy, few-shot prompts and task files."""

import itertools
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.power import SamplerConfig, build_prompt, evaluate, load_problems
from longseq.power import evaluation as ev
from longseq.power.problems import Problem, fewshot_examples
from longseq.power.task import TASKS, load_task
from tests.power.test_eval import Scripted, _Rows, chat_tokenizer

runner = CliRunner()


T1 = SamplerConfig("temp-1", max_new_tokens=32)


def _rows(path):
    """Header and answer rows of a results file, every line parsed (no torn line)."""
    lines = path.read_text().splitlines()
    assert path.read_text().endswith("\n")
    return json.loads(lines[0])["run"], [json.loads(x) for x in lines[1:]]


# --- pass@k and maj@k -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_matches_enumeration_of_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert ev.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        ev.pass_at_k(3, 1, 4)


def test_majority_vote():
    recs = [
        {"prediction": "1/2", "correct": True},
        {"prediction": "3", "correct": False},
        {"prediction": " 1 / 2", "correct": True},
        {"prediction": "", "correct": False},
        {"prediction": "3", "correct": False},
    ]
    assert ev.majority(recs)["correct"] is True  # a 2-2 tie goes to the earliest answer
    assert ev.majority(recs[1:])["prediction"] == "3"
    assert ev.majority([{"prediction": ""}]) is None


class Dice(torch.nn.Module):
    """Answers one of ``faces`` uniformly at random, then ends (a fast random model)."""

    def __init__(self, tok, faces: str):
        super().__init__()
        self.v, self.eos = len(tok), tok.eos_token_id
        self.faces = [tok.convert_tokens_to_ids(f) for f in faces]
        self.config = SimpleNamespace()

    def forward(self, ids, cache=None, use_cache=False):
        full = ids if cache is None else torch.cat([cache.layers[0].keys, ids], dim=1)
        logits = torch.full((ids.shape[0], 1, self.v), -30.0)
        for r, row in enumerate(full.tolist()):
            if row[-1] in self.faces:
                logits[r, 0, self.eos] = 0.0
            else:
                logits[r, 0, self.faces] = 0.0
        return SimpleNamespace(logits=logits, cache=_Rows(full))


def test_samples_give_pass_at_k_and_maj_at_k(tmp_path):
    tok = chat_tokenizer()
    model = Dice(tok, "012")
    problems = [Problem(f"q{i}", "exact", f"Pick {i}?", str(i % 3)) for i in range(8)]
    out = tmp_path / "t.jsonl"
    cfg = SamplerConfig("temp-1", max_new_tokens=4)
    s = evaluate(model, tok, problems, cfg, out=out, samples=5, chat=False, progress=False)
    run, rows = _rows(out)
    assert run["samples"] == 5 and len(rows) == 40
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted(
        (p.id, j) for p in problems for j in range(5)
    )
    # each sample its own stream: the answers to a problem are not all the same
    by = {p.id: [r for r in rows if r["id"] == p.id] for p in problems}
    assert any(len({r["prediction"] for r in rs}) > 1 for rs in by.values())
    c = {pid: sum(r["correct"] for r in rs) for pid, rs in by.items()}
    assert 0 < sum(c.values()) < 40
    for k in (1, 2, 4, 5):
        want = sum(1 - math.comb(5 - ci, k) / math.comb(5, k) for ci in c.values()) / 8
        assert s.pass_at_k[f"pass@{k}"] == pytest.approx(want)
    assert s.accuracy == pytest.approx(sum(c.values()) / 40) and s.correct == sum(c.values())
    maj = 0
    for rs in by.values():  # the most frequent answer, ties to the earliest sample
        count = {r["prediction"]: sum(x["prediction"] == r["prediction"] for x in rs) for r in rs}
        top = next(r for r in rs if count[r["prediction"]] == max(count.values()))
        maj += top["correct"]
    assert s.maj_at_k == pytest.approx(maj / 8)
    # the first sample is the answer a one-sample run gives
    one = evaluate(model, tok, problems, cfg, chat=False, progress=False)
    assert one.correct == sum(by[p.id][0]["correct"] for p in problems)


# --- resume -----------------------------------------------------------------------------


def test_a_torn_last_line_is_rewritten_and_the_file_agrees_with_the_summary(arith_model, tmp_path):
    model, codec = arith_model
    problems = load_problems("arith", limit=5)
    out = tmp_path / "t.jsonl"
    evaluate(model, codec, problems[:4], T1, out=out, progress=False)
    text = out.read_text()
    out.write_text(text[: len(text) - 40])  # killed while writing the 4th answer
    s = evaluate(model, codec, problems, T1, out=out, progress=False)
    _, rows = _rows(out)
    # the three whole answers kept, the torn one redone, the fifth added
    assert [r["id"] for r in rows[:3]] == [p.id for p in problems[:3]]
    assert sorted(r["id"] for r in rows[3:]) == sorted(p.id for p in problems[3:])
    assert len(rows) == s.n == 5 and s.correct == sum(r["correct"] for r in rows)
    # a header cut while being written is started afresh
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text.split("\n")[0][:30])
    assert evaluate(model, codec, problems[:1], T1, out=cut, progress=False).n == 1
    assert len(_rows(cut)[1]) == 1
    # and again: nothing left to do, the same file
    before = out.read_text()
    again = evaluate(model, codec, problems, T1, out=out, progress=False)
    assert out.read_text() == before and again.correct == s.correct


@pytest.mark.parametrize(
    "change, setting",
    [
        (dict(kind="exact"), "grader"),
        (dict(sampler=SamplerConfig("temp-1", max_new_tokens=16)), "max_new_tokens"),
        (dict(sampler=SamplerConfig("temp-1", max_new_tokens=32, stop_strings=[">"])), "--stop"),
        (dict(template="0{problem}"), "--template"),
        (dict(samples=2), "--samples"),
        (dict(fewshot=1), "--fewshot"),
        (dict(task="gsm8k"), "task"),
    ],
)
def test_resume_refuses_other_settings_naming_them(arith_model, tmp_path, change, setting):
    model, codec = arith_model
    problems = load_problems("arith", limit=2)
    out = tmp_path / "t.jsonl"
    evaluate(model, codec, problems, T1, out=out, progress=False)
    kw = dict(sampler=T1, progress=False, out=out)
    if "kind" in change:
        problems = load_problems("arith", limit=2, kind=change.pop("kind"))
        problems = [Problem(p.id, "math", p.question, p.answer) for p in problems]
    kw.update(change)
    with pytest.raises(ValueError, match=setting) as e:
        evaluate(model, codec, problems, **kw)
    assert "\n" not in str(e.value)


def test_code_timeout_is_recorded_for_code(tmp_path):
    tok = chat_tokenizer()
    p = load_problems("humaneval", limit=1)
    model = Scripted(len(tok), {}, tok.eos_token_id)
    out = tmp_path / "c.jsonl"
    cfg = SamplerConfig("temp-1", max_new_tokens=4)
    evaluate(model, tok, p, cfg, out=out, chat=False, code_timeout=5, progress=False)
    assert _rows(out)[0]["code_timeout"] == 5
    with pytest.raises(ValueError, match="code_timeout"):
        evaluate(model, tok, p, cfg, out=out, chat=False, code_timeout=9, progress=False)


def test_settings_a_method_does_not_use_are_not_compared(arith_model, tmp_path):
    model, codec = arith_model
    problems = load_problems("arith", limit=2)
    out = tmp_path / "t.jsonl"
    evaluate(model, codec, problems, T1, out=out, progress=False)
    other = SamplerConfig("temp-1", max_new_tokens=32, block_size=3, mh_blocks=2, ramp_tokens=9)
    s = evaluate(model, codec, problems, other, out=out, progress=False)
    assert s.n == 2 and "block_size" not in _rows(out)[0]["sampler"]
    smc = SamplerConfig("smc", n_particles=2, max_new_tokens=32)
    assert "mh_blocks" not in smc.used() and "block_size" in smc.used()


# --- per subject and level ----------------------------------------------------------------


def test_accuracy_per_subject_and_level():
    pytest.importorskip("math_verify")
    tok = chat_tokenizer()
    problems = load_problems("math")
    rng = random.Random(0)
    right = {p.id: rng.random() < 0.5 for p in problems}
    scripts = {}
    for p in problems:
        ids, _, _ = build_prompt(p, tok)
        answer = p.answer if right[p.id] else f"{p.answer}+1"
        scripts[tuple(ids)] = tok(f"So \\boxed{{{answer}}}", add_special_tokens=False)["input_ids"]
    model = Scripted(len(tok), scripts, tok.eos_token_id)
    s = evaluate(model, tok, problems, SamplerConfig("temp-1", max_new_tokens=60), progress=False)
    for field in ("subject", "level"):
        groups = {}
        for p in problems:
            groups.setdefault(getattr(p, field), []).append(right[p.id])
        assert s.by_subject[field] == {
            v: {"n": len(xs), "accuracy": sum(xs) / len(xs)} for v, xs in groups.items()
        }
    assert ev.breakdown_table(s) is not None


# --- few-shot -------------------------------------------------------------------------------


def test_fewshot_prompts_show_worked_answers_but_never_the_problems_own():
    problems = load_problems("gsm8k")
    tok = chat_tokenizer()
    shots = fewshot_examples(problems, 2, problems[0])
    assert problems[0] not in shots and len(shots) == 2
    _, text, mode = build_prompt(
        problems[0], tok, chat=False, template="Q: {problem}\nA:", fewshot=shots
    )
    assert mode == "plain"
    assert text.index(shots[0].question) < text.index(shots[1].question)
    assert text.rstrip().endswith(f"Q: {problems[0].question}\nA:")
    assert shots[0].solution in text and problems[0].solution not in text
    # chat: earlier user / assistant turns
    _, text, mode = build_prompt(problems[0], tok, fewshot=shots)
    assert mode == "chat" and text.count("<|user|>") == 5 and shots[1].solution in text


def test_fewshot_in_evaluation_from_the_data_and_from_a_file(tmp_path):
    tok = chat_tokenizer()
    problems = load_problems("gsm8k")
    seen = []

    class Recorder(Scripted):
        def forward(self, ids, cache=None, use_cache=False):
            if cache is None:
                seen.append(tok.decode(ids[0].tolist()))
            return super().forward(ids, cache, use_cache)

    model = Recorder(len(tok), {}, tok.eos_token_id)
    cfg = SamplerConfig("temp-1", max_new_tokens=2)
    evaluate(
        model, tok, problems[:2], cfg, chat=False, fewshot=3, fewshot_pool=problems, progress=False
    )
    assert len(seen) == 2
    for p, prompt in zip(problems[:2], seen, strict=True):
        shown = [q for q in problems if q.question in prompt]
        assert len(shown) == 4 and p.solution not in prompt  # 3 examples and itself
    with pytest.raises(ValueError, match="fewshot=5 but the examples hold 5"):
        evaluate(model, tok, problems, cfg, chat=False, fewshot=5, progress=False)
    # a file of examples: all of it by default
    f = tmp_path / "shots.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "answer": "It is 2.\n#### 2"}) + "\n")
    seen.clear()
    pool = load_problems(f)
    s = evaluate(model, tok, problems[:1], cfg, chat=False, fewshot_pool=pool, progress=False)
    assert s.fewshot == 1 and seen[0].startswith("1+1? It is 2.\n#### 2\n\n")


# --- task files -------------------------------------------------------------------------------


def test_shipped_tasks_load_and_bad_files_are_named(tmp_path):
    kinds = {t: load_task(t).kind for t in TASKS}
    assert kinds == {"math": "math", "gsm8k": "exact", "gpqa": "mc", "humaneval": "code"}
    assert all(load_task(t).max_new_tokens for t in TASKS)
    bad = tmp_path / "t.toml"
    bad.write_text('kind = "math"\nmax_tokens = 5\n')
    with pytest.raises(ValueError, match=r"unknown keys \['max_tokens'\]"):
        load_task(bad)
    bad.write_text("stop = 'x'\n")
    with pytest.raises(ValueError, match="stop must be a list"):
        load_task(bad)
    with pytest.raises(ValueError, match="shipped tasks are"):
        load_task("mathh")


def test_task_template_and_stop_apply_to_plain_prompts():
    tok = chat_tokenizer()
    p = Problem("q", "exact", "2+2?", "4")
    task = load_task("gsm8k")
    ids, _, _ = build_prompt(p, tok, chat=False, template=task.plain_template)
    script = tok(" 4\n#### 4\n\nQuestion: 3+3?\nAnswer: 6", add_special_tokens=False)["input_ids"]
    model = Scripted(len(tok), {tuple(ids): script}, tok.eos_token_id)
    s = evaluate(
        model,
        tok,
        [p],
        SamplerConfig("temp-1", max_new_tokens=60),
        chat=False,
        task="gsm8k",
        progress=False,
    )
    assert s.accuracy == 1.0 and s.new_tokens == len(" 4\n#### 4\n\nQuestion:")
    assert s.task == "gsm8k"


def test_cli_samples_fewshot_and_task(tmp_path):
    args = ["power", "eval", "arith", "--limit", "3", "--method", "temp-1", "--samples", "2"]
    shots = tmp_path / "shots.jsonl"
    shots.write_text(
        "".join(
            json.dumps({"question": q, "answer": a, "solution": w}) + "\n"
            for q, a, w in [("1+2+3=", "6", "S1+2=3;3+3=6>6"), ("2+2+2=", "6", "G>6")]
        )
    )
    args += ["--fewshot-file", str(shots), "--task", str(_task(tmp_path)), "--out", str(tmp_path)]
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "pass@k" in res.output
    run, rows = _rows(tmp_path / "temp-1.jsonl")
    assert run["sampler"]["max_new_tokens"] == 30 and run["fewshot"] == 2 and len(rows) == 6
    summary = json.loads((tmp_path / "summary.json").read_text())[0]
    assert summary["samples"] == 2 and set(summary["pass_at_k"]) == {"pass@1", "pass@2"}
    # a changed setting stops the rerun with one line
    res = runner.invoke(app, [*args[:-2], "--samples", "3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--samples" in res.output and "Traceback" not in res.output


def _task(tmp_path):
    f = tmp_path / "arith.toml"
    f.write_text(
        'kind = "exact"\nmax_new_tokens = 30\ntarget_delimiter = ""\nfewshot_delimiter = ""\n'
    )
    return f
