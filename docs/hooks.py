"""mkdocs hook: the pages show the plots in benchmarks/results/ where the benchmarks
write them, through links that also work on GitHub (``../benchmarks/results/x.png``
from docs/x.md). The hook adds those files to the site and points the links at them."""

import re
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MEDIA = {".png", ".gif", ".jpg", ".jpeg", ".svg"}


def on_files(files, config):
    for path in sorted(RESULTS.rglob("*")):
        if path.suffix.lower() in MEDIA:
            uri = "benchmarks/results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    # docs/<d levels>/page.md reaches the repository root with d + 1 "../";
    # in the site the results sit one level higher: d "../".
    depth = page.file.src_uri.count("/")
    github = re.escape("../" * (depth + 1) + "benchmarks/results/")
    return re.sub(rf"\]\({github}", "](" + "../" * depth + "benchmarks/results/", markdown)
