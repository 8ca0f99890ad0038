"""The collapse documentation notes as a user reads them: every ```python snippet runs
as written, in a fresh namespace and an empty folder."""

import re
from pathlib import Path

import pytest

NOTES = Path(__file__).resolve().parents[2] / "docs" / "notes" / "i25-collapse.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```$", NOTES.read_text(), re.S | re.M)


def test_the_notes_have_python_snippets():
    assert SNIPPETS


@pytest.mark.parametrize("code", SNIPPETS)
def test_notes_snippet_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(NOTES), "exec"), {"__name__": "__main__"})
