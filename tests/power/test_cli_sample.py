"""`longseq power sample` on the shipped model: every method finishes within the
model's context."""

import pytest
from typer.testing import CliRunner

from longseq.cli import app

runner = CliRunner()


@pytest.mark.parametrize("method", ["temp", "best-of-n", "smc"])
def test_sample_methods_run_on_the_shipped_model(method):
    res = runner.invoke(app, ["power", "sample", "47+85+23=", "--method", method, "--show", "0"])
    assert res.exit_code == 0, res.output
    assert "47+85+23=" in res.output and ">" in res.output
    assert "note" not in res.output  # the default length fits the context


def test_too_many_new_tokens_are_lowered_with_a_note():
    res = runner.invoke(
        app, ["power", "sample", "47+85+23=", "--method", "temp", "--max-new-tokens", "200"]
    )
    assert res.exit_code == 0, res.output
    assert "max_new_tokens=200" in res.output and "block size is 64" in res.output
