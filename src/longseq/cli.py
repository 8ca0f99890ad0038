"""The ``longseq`` command line: each method package owns its sub-command group
(``longseq/<method>/cli.py``); this module mounts them and lists the checkpoints."""

from __future__ import annotations

from rich.table import Table

from longseq import hub
from longseq.cliutils import App, console
from longseq.collapse.cli import app as collapse_app
from longseq.kltrace.cli import app as kltrace_app
from longseq.power.cli import app as power_app
from longseq.shuffle.cli import app as shuffle_app
from longseq.streaming.cli import app as streaming_app

app = App(
    help="longseq: research methods for long-sequence generative models.", add_completion=False
)
app.add_typer(power_app, name="power")
app.add_typer(shuffle_app, name="shuffle")
app.add_typer(collapse_app, name="collapse")
app.add_typer(kltrace_app, name="kltrace")
app.add_typer(streaming_app, name="streaming")


@app.command("checkpoints")
def checkpoints() -> None:
    """List the checkpoints shipped with the package."""
    table = Table(title="shipped checkpoints")
    for col in ("name", "description", "sha256"):
        table.add_column(col)
    for name, entry in sorted(hub.registry().items()):
        table.add_row(name, entry["description"], entry["sha256"][:16] + "…")
    console.print(table)


if __name__ == "__main__":
    app()
