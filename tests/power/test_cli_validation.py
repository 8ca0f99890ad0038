"""power commands check every option before they write or compute anything, and a
results file compares only the settings its method reads."""

import json

import pytest
from typer.testing import CliRunner

from longseq import hub
from longseq.cli import app
from longseq.power import SamplerConfig, evaluate, load_problems

runner = CliRunner()
EVAL = ["power", "eval", "arith", "--limit", "2", "--max-new-tokens", "8"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kappa", "5"], "--kappa must be in [0, 1]"),
        (["--alpha", "0"], "--alpha must be > 0"),
        (["--alpha", "nan"], "--alpha must be a finite number"),
        (["--max-time", "-1"], "--max-time must be > 0"),
        (["--stop", ""], "--stop is empty"),
        (["--template", "{nope}"], "unknown field(s) nope"),
        (["--template", "Q: {problem"], "not a valid format string"),
        (["--template", "just text"], "must contain {problem}"),
        (["--min-new-tokens", "100000"], "is more than --max-new-tokens"),
        (["--method", "smc", "--method", "smc"], "--method names smc more than once"),
        (["--split", "train"], "--split chooses a split of a datasets folder"),
        (["--top-p", "inf"], "--top-p must be a finite number"),
        (["--code-timeout", "0"], "--code-timeout must be > 0"),
    ],
)
def test_eval_refuses_bad_options_before_writing(tmp_path, args, message):
    res = runner.invoke(app, [*EVAL, *args], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert res.output.count("\n") == 1  # one line, no traceback
    assert list(tmp_path.iterdir()) == []  # no header-only smc.jsonl, no empty folder


def test_eval_runs_after_a_refused_attempt(tmp_path):
    assert runner.invoke(app, [*EVAL, "--kappa", "5"]).exit_code == 2
    res = runner.invoke(app, [*EVAL, "--kappa", "0.5", "--out", "res"])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "res" / "smc.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "-1"], "--alpha must be > 0"),
        (["--max-time", "nan"], "--max-time must be a finite number"),
        (["--stop", ""], "--stop is empty"),
        (["--min-new-tokens", "100000"], "is more than the"),
    ],
)
def test_sample_refuses_bad_options(args, message):
    res = runner.invoke(app, ["power", "sample", "12+3=", "--method", "temp", *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_empty_question_is_refused(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"question": "  ", "answer": "3"}) + "\n")
    with pytest.raises(ValueError, match="problem text is empty"):
        load_problems(tmp_path / "p.jsonl")
    res = runner.invoke(app, ["power", "eval", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2 and "empty" in res.output


def test_byte_level_model_decodes():
    """The shipped Mamba-2 has a byte tokenizer, whose decode takes no
    skip_special_tokens (the transformers keyword)."""
    from longseq.data.text import ByteTokenizer

    codec = hub.TextCodec(ByteTokenizer(), add_bos=False)
    assert codec.decode(codec.encode("héllo")) == "héllo"


def test_sampler_config_refuses_what_would_fail_after_the_header():
    for kw in ({"kappa": 5}, {"alpha": 0}, {"max_time": -1}, {"stop_strings": [""]}):
        with pytest.raises(ValueError):
            SamplerConfig("smc", **kw)


def test_results_compare_only_the_settings_a_method_reads(tmp_path):
    model, codec, _ = hub.load_causal_lm("power-arith-gpt")
    problems = load_problems("arith", limit=2)
    kw = dict(max_new_tokens=16, n_particles=4)
    for method in ("temp-1", "smc"):
        evaluate(model, codec, problems[:1], SamplerConfig(method, **kw), tmp_path / method)
    # temp-1 reads neither block_size nor mh_blocks: the file resumes
    s = evaluate(
        model,
        codec,
        problems,
        SamplerConfig("temp-1", block_size=8, mh_blocks=3, **kw),
        tmp_path / "temp-1",
        progress=False,
    )
    assert s.n == 2
    with pytest.raises(ValueError, match="block_size"):
        evaluate(model, codec, problems, SamplerConfig("smc", block_size=8, **kw), tmp_path / "smc")
    # a file written with every method's settings in its header still resumes
    path = tmp_path / "temp-1"
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    head["run"]["sampler"] = {**head["run"]["sampler"], "kappa": 0.9, "block_size": 99}
    path.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    assert evaluate(model, codec, problems, SamplerConfig("temp-1", **kw), path).n == 2
