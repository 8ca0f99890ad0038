"""The ``longseq`` command line: one sub-command group per method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from longseq import hub

app = typer.Typer(
    help="longseq: research methods for long-sequence generative models.",
    no_args_is_help=True,
    add_completion=False,
)
power_app = typer.Typer(
    help="Power-SMC: sample p(y|x)^alpha with sequential Monte Carlo.", no_args_is_help=True
)
app.add_typer(power_app, name="power")
shuffle_app = typer.Typer(
    help="ShuffleMamba: layer-wise token shuffle for deep Vision Mamba training.",
    no_args_is_help=True,
)
app.add_typer(shuffle_app, name="shuffle")
collapse_app = typer.Typer(
    help="Stuffed Mamba: diagnose and fix Mamba-2 state collapse beyond the training length.",
    no_args_is_help=True,
)
app.add_typer(collapse_app, name="collapse")
kltrace_app = typer.Typer(
    help="KL-tracing: zero-shot optical flow from an autoregressive video model.",
    no_args_is_help=True,
)
app.add_typer(kltrace_app, name="kltrace")
streaming_app = typer.Typer(
    help="StreamingT2V: long, consistent text-to-video by autoregressive chunks.",
    no_args_is_help=True,
)
app.add_typer(streaming_app, name="streaming")
console = Console()


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


@app.command("checkpoints")
def checkpoints() -> None:
    """List the checkpoints shipped with the package."""
    table = Table(title="shipped checkpoints")
    for col in ("name", "description", "sha256"):
        table.add_column(col)
    for name, entry in sorted(hub.registry().items()):
        table.add_row(name, entry["description"], entry["sha256"][:16] + "…")
    console.print(table)


@power_app.command("demo")
def power_demo(
    model: str = typer.Option("power-arith-gpt", help="shipped checkpoint name or directory"),
    problems: int = typer.Option(48, min=1, help="held-out problems"),
    alpha: float = typer.Option(4.0, help="power exponent"),
    particles: int = typer.Option(16, min=1, help="SMC particles / best-of-N samples"),
    block_size: int = typer.Option(4, min=1, help="SMC resampling check interval (tokens)"),
    ramp_tokens: int = typer.Option(16, min=0, help="SMC exponent ramp length (tokens)"),
    mh_blocks: int = typer.Option(4, min=1, help="MH: blocks the answer is built in"),
    mh_steps: int = typer.Option(10, min=0, help="MH: steps after each block"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when present)"),
    json_out: Path = typer.Option(None, "--json", help="also write the table as JSON here"),
) -> None:
    """Accuracy and wall time of temperature 1, temperature 1/alpha, best-of-N, MH and
    Power-SMC on held-out 3-term additions, with the shipped model."""
    from longseq.data.arith import ArithTask, CharTokenizer
    from longseq.power.evaluate import evaluate_methods
    from longseq.utils import default_device

    if alpha <= 0:
        _fail(f"--alpha must be > 0, got {alpha}")
    try:
        dev = default_device(device)
        lm_model, _, extra = hub.load_causal_lm(model, dev)
    except (hub.CheckpointError, ValueError) as e:
        _fail(str(e))
    task_cfg = {k: v for k, v in extra.get("task", {}).items() if k != "name"}
    if extra.get("task", {}).get("name") != "arith":
        _fail(f"{model!r} was not trained on the arithmetic task; the demo needs one that was")
    task, tok = ArithTask(**task_cfg), CharTokenizer(extra["tokenizer"]["chars"])
    probs = task.sample_problems(problems, "test", seed=seed + 777)
    console.print(
        f"[bold]Power-SMC demo[/]: {problems} held-out problems like "
        f"[cyan]{probs[0].prompt}[/] (answer {probs[0].answer}); model {model}, "
        f"alpha={alpha:g}, device {dev}"
    )
    res = evaluate_methods(
        lm_model,
        tok,
        task,
        probs,
        alpha=alpha,
        n_particles=particles,
        block_size=block_size,
        ramp_tokens=ramp_tokens,
        mh_blocks=mh_blocks,
        mh_steps=mh_steps,
        seed=seed,
    )
    base = next(r.seconds for r in res if r.method == "temp-1")
    table = Table(title="held-out accuracy (one answer per problem)")
    for col in ("method", "settings", "accuracy", "wall s", "x temp-1 time"):
        table.add_column(col, justify="right" if col not in ("method", "settings") else "left")
    for r in res:
        table.add_row(
            r.method,
            r.settings,
            f"{100 * r.accuracy:.1f}%",
            f"{r.seconds:.2f}",
            f"{r.seconds / base:.1f}x",
        )
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps([r.to_dict() for r in res], indent=2))
        console.print(f"wrote {json_out}")


@power_app.command("sample")
def power_sample(
    prompt: str = typer.Argument(..., help="prompt text, e.g. '47+85+23='"),
    model: str = typer.Option(
        "power-arith-gpt", help="shipped name, our checkpoint dir, or a transformers model dir"
    ),
    method: str = typer.Option("smc", help="smc | temp | best-of-n | mh"),
    alpha: float = typer.Option(4.0, help="power exponent (temp uses temperature 1/alpha)"),
    particles: int = typer.Option(16, min=1),
    max_new_tokens: int = typer.Option(64, min=1),
    block_size: int = typer.Option(4, min=1),
    ramp_tokens: int = typer.Option(16, min=0, help="exponent ramp length (0 = constant)"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
    show: int = typer.Option(8, min=0, help="particles to list (smc)"),
) -> None:
    """Sample one completion of PROMPT (and, for smc, show the weighted particles)."""
    import torch

    from longseq.power import best_of_n, mh_power_sample, power_smc, sample
    from longseq.utils import default_device

    if method not in ("smc", "temp", "best-of-n", "mh"):
        _fail(f"--method must be one of smc, temp, best-of-n, mh; got {method!r}")
    try:
        dev = default_device(device)
        lm_model, codec, _ = hub.load_causal_lm(model, dev)
        ids = torch.tensor(codec.encode(prompt), dtype=torch.long)
        kw = dict(max_new_tokens=max_new_tokens, eos_token_id=codec.eos_token_id, seed=seed)
        if method == "smc":
            out = power_smc(
                lm_model,
                ids,
                alpha=alpha,
                n_particles=particles,
                block_size=block_size,
                ramp_tokens=ramp_tokens,
                progress=True,
                **kw,
            )
            text = codec.decode(out.sample[len(ids) :])
        elif method == "temp":
            out = sample(lm_model, ids, n=1, temperature=1 / alpha, **kw)
            text = codec.decode(out.sequences[0, len(ids) :])
        elif method == "best-of-n":
            out = best_of_n(lm_model, ids, n=particles, **kw)
            text = codec.decode(out.sequences[len(ids) :])
        else:
            out = mh_power_sample(lm_model, ids, alpha=alpha, progress=True, **kw)
            text = codec.decode(out.sequence[len(ids) :])
    except (hub.CheckpointError, ValueError, TypeError) as e:
        _fail(str(e))
    console.print(f"[bold]{prompt}[/][green]{text}[/]")
    if method == "smc" and show:
        table = Table(title=f"particles (log Z ≈ {out.log_z:.3f}, {out.n_resamples} resamplings)")
        for col in ("weight", "log p(y|x)", "completion"):
            table.add_column(col)
        order = out.log_weights.argsort(descending=True)[:show]
        for i in order.tolist():
            table.add_row(
                f"{out.weights[i]:.3f}",
                f"{out.seq_logprobs[i]:.2f}",
                codec.decode(out.sequences[i, len(ids) :]),
            )
        console.print(table)


@shuffle_app.command("demo")
def shuffle_demo(
    model: str = typer.Option("shuffle-vim-shapes", help="shipped checkpoint name or directory"),
    images: int = typer.Option(500, min=1, help="freshly generated test images"),
    seed: int = typer.Option(1234, help="seed of the fresh images"),
    device: str = typer.Option(None),
    grid: Path = typer.Option(None, help="also write a PNG grid of predictions here"),
) -> None:
    """Classify freshly generated shape images with the shipped Vim and print accuracy."""
    from longseq.data.shapes import CLASSES, ShapesDataset
    from longseq.shuffle.train import predict
    from longseq.utils import default_device

    try:
        dev = default_device(device)
        net, info = hub.load(model, dev)
    except (hub.CheckpointError, ValueError) as e:
        _fail(str(e))
    if info.config.get("architecture") not in ("vim", "vit"):
        _fail(f"{model!r} is not an image classifier checkpoint")
    size = net.config.img_size
    x, y = ShapesDataset("test", images, size, seed=seed).tensors()
    pred = predict(net, x, dev)
    acc = float((pred == y).float().mean())
    table = Table(title=f"{model}: {100 * acc:.1f}% of {images} fresh images")
    for col in ("class", "images", "accuracy"):
        table.add_column(col)
    for k, name in enumerate(CLASSES):
        mask = y == k
        table.add_row(
            name, str(int(mask.sum())), f"{100 * float((pred[mask] == k).float().mean()):.1f}%"
        )
    console.print(table)
    metrics = info.extra.get("metrics", {})
    if metrics:
        console.print(
            f"recorded at training: train {100 * metrics['train_acc']:.1f}%, "
            f"test {100 * metrics['test_acc']:.1f}% ({info.extra['training']['run']})"
        )
    if grid:
        from longseq.shuffle.plots import prediction_grid

        prediction_grid(x[:32], y[:32], pred[:32], CLASSES, grid)
        console.print(f"wrote {grid}")


@shuffle_app.command("train")
def shuffle_train(
    out: Path = typer.Option(..., help="directory for the checkpoint and metrics"),
    arch: str = typer.Option("vim", help="vim | vit"),
    depth: int = typer.Option(12, min=1),
    dim: int = typer.Option(64, min=8),
    patch: int = typer.Option(8, min=1),
    p_max: float = typer.Option(0.5, help="shuffle probability of the deepest layer"),
    schedule: str = typer.Option("linear", help="linear | constant"),
    epochs: int = typer.Option(5, min=1),
    n_train: int = typer.Option(1000, min=1),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Train a (small) Vim or ViT on the shapes dataset, with or without the shuffle."""
    import json as _json

    import torch

    from longseq.data.shapes import CLASSES
    from longseq.shuffle import SCHEDULES
    from longseq.shuffle.train import TrainConfig, build_classifier, train_classifier
    from longseq.utils import default_device

    if arch not in ("vim", "vit"):
        _fail(f"--arch must be vim or vit, got {arch!r}")
    if schedule not in SCHEDULES:
        _fail(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= p_max <= 1:
        _fail(f"--p-max must be in [0, 1], got {p_max}")
    try:
        dev = default_device(device)
        torch.manual_seed(seed)
        net = build_classifier(arch, depth, dim, patch, p_max, schedule)
    except ValueError as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, n_train=n_train, seed=seed)
    console.print(
        f"training {arch} ({net.num_parameters() / 1e6:.2f}M params) on {dev}, "
        f"shuffle p_max={p_max} {schedule}"
    )
    res = train_classifier(net, cfg, dev, out / "metrics.jsonl", out / "state.pt")
    hub.save_pretrained(
        net,
        out,
        arch,
        {"classes": list(CLASSES), "metrics": res, "training": {"run": out.name, **cfg.to_dict()}},
    )
    (out / "result.json").write_text(_json.dumps(res, indent=2))
    console.print(
        f"train {100 * res['train_acc']:.1f}%  test {100 * res['test_acc']:.1f}%  "
        f"gap {100 * res['gap']:.1f}  -> {out}"
    )


def _load_mamba(model: str, device: str | None):
    from longseq.utils import default_device

    try:
        dev = default_device(device)
        net, codec, extra = hub.load_mamba2(model, dev)
    except (hub.CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    return net, extra.get("train_length")


def _mitigate(net, spec: str, train_length: int | None, calibration=None):
    """Apply a mitigation given on the command line; 'norm' and 'window' without a
    value use the model's training length (window) or its state norm there (bound,
    read on ``calibration`` inputs, default held-out text)."""
    from longseq.collapse import apply_named_mitigation

    try:
        apply_named_mitigation(net, spec, train_length, calibration)
    except ValueError as e:
        _fail(f"--mitigation: {e}")


def _length(length: int | None, train_length: int | None, factor: int = 64) -> int:
    if length:
        return length
    if not train_length:
        _fail("--length is needed: the checkpoint records no training length")
    return factor * train_length


@collapse_app.command("diagnose")
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
        _fail(str(e))
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


@collapse_app.command("passkey")
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
        _fail(str(e))
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


@collapse_app.command("loss-curve")
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
        _fail(str(e))
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


@collapse_app.command("demo")
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


def _load_tracer(model: str, device: str | None, masks: int | None, scales: str | None):
    from longseq.kltrace import load_tracer
    from longseq.utils import default_device

    try:
        net, cfg = load_tracer(model, default_device(device))
    except (hub.CheckpointError, ValueError) as e:
        _fail(str(e))
    if masks is not None:
        cfg.n_masks = masks
    if scales:
        try:
            cfg.scales = tuple(float(v) for v in scales.split(","))
        except ValueError:
            _fail(f"--scales must be comma-separated fractions like 1,0.75,0.5, got {scales!r}")
    try:
        cfg.validate()
    except ValueError as e:
        _fail(str(e))
    return net, cfg


def _parse_points(text: str) -> list[tuple[float, float]]:
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.replace(" ", "").split(";") if p]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 for p in pts):
        _fail(f"--points must look like 'x,y;x,y' (pixels), got {text!r}")
    return pts


def _grid_points(h: int, w: int, step: int) -> list[tuple[float, float]]:
    return [
        (x + 0.5, y + 0.5) for y in range(step // 2, h, step) for x in range(step // 2, w, step)
    ]


@kltrace_app.command("flow")
def kltrace_flow(
    frame0: Path = typer.Argument(..., help="first frame (image file)"),
    frame1: Path = typer.Argument(..., help="second frame, same size"),
    points: str = typer.Option(None, help="'x,y;x,y' query points in pixels (default: a grid)"),
    grid: int = typer.Option(8, min=2, help="grid spacing in pixels when --points is not given"),
    model: str = typer.Option("kltrace-lras", help="shipped checkpoint name or directory"),
    masks: int = typer.Option(None, min=1, help="reveal masks averaged over (default 5)"),
    scales: str = typer.Option(None, help="zoom windows, e.g. 1,0.75,0.5 (fractions of the frame)"),
    out: Path = typer.Option(Path("kltrace-flow"), help="output folder (PNG + JSON)"),
    device: str = typer.Option(None),
) -> None:
    """Trace points of FRAME0 into FRAME1; writes flow.png (arrows) and flow.json."""
    from longseq.kltrace import trace_points
    from longseq.kltrace.plots import flow_figure
    from longseq.kltrace.tracing import jobs_per_point
    from longseq.media import read_image
    from longseq.utils import progress_bar

    try:
        f0, f1 = read_image(frame0), read_image(frame1)
    except (FileNotFoundError, ValueError, ImportError) as e:
        _fail(str(e))
    if f0.shape != f1.shape:
        _fail(f"the frames differ in size: {f0.shape[:2]} vs {f1.shape[:2]}")
    net, cfg = _load_tracer(model, device, masks, scales)
    h, w = f0.shape[:2]
    pts = np.array(_parse_points(points) if points else _grid_points(h, w, grid), dtype=np.float32)
    try:
        n_jobs = len(pts) * jobs_per_point((h, w), cfg, net.config.image_size)
        with progress_bar("KL-tracing", n_jobs) as advance:
            res = trace_points(net, f0, f1, pts, cfg, keep_maps=True, progress=advance)
    except ValueError as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    est = {"KL-tracing": (res.targets["kl"], res.occluded["kl"])}
    flow_figure(f0, f1, pts, est, out / "flow.png", kl_map=res.maps["kl"][0])
    record = {
        "frame0": str(frame0),
        "frame1": str(frame1),
        "model": model,
        "config": dict(vars(cfg)),
        "points": [
            {
                "x": float(p[0]),
                "y": float(p[1]),
                "target_x": float(t[0]),
                "target_y": float(t[1]),
                "flow_x": float(t[0] - p[0]),
                "flow_y": float(t[1] - p[1]),
                "occluded": bool(o),
                "peak_kl": float(k),
            }
            for p, t, o, k in zip(
                pts, res.targets["kl"], res.occluded["kl"], res.peaks["kl"], strict=True
            )
        ],
        "sequences_per_point": res.sequences_per_point,
    }
    (out / "flow.json").write_text(json.dumps(record, indent=2) + "\n")
    vis = ~res.occluded["kl"]
    console.print(
        f"{len(pts)} points, {int(vis.sum())} visible; mean flow "
        f"({np.mean(res.targets['kl'][vis, 0] - pts[vis, 0]) if vis.any() else 0:.2f}, "
        f"{np.mean(res.targets['kl'][vis, 1] - pts[vis, 1]) if vis.any() else 0:.2f}) px; "
        f"{res.sequences_per_point:.1f} model sequences per point -> {out}/flow.png, {out}/flow.json"
    )


def _metrics_table(results: dict, title: str) -> Table:
    table = Table(title=title)
    cols = ("method", "EPE", "<1", "<2", "<4", "<8", "<16", "δ_avg", "OA", "AJ", "ms/pt")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in results.items():
        table.add_row(
            name,
            f"{m['epe']:.2f}",
            *(f"{100 * m[f'pts_within_{d}']:.1f}" for d in (1, 2, 4, 8, 16)),
            f"{100 * m['average_pts_within_thresh']:.1f}",
            f"{100 * m['occlusion_accuracy']:.1f}",
            f"{100 * m['average_jaccard']:.1f}",
            f"{1000 * m['sec_per_point']:.1f}",
        )
    return table


@kltrace_app.command("bench")
def kltrace_bench(
    clips: int = typer.Option(8, min=1, help="held-out test clips"),
    points: int = typer.Option(16, min=1, help="query points per clip"),
    frames: int = typer.Option(3, min=2, help="frames per clip"),
    size: int = typer.Option(64, min=32, help="frame size in pixels"),
    model: str = typer.Option("kltrace-lras"),
    masks: int = typer.Option(None, min=1),
    scales: str = typer.Option(None),
    json_out: Path = typer.Option(None, "--json", help="write the metrics as JSON here"),
    device: str = typer.Option(None),
) -> None:
    """KL-tracing, the RGB-difference probe, Farneback and DIS on held-out synthetic
    clips (unseen seeds and textures), TAP-Vid "first" metrics."""
    from longseq.kltrace import evaluate_methods, synthetic_set

    net, cfg = _load_tracer(model, device, masks, scales)
    data = synthetic_set(clips, "test", size=size, n_frames=frames, n_points=points)
    try:
        results = evaluate_methods(net, data, cfg)
    except ImportError as e:
        _fail(str(e))
    console.print(_metrics_table(results, f"{clips} test clips x {points} points, {size}px"))
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


@kltrace_app.command("demo")
def kltrace_demo(
    model: str = typer.Option("kltrace-lras"),
    out: Path = typer.Option(Path("kltrace-demo")),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Trace a grid of points through a held-out clip with the shipped model; compare
    with the ground truth and DIS flow; writes frames and an arrow picture to OUT."""
    from longseq.data.flowworld import sample_world
    from longseq.kltrace import FLOW_METHODS, trace_points, track_with_flow
    from longseq.kltrace.plots import flow_figure
    from longseq.kltrace.tracing import jobs_per_point
    from longseq.media import write_image
    from longseq.utils import progress_bar

    net, cfg = _load_tracer(model, device, None, None)
    world = sample_world(seed, 64, 2, split="test")
    video = world.render()
    pts = np.array(_grid_points(64, 64, 8), dtype=np.float32)
    gt, gt_occ = world.track(pts)
    n_jobs = len(pts) * jobs_per_point((64, 64), cfg, net.config.image_size)
    with progress_bar("KL-tracing", n_jobs) as advance:
        res = trace_points(net, video[0], video[1], pts, cfg, keep_maps=True, progress=advance)
    dis = track_with_flow(FLOW_METHODS["dis"], video[0], video[1], pts)
    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "frame0.png", video[0])
    write_image(out / "frame1.png", video[1])
    est = {
        "KL-tracing": (res.targets["kl"], res.occluded["kl"]),
        "RGB-difference probe": (res.targets["rgb"], res.occluded["rgb"]),
        "DIS": dis,
    }
    flow_figure(video[0], video[1], pts, est, out / "flow.png", truth=(gt[:, 1], gt_occ[:, 1]))
    vis = ~gt_occ[:, 1]
    for name, (tg, _) in {**est, "zero motion (floor)": (pts, None)}.items():
        err = np.linalg.norm(tg[vis] - gt[vis, 1], axis=1)
        console.print(
            f"{name:>22}: mean end-point error {err.mean():.2f} px on {vis.sum()} visible points"
        )
    console.print(f"frames and flow.png in {out}")


def _load_pipeline(model: str, enhancer: str | None, device: str | None):
    from longseq.streaming import StreamingT2VPipeline
    from longseq.utils import default_device

    try:
        return StreamingT2VPipeline.from_pretrained(model, enhancer, default_device(device))
    except (hub.CheckpointError, ImportError, ValueError) as e:
        _fail(str(e))


def _video_metrics_row(table: Table, name: str, m: dict) -> None:
    table.add_row(
        name,
        f"{m['mawe']:.1f}",
        f"{m['scuts']:.0f}",
        f"{m.get('text_alignment', float('nan')):.3f}",
        f"{m['seam_flow_std']:.3f}" if "seam_flow_std" in m else "-",
    )


def _video_metrics_table(title: str) -> Table:
    table = Table(title=title)
    for col in ("video", "MAWE ↓", "SCuts ↓", "text alignment ↑", "seam flow std ↓"):
        table.add_column(col)
    return table


@streaming_app.command("generate")
def streaming_generate(
    prompt: str = typer.Argument(..., help="what the video shows"),
    frames: int = typer.Option(240, help="length of the video in frames"),
    out: Path = typer.Option(Path("streaming.mp4"), "-o", "--out", help=".mp4 or .gif"),
    model: str = typer.Option("streaming-t2v", help="shipped name or checkpoint directory"),
    enhance: bool = typer.Option(True, help="refine with the enhancer (randomized blending)"),
    enhancer: str = typer.Option("streaming-enhancer"),
    blending: str = typer.Option("random", help="random | shared | independent"),
    apm: bool = typer.Option(True, help="use the anchor frame (long-term memory)"),
    steps: int = typer.Option(None, help="denoising steps per chunk (default: the model's)"),
    guidance: float = typer.Option(None, help="text guidance scale (default: the model's)"),
    anchor_guidance: float = typer.Option(None, help="anchor guidance scale"),
    fps: float = typer.Option(8.0),
    scale: int = typer.Option(4, help="integer upscaling of the written frames"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Generate a long video from a prompt, chunk by chunk, and write it to OUT."""
    from longseq.data.videoworld import all_captions, caption_of, parse_caption
    from longseq.media import VIDEO_SUFFIXES, write_video
    from longseq.streaming import BLENDINGS

    if out.suffix.lower() not in VIDEO_SUFFIXES:
        _fail(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {out.name!r}")
    if frames < 1:
        _fail(f"--frames must be >= 1, got {frames}")
    if blending not in BLENDINGS:
        _fail(f"--blending must be one of {', '.join(BLENDINGS)}, got {blending!r}")
    if scale < 1:
        _fail(f"--scale must be >= 1, got {scale}")
    pipe = _load_pipeline(model, enhancer if enhance else None, device)
    if hub.registry().get(model) and not parse_caption(prompt):
        console.print(
            "[yellow]note:[/] the shipped model knows the video world's captions, e.g. "
            f"'{caption_of(all_captions()[0])}'; this prompt names none of its words"
        )
    try:
        video = pipe(
            prompt,
            frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            anchor_guidance_scale=anchor_guidance,
            use_anchor=apm,
            seed=seed,
        )
        if enhance:
            video = pipe.enhance(video.frames, prompt, blending=blending, seed=seed)
    except ValueError as e:
        _fail(str(e))
    write_video(out, video.frames, fps=fps, scale=scale)
    h, w = video.frames.shape[1:3]
    console.print(f"{len(video.frames)} frames of {w}x{h} written to {out}")


@streaming_app.command("demo")
def streaming_demo(
    frames: int = typer.Option(120),
    out: Path = typer.Option(Path("streaming-demo")),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Generate a long video for a held-out caption with the shipped models: the base
    chunks, the enhanced video, a frame strip, and their metrics, written to OUT."""
    from longseq.data.videoworld import sample_clip
    from longseq.media import frame_strip, write_image, write_video
    from longseq.streaming.evaluate import video_metrics

    pipe = _load_pipeline("streaming-t2v", "streaming-enhancer", device)
    caption = sample_clip(seed, "test").caption
    console.print(f"prompt (a caption never seen in training): [bold]{caption}[/]")
    base = pipe(caption, frames, seed=seed)
    enhanced = pipe.enhance(base.frames, caption, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_video(out / "base.gif", base.frames, scale=8)
    write_video(out / "enhanced.mp4", enhanced.frames, scale=4)
    write_video(out / "enhanced.gif", enhanced.frames, scale=4)
    write_image(out / "strip.png", frame_strip(enhanced.frames, 8, scale=4))
    table = _video_metrics_table("metrics")
    metrics = {}
    for name, v in (("base chunks (16 px)", base), ("enhanced (32 px)", enhanced)):
        metrics[name] = video_metrics(v.frames, caption, pipe.image_encoder, v.seams)
        _video_metrics_row(table, name, metrics[name])
    console.print(table)
    (out / "metrics.json").write_text(json.dumps({"prompt": caption, **metrics}, indent=2))
    console.print(f"videos, strip.png and metrics.json in {out}")


if __name__ == "__main__":
    app()
