"""The documentation as a user reads it: the README (the landing page) and every page of
the docs site. Every ```python snippet runs as written (each in a fresh namespace, in an
empty folder), the checkpoint sizes the pages quote are those of the shipped files, the
README stays a short landing page whose links resolve, every page is in the site's nav,
and the strict site build documents every public name of every method.

docs/notes/ is left out: notes are folded into the pages later."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from longseq import hub

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
METHODS = ("power", "collapse", "shuffle", "kltrace", "streaming")


def doc_pages() -> list[Path]:
    """Every page of the site (docs/**/*.md but docs/notes/)."""
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] != "notes")


def pages() -> list[Path]:
    return [README, *doc_pages()]


def slug(heading: str) -> str:
    """The anchor mkdocs (and GitHub) give a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text).strip("-")


def blocks(text: str) -> tuple[list[tuple[str, str, int, str]], list[str]]:
    """(fenced blocks as (language, code, first code line, heading above), headings
    outside fences); a ``#`` line inside a fence is code, not a heading."""
    found, headings = [], []
    heading, fence = "top", None
    for n, line in enumerate(text.splitlines(keepends=True), start=1):
        if fence is None:
            if line.startswith("```"):
                fence = (line[3:].strip(), [], n + 1, heading)
            elif m := re.match(r"(#+) (.*)", line):
                heading = m.group(2).strip()
                headings.append(heading)
        elif line.rstrip() == "```":
            lang, code, start, where = fence
            found.append((lang, "".join(code), start, where))
            fence = None
        else:
            fence[1].append(line)
    assert fence is None, f"unclosed ``` fence at line {fence[2] - 1}"
    return found, headings


def _snippets() -> list:
    """One test per distinct snippet: the README shows some pages' quick starts verbatim,
    and those run once."""
    where: dict[str, list[str]] = {}
    for page in pages():
        for lang, code, line, heading in blocks(page.read_text())[0]:
            if lang == "python":
                where.setdefault(code, []).append(
                    f"{page.relative_to(ROOT)}, line {line} ({slug(heading)})"
                )
    params, seen = [], {}
    for code, places in where.items():
        name = re.sub(r"\W+", "-", places[0].split(",")[0].removesuffix(".md")).lower()
        key = f"{name}-{places[0].split('(')[1].rstrip(')')}"
        seen[key] = seen.get(key, 0) + 1
        params.append(pytest.param(code, " and ".join(places), id=f"{key}-{seen[key]}"))
    return params


SNIPPETS = _snippets()


def test_every_method_has_python_snippets_on_its_page_and_in_the_readme():
    readme_headings = blocks(README.read_text())[1]
    for method in METHODS:
        found, _ = blocks((DOCS / f"{method}.md").read_text())
        assert any(lang == "python" and h == "Quick start" for lang, _, _, h in found), method
    readme_snippets = [b for b in blocks(README.read_text())[0] if b[0] == "python"]
    assert len(readme_snippets) >= len(METHODS), readme_headings


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


@pytest.mark.parametrize("code, where", SNIPPETS)
def test_snippet_runs_as_written(code, where, tmp_path, monkeypatch, cli_threads):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})


def test_quoted_checkpoint_sizes_match_the_files():
    quoted = {}
    for page in pages():
        text = page.read_text()
        for name in hub.registry():
            # a table row "| `name` | ... | 4.3 MB | ..." or prose "`name` ... (..., 4.3 MB)"
            rows = re.findall(rf"^\| `{re.escape(name)}` \|.*?\| ([\d.]+ [kM]B) \|", text, re.M)
            prose = re.findall(rf"`{re.escape(name)}`[^`|]{{0,80}}?\([^()]*?([\d.]+ [kM]B)\)", text)
            for size in rows + prose:
                quoted.setdefault(name, []).append((page.name, size))
    shipped_defaults = {"power-arith-gpt", "kltrace-match", "streaming-t2v", "streaming-enhancer"}
    assert shipped_defaults <= set(quoted)
    for name, sizes in quoted.items():
        actual = hub.format_size(hub.weights_file(name).stat().st_size)
        assert all(size == actual for _, size in sizes), (name, actual, sizes)


def test_the_readme_is_a_short_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    first, _, line, _ = blocks(text)[0][0]
    assert first == "bash" and line <= 4
    commands = [c.split("#")[0].strip() for c in blocks(text)[0][0][1].splitlines()]
    assert commands == ["make demo", "make test"]
    for method in METHODS:
        assert f"](docs/{method}.md)" in text, method


def test_relative_links_of_the_readme_and_pages_resolve():
    """mkdocs checks the pages' links to each other; this also covers the README and
    links out of docs/ (the plots under benchmarks/results/)."""
    for page in pages():
        text = page.read_text()
        code = "".join(c for _, c, _, _ in blocks(text)[0])
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target in code:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(ROOT)}: {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in {slug(h) for h in blocks(dest.read_text())[1]}, (
                    f"{page.relative_to(ROOT)}: {target}"
                )


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    return [p for value in nav.values() for p in _nav_pages(value)]


def test_every_page_is_in_the_nav_and_method_pages_keep_their_sections():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert sorted(nav) == sorted(p.relative_to(DOCS).as_posix() for p in doc_pages())
    for method in METHODS:
        h2 = re.findall(r"^## (.*)$", (DOCS / f"{method}.md").read_text(), re.M)
        assert "Your own model" in h2 and h2[-1] == "More", (method, h2)
        assert f"api/{method}.md" in nav


def test_the_site_builds_strictly_and_documents_every_public_name(tmp_path):
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (site / "notes").exists()
    for method in METHODS:
        module = __import__(f"longseq.{method}", fromlist=["__all__"])
        html = (site / "api" / f"{method}.html").read_text()
        missing = [n for n in module.__all__ if f'id="longseq.{method}.{n}"' not in html]
        assert not missing, (method, missing)
    for page in site.rglob("*.html"):
        for img in re.findall(r'<img [^>]*src="([^"]+)"', page.read_text()):
            assert (page.parent / img).exists(), (page.name, img)
    for page in (site / "api").glob("*.html"):
        assert ":class:`" not in page.read_text(), page.name  # roles shown as code


def test_the_site_home_shows_the_readme_status_table():
    def table(text: str) -> list[str]:  # the first table: the status table
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), None)
        return lines[start:end]

    readme = [row.replace("](docs/", "](") for row in table(README.read_text())]
    assert readme and table((DOCS / "index.md").read_text()) == readme
