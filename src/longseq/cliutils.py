"""What every ``longseq`` command shares: the console and the one-line error exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` and exit with status 2 (the status of a usage error)."""
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)
