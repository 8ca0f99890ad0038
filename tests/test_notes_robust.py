"""The python snippets of docs/notes/i26-robust.md run as written, each in a fresh
namespace in an empty folder."""

import re
from pathlib import Path

import pytest

NOTES = Path(__file__).resolve().parents[1] / "docs" / "notes" / "i26-robust.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```$", NOTES.read_text(), re.S | re.M)


def test_the_notes_have_snippets():
    assert len(SNIPPETS) == 3


@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs_as_written(code, tmp_path, monkeypatch):
    if "streaming" in code:
        pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(NOTES), "exec"), {"__name__": "__main__"})
