"""The ``longseq`` command line: each method package owns its sub-command group
(``longseq/<method>/cli.py``); this module mounts them and lists the checkpoints."""

from __future__ import annotations

import typer

from longseq import hub
from longseq.cliutils import App, console, folding_table
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


@app.callback()
def main(
    threads: int = typer.Option(
        None,
        "--threads",
        envvar="LONGSEQ_THREADS",
        help="CPU threads for torch (before the command: longseq --threads 1 kltrace bench). "
        "At most 4 per core. Default: the cores not already busy (load average), at least 1; "
        "OMP_NUM_THREADS, when set, is left alone.",
    ),
) -> None:
    from longseq.cliutils import fail
    from longseq.utils import set_threads

    try:
        set_threads(threads)
    except ValueError as e:
        fail(f"--threads: {e}")


@app.command("checkpoints")
def checkpoints() -> None:
    """List the checkpoints shipped with the package: size, sha256 of their weights, and
    whether the file on disk still has that sha256."""
    from longseq.cliutils import fail

    reg = hub.registry()
    if not reg:
        fail(
            f"no shipped checkpoints: {hub.REGISTRY_FILE} is missing (an incomplete "
            "installation; reinstall longseq)"
        )
    table = folding_table("shipped checkpoints", ("name", "size", "check", "description", "sha256"))
    bad = []
    for name, entry in sorted(reg.items()):
        path = hub.weights_file(name)
        if not path.is_file():
            size, check = "-", "missing"
        else:
            size = hub.format_size(path.stat().st_size)
            check = "ok" if hub.sha256_file(path) == entry["sha256"] else "corrupted"
        if check != "ok":
            bad.append(f"{name} ({check})")
        table.add_row(name, size, check, entry["description"], entry["sha256"])
    console.print(table)
    if bad:
        fail(f"{len(bad)} checkpoint(s) fail the sha256 check: {', '.join(bad)}; reinstall longseq")


if __name__ == "__main__":
    app()
