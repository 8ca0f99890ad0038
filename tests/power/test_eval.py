"""Reasoning evaluation: graders, problem files, prompts, resumable results, CLI."""

import json
import string
import sys
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.power import SamplerConfig, build_prompt, evaluate, load_problems
from longseq.power import evaluation as ev
from longseq.power.graders import (
    MissingExtra,
    extract_choice,
    grade_choice,
    grade_code,
    grade_math,
    grade_number,
)
from longseq.power.problems import SAMPLES, Problem, sample_path

runner = CliRunner()


# --- graders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("so x = \\boxed{5}.", "5", True),
        ("\\boxed{\\dfrac12}", "0.5", True),
        ("first \\boxed{3}, on reflection \\boxed{\\frac{1}{4}}", "\\frac{1}{4}", True),
        ("\\boxed{\\sqrt{5}}", "\\sqrt{5}", True),
        ("\\boxed{2.2360}", "\\sqrt{5}", False),
        ("\\boxed{6}", "5", False),
        ("S47+85=132;132+23=155>155", "155", True),  # no box: the last expression
        ("no answer here", "5", False),
    ],
)
def test_math_grader_checks_equivalence(completion, answer, ok):
    pytest.importorskip("math_verify")
    assert grade_math(completion, answer)[0] is ok


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("24 + 18 = 42, 42 - 30 = 12\n#### 12", "blah\n#### 12", True),
        ("The answer is 1,200.", "#### 1200", True),
        ("He has 850 stamps left, not 900", "#### 850", False),  # the last number counts
        ("so \\boxed{38}", "#### 38", True),
        ("S34+81=115;115+82=197>197", "197", True),
        ("G>199", "197", False),
        ("nothing", "3", False),
    ],
)
def test_number_grader(completion, answer, ok):
    assert grade_number(completion, answer)[0] is ok


@pytest.mark.parametrize(
    "completion, letter",
    [
        ("Reasoning... The answer is (C).", "C"),
        ("Answer: B", "B"),
        ("I think \\boxed{D}", "D"),
        ("Between (A) and (B), (B) fits", "B"),
        ("no idea", None),
    ],
)
def test_choice_extraction(completion, letter):
    assert extract_choice(completion) == letter
    assert grade_choice(completion, "B")[0] is (letter == "B")


def _humaneval():
    return {p.id: p for p in load_problems("humaneval")}


def test_code_grader_runs_tests_in_a_subprocess(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _humaneval()["Sample/0"]
    assert grade_code("    return a + b\n", p)[0]
    ok, why = grade_code("    return a - b\n", p)
    assert not ok and "AssertionError" in why
    # a plain completion is cut at the first top-level line
    assert grade_code("    return a + b\n\ndef unrelated():\n    raise SystemExit(1)\n", p)[0]
    # chat answers: the code block that defines the entry point
    chat = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert grade_code(chat, p, chat=True)[0]
    # files land in a temporary folder, not here
    assert grade_code("    open('stray.txt', 'w').write('x')\n    return a + b\n", p)[0]
    assert not (tmp_path / "stray.txt").exists()


def test_code_grader_timeout_and_no_network():
    p = _humaneval()["Sample/0"]
    ok, why = grade_code("    while True:\n        pass\n", p, timeout=1.0)
    assert not ok and "timed out" in why
    net = "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n    return a + b\n"
    ok, why = grade_code(net, p)
    assert not ok and "network access is disabled" in why


def test_missing_grader_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(MissingExtra, match=r"pip install 'longseq\[eval\]'"):
        grade_math("\\boxed{1}", "1")
    res = runner.invoke(app, ["power", "eval", "math"])
    assert res.exit_code == 2 and "longseq[eval]" in res.output


def test_wilson_interval():
    lo, hi = ev.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = ev.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)


# --- problem files -------------------------------------------------------------------


def test_every_shipped_sample_loads_with_its_kind():
    kinds = {name: {p.kind for p in load_problems(name)} for name in SAMPLES}
    assert kinds == {
        "arith": {"exact"},
        "math": {"math"},
        "gsm8k": {"exact"},
        "gpqa": {"mc"},
        "humaneval": {"code"},
    }


def test_parquet_and_jsonl_hold_the_same_problems():
    pytest.importorskip("pyarrow")
    a = load_problems(sample_path("arith", "jsonl"))
    b = load_problems(sample_path("arith", "parquet"))
    assert a == b and len(a) == 100


def test_gpqa_choices_are_shuffled_stably_and_the_letter_is_right():
    raw = [json.loads(line) for line in sample_path("gpqa").read_text().splitlines()]
    first, again = load_problems("gpqa"), load_problems("gpqa")
    assert first == again
    letters = {p.answer for p in first}
    for p, r in zip(first, raw, strict=True):
        assert p.choices["ABCD".index(p.answer)] == r["Correct Answer"]
        assert f"({p.answer}) {r['Correct Answer']}" in p.question
    assert len(letters) > 1 or len(first) < 3


def test_unknown_fields_and_missing_files_are_named(tmp_path, monkeypatch):
    f = tmp_path / "x.jsonl"
    f.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"fields \['foo'\]"):
        load_problems(f)
    with pytest.raises(ValueError, match="neither a file"):
        load_problems(tmp_path / "missing.jsonl")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(MissingExtra, match="pip install datasets"):
        load_problems(tmp_path)


# --- end to end on the shipped model -------------------------------------------------


SMC = SamplerConfig("smc", n_particles=8, block_size=4, ramp_tokens=16, max_new_tokens=32)


def test_evaluate_writes_resumable_results(arith_model, tmp_path, monkeypatch):
    model, codec = arith_model
    problems = load_problems("arith", limit=4)
    out = tmp_path / "smc.jsonl"
    s = evaluate(model, codec, problems[:3], SMC, out=out, progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["run"]["template"] == "plain" and len(lines) == 4
    recs = lines[1:]
    assert s.n == 3 and s.correct == sum(r["correct"] for r in recs)
    for r, p in zip(recs, problems[:3], strict=True):
        assert r["id"] == p.id and r["gold"] == p.answer
        assert r["new_tokens"] == len(r["completion"]) + 1  # characters + EOS
        assert r["decoded_tokens"] >= 8 * r["new_tokens"] and r["seconds"] > 0
    # an interrupted line is redone; finished problems are not sampled again
    out.write_text(out.read_text() + '{"id": "arith-003", "corr')
    calls = []
    real = ev.run_sampler
    monkeypatch.setattr(ev, "run_sampler", lambda *a, **k: calls.append(1) or real(*a, **k))
    s2 = evaluate(model, codec, problems, SMC, out=out, progress=False)
    assert len(calls) == 1 and s2.n == 4
    # other settings refuse to mix into the same file
    with pytest.raises(ValueError, match="block_size"):
        evaluate(model, codec, problems, SamplerConfig("smc", block_size=8), out=out)


@pytest.mark.parametrize("method", ["temp-1", "temp-alpha", "best-of-n", "mh"])
def test_every_method_evaluates(arith_model, method):
    model, codec = arith_model
    cfg = SamplerConfig(method, n_particles=4, mh_blocks=2, mh_steps=1, max_new_tokens=32)
    s = evaluate(model, codec, load_problems("arith", limit=2), cfg, progress=False)
    assert s.n == 2 and 0 <= s.accuracy <= 1 and s.ci_low <= s.accuracy <= s.ci_high


def test_cli_eval_on_the_shipped_model(tmp_path):
    args = ["power", "eval", "arith", "--limit", "3", "--method", "temp-1", "--method", "smc"]
    args += ["--block-size", "4", "--ramp-tokens", "16", "--out", str(tmp_path)]
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "note" in res.output  # 1024 tokens do not fit
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["method"] for s in summary] == ["temp-1", "smc"]
    assert (tmp_path / "smc.jsonl").exists()


# --- chat models ---------------------------------------------------------------------


def chat_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<eos>": 0, "<unk>": 1}
    for c in sorted(set(string.printable)):
        vocab.setdefault(c, len(vocab))
    t = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    t.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=t,
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
        chat_template="{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    )


class _Rows:
    def __init__(self, ids):
        self.layers = [SimpleNamespace(keys=ids)]


class Scripted(torch.nn.Module):
    """Writes a fixed answer after each known prompt (probability ~1 per token)."""

    def __init__(self, vocab_size: int, scripts: dict, eos: int):
        super().__init__()
        self.v, self.scripts, self.eos = vocab_size, scripts, eos
        self.config = SimpleNamespace()

    def forward(self, ids, cache=None, use_cache=False):
        full = ids if cache is None else torch.cat([cache.layers[0].keys, ids], dim=1)
        logits = torch.full((ids.shape[0], 1, self.v), -30.0)
        for r, row in enumerate(full.tolist()):
            nxt = self.eos
            for prompt, answer in self.scripts.items():
                if tuple(row[: len(prompt)]) == prompt:
                    k = len(row) - len(prompt)
                    nxt = answer[k] if k < len(answer) else self.eos
            logits[r, 0, nxt] = 0.0
        return SimpleNamespace(logits=logits, cache=_Rows(full))


def test_chat_template_prompts_and_code_blocks():
    """A chat tokenizer's template wraps each problem with the code instruction; a model
    that answers with the right function in a code block passes every test."""
    tok = chat_tokenizer()
    problems = load_problems("humaneval")
    scripts = {}
    for p in problems:
        ids, text, mode = build_prompt(p, tok)
        assert mode == "chat" and text.startswith("<|user|>") and text.endswith("<|assistant|>")
        assert "```python" in text and p.question.strip() in text
        raw = json.loads(
            next(line for line in sample_path("humaneval").read_text().splitlines() if p.id in line)
        )
        answer = f"Sure.\n```python\n{p.question}{raw['canonical_solution']}```\n"
        scripts[tuple(ids)] = tok(answer, add_special_tokens=False)["input_ids"]
    model = Scripted(len(tok), scripts, tok.eos_token_id)
    s = evaluate(model, tok, problems, SamplerConfig("temp-1", max_new_tokens=400), progress=False)
    assert s.template == "chat" and s.accuracy == 1.0
    # without the template the same answers are read as plain continuations and fail
    plain = {
        tuple(build_prompt(p, tok, chat=False)[0]): v
        for p, v in zip(problems, scripts.values(), strict=True)
    }
    model = Scripted(len(tok), plain, tok.eos_token_id)
    s = evaluate(
        model,
        tok,
        problems,
        SamplerConfig("temp-1", max_new_tokens=400),
        chat=False,
        progress=False,
    )
    assert s.template == "plain" and s.accuracy == 0.0


def test_stop_strings_in_evaluation():
    tok = chat_tokenizer()
    p = Problem("q", "exact", "2+2=", "4")
    ids, _, _ = build_prompt(p, tok, chat=False)
    script = tok("4\nQuestion: 3+3=6", add_special_tokens=False)["input_ids"]
    model = Scripted(len(tok), {tuple(ids): script}, tok.eos_token_id)
    cfg = SamplerConfig("smc", n_particles=2, max_new_tokens=40, stop_strings=["\nQuestion:"])
    s = evaluate(model, tok, [p], cfg, chat=False, progress=False)
    assert s.accuracy == 1.0 and s.new_tokens == len("4\nQuestion:")


def test_each_problem_has_its_own_random_stream(arith_model, tmp_path):
    """One seed for every problem would give every problem the same first draw (all
    shortcut guesses, or all worked answers); the model takes the worked path ~35%."""
    model, codec = arith_model
    out = tmp_path / "t.jsonl"
    evaluate(model, codec, load_problems("arith", limit=40), SamplerConfig("temp-1"), out=out)
    first = {json.loads(x)["completion"][0] for x in out.read_text().splitlines()[1:]}
    assert first == {"S", "G"}
