"""The ShuffleMamba documentation notes as a user reads them: every ```python snippet
runs as written, each in a fresh namespace, in an empty folder."""

import re
from pathlib import Path

import pytest

NOTES = Path(__file__).resolve().parents[2] / "docs" / "notes" / "i25-shuffle.md"
SNIPPETS = [
    pytest.param(m.group(1), id=f"snippet-{i}")
    for i, m in enumerate(re.finditer(r"^```python\n(.*?)^```$", NOTES.read_text(), re.S | re.M))
]


def test_the_notes_have_snippets():
    assert len(SNIPPETS) == 3


@pytest.mark.parametrize("code", SNIPPETS)
def test_notes_snippet_runs_as_written(code, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(NOTES), "exec"), {"__name__": "__main__"})
