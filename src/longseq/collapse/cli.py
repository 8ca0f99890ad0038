"""The ``longseq collapse`` commands (Stuffed Mamba)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from longseq import hub
from longseq.cliutils import App, console, fail

app = App(
    help="Stuffed Mamba: diagnose and fix Mamba-2 state collapse beyond the training length.",
)


def _load_mamba(model: str, device: str | None):
    from longseq.utils import default_device

    try:
        dev = default_device(device)
        net, codec, extra = hub.load_mamba2(model, dev)
    except (hub.CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    return net, extra.get("train_length")


def _mitigate(net, spec: str, train_length: int | None, calibration=None):
    """Apply a mitigation given on the command line; 'norm' and 'window' without a
    value use the model's training length (window) or its state norm there (bound,
    read on ``calibration`` inputs, default held-out text)."""
    from longseq.collapse import apply_named_mitigation

    try:
        apply_named_mitigation(net, spec, train_length, calibration)
    except ValueError as e:
        fail(f"--mitigation: {e}")


def _length(length: int | None, train_length: int | None, factor: int = 64) -> int:
    if length:
        return length
    if not train_length:
        fail("--length is needed: the checkpoint records no training length")
    return factor * train_length


@app.command("diagnose")
def collapse_diagnose(
    model: str = typer.Option("collapse-mamba2", help="shipped name or transformers Mamba2 dir"),
    length: int = typer.Option(None, help="tokens (default 64 x training length)"),
    prompt: str = typer.Option("text", help="text | newline"),
    segment: int = typer.Option(256, min=1, help="tokens between state readings"),
    mitigation: str = typer.Option(
        "none", help="none | forget[:D,B] | norm[:BOUND] | window[:TOKENS]"
    ),
    out: Path = typer.Option(Path("collapse-diagnose"), help="output directory"),
    device: str = typer.Option(None),
) -> None:
    """Per-layer, per-head state statistics versus position: JSON + plot."""
    from longseq.collapse import long_text, state_statistics
    from longseq.collapse.plots import plot_state_trace

    net, t_train = _load_mamba(model, device)
    _mitigate(net, mitigation, t_train)
    n = _length(length, t_train)
    try:
        trace = state_statistics(net, long_text(n, prompt), segment)
    except ValueError as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    trace.to_json(out / "state_trace.json")
    plot_state_trace(trace, out / "state_trace.png", t_train)
    norm = trace.tensor("norm").max(-1).values  # (segments, layers)
    table = Table(title=f"largest head state norm ({prompt}, mitigation {mitigation})")
    table.add_column("position")
    for layer in range(norm.shape[1]):
        table.add_column(f"layer {layer}", justify="right")
    table.add_column("segment NLL", justify="right")
    picks = sorted(
        {
            0,
            *[i for i, p in enumerate(trace.positions) if p & (p - 1) == 0],
            len(trace.positions) - 1,
        }
    )
    for i in picks:
        table.add_row(
            str(trace.positions[i]), *[f"{v:.2f}" for v in norm[i].tolist()], f"{trace.nll[i]:.3f}"
        )
    console.print(table)
    console.print(f"wrote {out / 'state_trace.json'} and {out / 'state_trace.png'}")


@app.command("passkey")
def collapse_passkey(
    model: str = typer.Option("collapse-mamba2"),
    lengths: list[int] = typer.Option(
        None, help="prompt lengths (default: 1, 2, 4, ... 64 x training length)"
    ),
    trials: int = typer.Option(4, min=1, help="prompts per (length, depth)"),
    mitigation: str = typer.Option(
        "none",
        help="none | forget[:D,B] | norm[:BOUND] | window[:TOKENS]; a bare 'norm' is "
        "calibrated on passkey prompts of the training length",
    ),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("collapse-passkey")),
    device: str = typer.Option(None),
) -> None:
    """Passkey retrieval accuracy by prompt length and needle depth: heatmap + JSON."""
    import json as _json

    from longseq.collapse import passkey_accuracy, passkey_calibration
    from longseq.collapse.plots import plot_passkey

    net, t_train = _load_mamba(model, device)
    calibration = passkey_calibration(t_train) if t_train and t_train >= 200 else None
    _mitigate(net, mitigation, t_train, calibration)
    if not lengths:
        base = _length(None, t_train, 1)
        lengths = [base * k for k in (1, 2, 4, 8, 16, 32, 64)]
    try:
        res = passkey_accuracy(net, lengths, trials=trials, seed=seed)
    except ValueError as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    (out / "passkey.json").write_text(_json.dumps(res.to_dict(), indent=2))
    plot_passkey(res, out / "passkey.png", f"passkey, mitigation {mitigation}")
    table = Table(title=f"passkey accuracy (mitigation {mitigation})")
    table.add_column("length")
    for d in res.depths:
        table.add_column(f"depth {d:.2f}", justify="right")
    for n, row in zip(res.lengths, res.accuracy, strict=True):
        table.add_row(str(n), *[f"{100 * a:.0f}%" for a in row])
    console.print(table)
    console.print(f"wrote {out / 'passkey.json'} and {out / 'passkey.png'}")


@app.command("loss-curve")
def collapse_loss_curve(
    model: str = typer.Option("collapse-mamba2"),
    length: int = typer.Option(None, help="tokens (default 64 x training length)"),
    prompt: str = typer.Option("text", help="text | newline"),
    mitigation: list[str] = typer.Option(
        ["none", "forget", "norm", "window"], help="one curve per mitigation (repeat the option)"
    ),
    out: Path = typer.Option(Path("collapse-loss")),
    device: str = typer.Option(None),
) -> None:
    """Per-position loss far beyond the training length, one curve per mitigation."""
    import json as _json

    from longseq.collapse import long_text, loss_curve
    from longseq.collapse.plots import plot_loss_curves

    net, t_train = _load_mamba(model, device)
    n = _length(length, t_train)
    try:
        ids = long_text(n, prompt)
    except ValueError as e:
        fail(str(e))
    curves = {}
    for spec in mitigation:
        _mitigate(net, spec, t_train)
        curves[spec] = loss_curve(net, ids, t_train or n)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"loss_{prompt}.json").write_text(
        _json.dumps({k: c.to_dict() for k, c in curves.items()}, indent=2)
    )
    plot_loss_curves(curves, out / f"loss_{prompt}.png", f"{model}: {prompt} prompt")
    _print_loss_table(curves, t_train or n, n, prompt)
    console.print(f"wrote {out / f'loss_{prompt}.png'}")


def _print_loss_table(curves: dict, t: int, n: int, prompt: str) -> None:
    ranges = [(0, t)] + [(t * 4**k, min(t * 4 ** (k + 1), n)) for k in range(4) if t * 4**k < n]
    table = Table(title=f"mean NLL (nats/token) by position, {prompt} prompt, training length {t}")
    table.add_column("mitigation")
    for lo, hi in ranges:
        table.add_column(f"{lo}-{hi}", justify="right")
    for name, c in curves.items():
        table.add_row(name, *[f"{c.mean_between(lo, hi):.3f}" for lo, hi in ranges])
    console.print(table)


@app.command("demo")
def collapse_demo(
    model: str = typer.Option("collapse-mamba2"),
    out: Path = typer.Option(Path("collapse-demo")),
    device: str = typer.Option(None),
) -> None:
    """Per-position loss of a Mamba-2 up to 64x its training length, without and with
    each of the three mitigations (text and all-newline prompts); plots written to OUT."""
    from longseq.collapse import long_text, loss_curve
    from longseq.collapse.plots import plot_loss_curves

    net, t_train = _load_mamba(model, device)
    n = _length(None, t_train)
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]State collapse demo[/]: {model}, trained on {t_train}-token windows, "
        f"read for {n} tokens ({n // t_train}x)"
    )
    for prompt in ("text", "newline"):
        ids = long_text(n, prompt)
        curves = {}
        for spec in ("none", "forget", "norm", "window"):
            _mitigate(net, spec, t_train)
            curves[spec] = loss_curve(net, ids, t_train)
        plot_loss_curves(curves, out / f"loss_{prompt}.png", f"{model}: {prompt} prompt")
        (out / f"loss_{prompt}.json").write_text(
            json.dumps({k: c.to_dict() for k, c in curves.items()}, indent=2)
        )
        _print_loss_table(curves, t_train, n, prompt)
    console.print(f"plots and JSON in {out}")
