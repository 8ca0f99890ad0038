"""The ``longseq collapse`` commands (Stuffed Mamba)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from longseq import hub
from longseq.cliutils import (
    App,
    check_folder,
    check_unique,
    console,
    fail,
    make_folder,
    require_module,
)

app = App(
    help="Stuffed Mamba: diagnose and fix Mamba-2 state collapse beyond the training length.",
)

MODEL_HELP = "shipped name, or a Mamba-2 folder in the transformers or the mamba_ssm layout"
TRAIN_LENGTH_HELP = (
    "the model's training length in tokens (default: train_length under longseq in the "
    "checkpoint's config.json); the window, norm and dt mitigations and the default "
    "lengths need it"
)
TOKENIZER_HELP = "folder with the tokenizer's files (default: the model's folder)"
TEXT_FILE_HELP = "read this UTF-8 text (repeated to --length) instead of --prompt's"


def _train_length_option():
    return typer.Option(None, "--train-length", min=1, help=TRAIN_LENGTH_HELP)


def _load_mamba(model: str, device: str | None, train_length: int | None, tokenizer=None):
    """(model, codec, training length): the option's, else the checkpoint's, else None."""
    from longseq.utils import default_device

    try:
        dev = default_device(device)
        net, codec, extra = hub.load_mamba2(model, dev, tokenizer)
    except (hub.CheckpointError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    if codec is None:
        fail(
            f"{model} has no tokenizer: put its tokenizer files (tokenizer.json, ...) in the "
            "folder or give --tokenizer DIR; a byte-level model says so in config.json with "
            '"longseq": {"tokenizer": {"type": "byte"}}'
        )
    return net, codec, train_length or extra.get("train_length")


def _check_mitigations(specs, train_length: int | None = None, loaded: bool = False) -> None:
    """Before any work: every spec parses; once the model is ``loaded``, the calibrated
    ones have a training length."""
    from longseq.collapse import parse_mitigation
    from longseq.collapse.evaluate import CALIBRATED, NEEDS_VALUE

    for spec in specs:
        if spec in CALIBRATED:
            if loaded and not train_length:
                fail(
                    f"--mitigation {spec} needs the model's training length: give "
                    f"--train-length N (the checkpoint records none), or a value "
                    f"({NEEDS_VALUE[spec]})"
                )
            continue
        try:
            parse_mitigation(spec)
        except ValueError as e:
            fail(f"--mitigation: {e}")


def _mitigate(net, spec: str, train_length: int | None, codec, calibration=None, read_length=None):
    """Apply a mitigation given on the command line; 'norm', 'window' and 'dt' without a
    value use the model's training length (window), its state norms there (bounds, read
    on ``calibration`` inputs, default held-out text) or its ratio to ``read_length``
    (dt)."""
    from longseq.collapse import apply_named_mitigation

    try:
        apply_named_mitigation(net, spec, train_length, calibration, read_length, codec)
    except ValueError as e:
        fail(f"--mitigation: {e}")


def _length(length: int | None, train_length: int | None, factor: int = 64) -> int:
    if length is not None:
        return length
    if not train_length:
        fail(
            f"--length is needed, or --train-length N: the default is {factor} x the "
            "training length, which the checkpoint does not record"
        )
    return factor * train_length


def _check_length(length: int | None, least: int) -> None:
    if length is not None and length < least:
        fail(f"--length must be >= {least} tokens, got {length}")


def _read_text_file(path: Path | None) -> str | None:
    """The text of --text-file, read now (before any work), or a one-line error."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"--text-file: {path} does not exist")
    except IsADirectoryError:
        fail(f"--text-file: {path} is a folder; give a text file")
    except UnicodeDecodeError as e:
        fail(f"--text-file: {path} is not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        fail(f"--text-file: cannot read {path} ({e.strerror or e})")
    if not text:
        fail(f"--text-file: {path} is empty")
    return text


def _input_ids(net, n: int, prompt: str, text: str | None, codec):
    """``n`` tokens of the prompt (or of the --text-file text) in the model's tokens,
    checked against its vocabulary before any work."""
    from longseq.collapse import long_text, text_tokens
    from longseq.collapse.streaming import check_vocabulary

    try:
        ids = text_tokens(text, n, codec) if text is not None else long_text(n, prompt, codec)
        check_vocabulary(net, ids)
    except ValueError as e:
        fail(str(e))
    return ids


def _out_dir(out: Path) -> Path:
    """Create the output folder once every option is checked and the model is loaded,
    before any work, or stop with a one-line error."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder")
    make_folder(out, "--out")
    return out


def _needs_plots(command: str, out: Path) -> None:
    """The checks every command makes before loading the model: matplotlib, --out."""
    require_module("matplotlib", f"collapse {command} (it writes plots)")
    check_folder(out, "--out")


MITIGATION_HELP = (
    "none | forget[:D,B] | norm[:BOUND] | norm:layer | window[:TOKENS] | dt[:SCALE] | "
    "a:SCALE | bclip:VALUE"
)


@app.command("diagnose")
def collapse_diagnose(
    model: str = typer.Option("collapse-mamba2", help=MODEL_HELP),
    length: int = typer.Option(None, help="tokens (default 64 x training length)"),
    prompt: str = typer.Option("text", help="text | newline"),
    text_file: Path = typer.Option(None, help=TEXT_FILE_HELP),
    segment: int = typer.Option(
        None, min=1, help="tokens between state readings (default: 256, or the whole prompt)"
    ),
    histogram_at: list[int] = typer.Option(
        None, help="positions for state-value histograms (default: training length and end)"
    ),
    mitigation: str = typer.Option("none", help=MITIGATION_HELP),
    train_length: int = _train_length_option(),
    tokenizer: Path = typer.Option(None, help=TOKENIZER_HELP),
    out: Path = typer.Option(Path("collapse-diagnose"), help="output directory"),
    device: str = typer.Option(None),
) -> None:
    """Per-layer, per-head state statistics versus position: JSON + plots."""
    from longseq.collapse import state_statistics
    from longseq.collapse.plots import plot_state_histograms, plot_state_trace

    _check_length(length, 1)
    if prompt not in ("text", "newline"):
        fail(f"--prompt must be 'text' or 'newline', got {prompt!r}")
    check_unique(histogram_at, "--histogram-at")
    _check_mitigations([mitigation])
    text = _read_text_file(text_file)
    _needs_plots("diagnose", out)
    net, codec, t_train = _load_mamba(model, device, train_length, tokenizer)
    _check_mitigations([mitigation], t_train, loaded=True)
    n = _length(length, t_train)
    if segment is not None and segment > n:
        fail(f"--segment ({segment}) is longer than the prompt ({n} tokens, --length)")
    segment = segment or min(256, n)
    outside = [p for p in histogram_at or () if not 1 <= p <= n]
    if outside:
        fail(f"--histogram-at must be positions in [1, {n}] (the prompt), got {outside[0]}")
    ids = _input_ids(net, n, prompt, text, codec)
    _mitigate(net, mitigation, t_train, codec, read_length=n)
    hist = histogram_at or [p for p in (t_train, n) if p]
    label = "text file" if text is not None else prompt
    _out_dir(out)
    try:
        trace = state_statistics(net, ids, segment, histogram_at=hist)
    except ValueError as e:
        fail(str(e))
    trace.to_json(out / "state_trace.json")
    plot_state_trace(trace, out / "state_trace.png", t_train)
    plot_state_histograms(trace, out / "state_hist.png")
    norm = trace.tensor("norm").max(-1).values  # (readings, layers)
    table = Table(title=f"largest head state norm ({label}, mitigation {mitigation})")
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
    console.print(
        f"wrote {out / 'state_trace.json'}, {out / 'state_trace.png'} and {out / 'state_hist.png'}"
    )


#: default passkey prompts are at least this many tokens
PASSKEY_MIN = 256


@app.command("passkey")
def collapse_passkey(
    model: str = typer.Option("collapse-passkey-mamba2", help=MODEL_HELP),
    lengths: list[int] = typer.Option(
        None, help="prompt lengths (default: 1, 2, 4, 8 x training length, at least 256)"
    ),
    trials: int = typer.Option(4, min=1, help="prompts per (length, depth)"),
    mitigation: str = typer.Option(
        "none",
        help=MITIGATION_HELP + "; a bare 'norm' is calibrated on passkey prompts of the "
        "training length, a bare 'dt' scales dt by training length / prompt length",
    ),
    train_length: int = _train_length_option(),
    tokenizer: Path = typer.Option(None, help=TOKENIZER_HELP),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("collapse-passkey")),
    device: str = typer.Option(None),
) -> None:
    """Passkey retrieval accuracy by prompt length and needle depth, the prompts built in
    the model's tokens: heatmap + JSON."""
    import json as _json

    from longseq.collapse import apply_named_mitigation, passkey_accuracy, passkey_calibration
    from longseq.collapse.evaluate import passkey_min_length
    from longseq.collapse.plots import plot_passkey

    if lengths and min(lengths) < 1:
        fail(f"--lengths must be >= 1 token, got {min(lengths)}")
    check_unique(lengths, "--lengths")
    _check_mitigations([mitigation])
    _needs_plots("passkey", out)
    net, codec, t_train = _load_mamba(model, device, train_length, tokenizer)
    _check_mitigations([mitigation], t_train, loaded=True)
    least = passkey_min_length(codec)
    if lengths and min(lengths) < least:
        fail(
            f"--lengths must be >= {least} tokens (the prompt's fixed text in this model's "
            f"tokens), got {min(lengths)}"
        )
    hint = (
        "collapse-passkey-mamba2 is trained on passkey prompts: "
        "longseq collapse passkey --model collapse-passkey-mamba2"
    )
    if t_train and t_train < least:
        console.print(
            f"[yellow]note:[/] {model} was trained on {t_train}-token windows, shorter than a "
            f"passkey prompt, so it has likely never seen one; {hint}"
        )
    calibration = (
        passkey_calibration(t_train, tokenizer=codec) if t_train and t_train >= least else None
    )
    on_length = None
    if mitigation == "dt":  # the scale depends on the prompt length

        def on_length(n: int) -> None:
            apply_named_mitigation(net, "dt", t_train, read_length=n)

    else:
        _mitigate(net, mitigation, t_train, codec, calibration)
    if not lengths:
        base = max(_length(None, t_train, 1), PASSKEY_MIN, least)
        lengths = [base * k for k in (1, 2, 4, 8)]
    _out_dir(out)
    try:
        res = passkey_accuracy(
            net, lengths, trials=trials, seed=seed, on_length=on_length, tokenizer=codec
        )
    except ValueError as e:
        fail(str(e))
    (out / "passkey.json").write_text(_json.dumps(res.to_dict(), indent=2))
    plot_passkey(res, out / "passkey.png", f"passkey, mitigation {mitigation}")
    table = Table(title=f"passkey accuracy (mitigation {mitigation})")
    table.add_column("length")
    for d in res.depths:
        table.add_column(f"depth {d:.2f}", justify="right")
    for n, row in zip(res.lengths, res.accuracy, strict=True):
        table.add_row(str(n), *[f"{100 * a:.0f}%" for a in row])
    console.print(table)
    if max(max(row) for row in res.accuracy) == 0:
        console.print(
            f"[yellow]note:[/] {model} found no key at any length or depth: it may not do "
            f"passkey retrieval at all; {hint}"
        )
    console.print(f"wrote {out / 'passkey.json'} and {out / 'passkey.png'}")


DEFAULT_CURVES = ("none", "forget", "norm", "window", "dt")


@app.command("loss-curve")
def collapse_loss_curve(
    model: str = typer.Option("collapse-mamba2", help=MODEL_HELP),
    length: int = typer.Option(None, help="tokens (default 64 x training length)"),
    prompt: str = typer.Option("text", help="text | newline"),
    text_file: Path = typer.Option(None, help=TEXT_FILE_HELP),
    mitigation: list[str] = typer.Option(
        list(DEFAULT_CURVES),
        help="one curve per mitigation (repeat the option): " + MITIGATION_HELP,
    ),
    train_length: int = _train_length_option(),
    tokenizer: Path = typer.Option(None, help=TOKENIZER_HELP),
    out: Path = typer.Option(Path("collapse-loss")),
    device: str = typer.Option(None),
) -> None:
    """Per-position loss far beyond the training length, one curve per mitigation."""
    _check_length(length, 2)
    if prompt not in ("text", "newline"):
        fail(f"--prompt must be 'text' or 'newline', got {prompt!r}")
    check_unique(mitigation, "--mitigation")
    _check_mitigations(mitigation)
    text = _read_text_file(text_file)
    _needs_plots("loss-curve", out)
    net, codec, t_train = _load_mamba(model, device, train_length, tokenizer)
    _check_mitigations(mitigation, t_train, loaded=True)
    n = _length(length, t_train)
    label = "file" if text is not None else prompt
    ids = _input_ids(net, n, prompt, text, codec)
    _out_dir(out)
    curves = _curves(net, model, label, ids, t_train, mitigation, codec)
    _write_curves(curves, out, model, label, t_train, n)
    console.print(f"wrote {out / f'loss_{label}.png'} and {out / f'loss_{label}.json'}")


def _curves(net, model: str, label: str, ids, t, specs, codec, step=(0, 0)) -> dict:
    """One loss curve per mitigation, each announced as it starts (it can take minutes)."""
    from longseq.collapse import loss_curve

    n = len(ids)
    done, total = step if step != (0, 0) else (0, len(specs))
    curves = {}
    for spec in specs:
        done += 1
        console.print(
            f"\\[{done}/{total}] {model}: {label} prompt, {n:,} tokens, {spec}", soft_wrap=True
        )
        _mitigate(net, spec, t, codec, read_length=n)
        try:
            curves[spec] = loss_curve(net, ids, t, progress=True)
        except ValueError as e:
            fail(str(e))
    return curves


def _write_curves(curves: dict, out: Path, model: str, label: str, t, n: int) -> None:
    import json as _json

    from longseq.collapse.plots import plot_loss_curves

    (out / f"loss_{label}.json").write_text(
        _json.dumps({k: c.to_dict() for k, c in curves.items()}, indent=2)
    )
    plot_loss_curves(curves, out / f"loss_{label}.png", f"{model}: {label} prompt")
    _print_loss_table(curves, t, n, label)


#: the unit of every loss this toolkit prints (byte-level models: a token is a byte)
NLL_UNIT = "nats/token"


def _print_loss_table(curves: dict, t: int | None, n: int, prompt: str) -> None:
    """Mean NLL in [0, T) and in ranges growing 4x beyond it; without a known training
    length T, the ranges start at n / 64."""
    base = t or max(1, n // 64)
    ranges = [(0, base)] + [
        (base * 4**k, min(base * 4 ** (k + 1), n)) for k in range(4) if base * 4**k < n
    ]
    known = f"training length {t}" if t else "training length unknown"
    table = Table(
        title=f"mean NLL ({NLL_UNIT}, every token weighing the same) by position, {prompt} "
        f"prompt, {known}"
    )
    table.add_column("mitigation")
    for lo, hi in ranges:
        table.add_column(f"{lo}-{hi}", justify="right")
    for name, c in curves.items():
        table.add_row(name, *[f"{c.mean_between(lo, hi):.3f}" for lo, hi in ranges])
    console.print(table)


@app.command("demo")
def collapse_demo(
    model: str = typer.Option("collapse-mamba2", help=MODEL_HELP),
    train_length: int = _train_length_option(),
    tokenizer: Path = typer.Option(None, help=TOKENIZER_HELP),
    out: Path = typer.Option(Path("collapse-demo")),
    device: str = typer.Option(None),
) -> None:
    """Per-position loss of a Mamba-2 up to 64x its training length, without and with
    each mitigation and the Delta-t baseline (text and all-newline prompts); plots and
    JSON written to OUT."""
    _needs_plots("demo", out)
    net, codec, t_train = _load_mamba(model, device, train_length, tokenizer)
    if not t_train:
        fail(
            "--train-length N is needed: the demo reads 64 x the training length and "
            "calibrates the mitigations there, and the checkpoint records none"
        )
    n = _length(None, t_train)
    _out_dir(out)
    console.print(
        f"[bold]State collapse demo[/]: {model}, trained on {t_train}-token windows, "
        f"read for {n} tokens ({n // t_train}x), {2 * len(DEFAULT_CURVES)} loss curves"
    )
    for i, prompt in enumerate(("text", "newline")):
        step = (i * len(DEFAULT_CURVES), 2 * len(DEFAULT_CURVES))
        ids = _input_ids(net, n, prompt, None, codec)
        curves = _curves(net, model, prompt, ids, t_train, DEFAULT_CURVES, codec, step)
        _write_curves(curves, out, model, prompt, t_train, n)
    console.print(f"plots and JSON in {out}")
