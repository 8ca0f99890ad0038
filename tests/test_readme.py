"""The README as a user reads it: every ```python snippet runs as written (each in a
fresh namespace, in an empty folder), and the checkpoint sizes it quotes are those of
the shipped files."""

import re
from pathlib import Path

import pytest

from longseq import hub

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list:
    text = README.read_text()
    params, heading, seen = [], "top", {}
    for m in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```$", text, re.S | re.M):
        if m.group(1):
            heading = re.sub(r"[^a-z0-9]+", "-", m.group(1).lstrip("# ").lower()).strip("-")
            continue
        seen[heading] = seen.get(heading, 0) + 1
        line = text.count("\n", 0, m.start()) + 2
        params.append(pytest.param(m.group(2), line, id=f"{heading}-{seen[heading]}"))
    return params


SNIPPETS = _snippets()


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 6


@pytest.fixture
def cli_threads():
    """The CPU threads a ``longseq`` command would use (one per idle core): under load,
    torch's one per core makes these snippets many times slower."""
    import torch

    from longseq.utils import set_threads

    before = torch.get_num_threads()
    set_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("code, line", SNIPPETS)
def test_readme_snippet_runs_as_written(code, line, tmp_path, monkeypatch, cli_threads):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md, snippet at line {line}", "exec"), {"__name__": "__main__"})


def test_readme_checkpoint_sizes_match_the_files():
    text = README.read_text()
    quoted = {}
    for name in hub.registry():
        # a table row "| `name` | ... | 4.3 MB | ..." or prose "`name` ... (..., 4.3 MB)"
        row = re.search(rf"^\| `{re.escape(name)}` \|.*?\| ([\d.]+ [kM]B) \|", text, re.M)
        prose = re.search(rf"`{re.escape(name)}`[^`|]{{0,80}}?\([^()]*?([\d.]+ [kM]B)\)", text)
        if row or prose:
            quoted[name] = (row or prose).group(1)
    shipped_defaults = {"power-arith-gpt", "kltrace-match", "streaming-t2v", "streaming-enhancer"}
    assert shipped_defaults <= set(quoted)
    for name, size in quoted.items():
        assert size == hub.format_size(hub.weights_file(name).stat().st_size), name
