"""What every ``longseq`` command shares: the console, the one-line error exit, and a
`typer` app whose help reads plainly (flags without a ``<bool>`` type, arguments in
capitals, docstring paragraphs re-flowed instead of broken where the source breaks)."""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup

console = Console()


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` and exit with status 2 (the status of a usage error)."""
    # one line, however long; the message is plain text ("longseq[eval]" is not markup)
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True)
    raise typer.Exit(2)


def check_number(
    value: float | None,
    option: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Fail with one line unless ``value`` (None passes) is a finite number within
    [``low``, ``high``] (an end given as open excludes its bound)."""
    if value is None:
        return
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    else:
        span = f"{'<' if high_open else '<='} {high:g}" if high is not None else ""
    if not math.isfinite(value):
        fail(f"{option} must be a finite number {span}".rstrip() + f", got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        fail(f"{option} must be {span}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        fail(f"{option} must be {span}, got {value:g}")


def check_unique(values: Iterable | None, option: str) -> None:
    """Fail with one line if a repeatable option names the same value twice."""
    seen, twice = set(), []
    for v in values or ():
        if v in seen and v not in twice:
            twice.append(v)
        seen.add(v)
    if twice:
        fail(f"{option} names {', '.join(map(str, twice))} more than once")


def check_template(template: str | None, option: str, fields: Iterable[str], needed: str) -> None:
    """Fail with one line unless ``template`` is a format string whose fields are among
    ``fields`` and include ``needed``."""
    if template is None:
        return
    fields = tuple(fields)
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        fail(f"{option} is not a valid format string ({e}); write a literal brace as {{{{ }}}}")
    bad = sorted(f or "{}" for f in used if f not in fields)
    if bad:
        fail(f"{option}: unknown field(s) {', '.join(bad)}; the fields are {', '.join(fields)}")
    if needed not in used:
        fail(f"{option} must contain {{{needed}}} (where the text goes), got {template!r}")


#: optional packages, the extra of ``pyproject.toml`` that installs each
EXTRAS = {
    "matplotlib": "plot",
    "PIL": "plot",
    "cv2": "flow",
    "transformers": "hf",
    "diffusers": "video",
    "imageio": "video",
}


def require_module(module: str, purpose: str) -> None:
    """Fail with one line, before any work, if ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRAS.get(module)
        hint = f"pip install 'longseq[{extra}]'" if extra else f"pip install {module}"
        fail(f"{purpose} needs {module}, which is not installed: {hint}")


def folding_table(title: str, columns: Iterable[str], right: Iterable[str] = ()) -> Table:
    """A table whose values fold onto more lines when the terminal is narrow, instead of
    being cut with "…"; ``right`` names the right-aligned (numeric) columns."""
    right = set(right)
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    return table


def check_output_file(
    path: Path | None, option: str, suffixes: Iterable[str] = (), create_folder: bool = False
) -> None:
    """Fail now, before any work, if ``path`` (the value of ``option``) cannot be written:
    its folder is missing (or, with ``create_folder``, cannot be made), it is a folder, or
    its suffix is not one of ``suffixes``."""
    if path is None:
        return
    suffixes = tuple(suffixes)
    if suffixes and path.suffix.lower() not in suffixes:
        fail(f"{option} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    if create_folder:
        make_folder(parent, option)
    if not parent.is_dir():
        fail(f"{option}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        fail(f"{option}: the folder {parent} is not writable")


def check_folder(path: Path, option: str) -> None:
    """Fail now, creating nothing, if the folder ``path`` could not be made or written
    later: it is a file, or its nearest existing parent is a file or not writable. (Make it
    with :func:`make_folder` once every other check has passed, so that a refused command
    leaves no empty folder behind.)"""
    if path.exists():
        if not path.is_dir():
            fail(f"{option} {path} is a file; give a folder")
        if not os.access(path, os.W_OK):
            fail(f"{option}: the folder {path} is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{option}: cannot create the folder {path} ({parent} is a file)")
    if not os.access(parent, os.W_OK):
        fail(f"{option}: cannot create the folder {path} ({parent} is not writable)")


def make_folder(path: Path, option: str) -> None:
    """Create the folder ``path`` (and its parents) now, or fail with one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"{option}: cannot create the folder {path} ({e.strerror or e})")


def write_text(path: Path, text: str, option: str) -> None:
    """Write ``text`` to ``path``, failing with one line (not a traceback) on an OS error."""
    try:
        path.write_text(text)
    except OSError as e:
        fail(f"{option}: cannot write {path} ({e.strerror or e})")


def _reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph (paragraphs are separated by a blank line)."""
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _plain_params(params: list) -> list:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""  # a flag takes no value: no "<bool>" beside it
        elif isinstance(p, TyperArgument) and p.metavar is None:
            p.metavar = p.name.upper()
    return params


def _usage(cmd, ctx) -> list[str]:
    pieces = [cmd.options_metavar] if cmd.options_metavar else []
    for p in cmd.get_params(ctx):
        if isinstance(p, TyperArgument):
            name = p.metavar if p.required else f"[{p.metavar}]"
            pieces.append(name + ("..." if p.nargs != 1 else ""))
    return pieces


class Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["help"] = _reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)

    def get_params(self, ctx):
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx):
        return _usage(self, ctx)


class Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["help"] = _reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)

    def get_params(self, ctx):
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx):
        return [*_usage(self, ctx), self.subcommand_metavar]


class App(typer.Typer):
    """A `typer.Typer` whose groups and commands render their help as above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
