"""The documentation notes of batched Power-SMC: every ```python snippet runs as
written, in an empty folder."""

import re
from pathlib import Path

import pytest

from tests.power.test_eval_batch import one_thread  # noqa: F401 (autouse)

NOTES = Path(__file__).resolve().parents[2] / "docs" / "notes" / "i22-batch.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```$", NOTES.read_text(), re.S | re.M)


def test_the_notes_have_snippets():
    assert len(SNIPPETS) == 2


@pytest.mark.parametrize("code", SNIPPETS, ids=["batch", "generate"])
def test_notes_snippet_runs(code, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(NOTES), "exec"), {"__name__": "__main__"})
