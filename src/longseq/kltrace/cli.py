"""The ``longseq kltrace`` commands (KL-tracing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from longseq import hub
from longseq.cliutils import (
    App,
    check_folder,
    check_output_file,
    console,
    fail,
    folding_table,
    make_folder,
    require_module,
    write_text,
)
from longseq.kltrace.tracing import DEFAULT_MODEL

app = App(
    help="KL-tracing: zero-shot optical flow from an autoregressive video model.",
)


MODEL_HELP = (
    "shipped checkpoint name, checkpoint directory, or your own frame-pair model as "
    "module:Class or path/to/file.py:Class"
)

READOUT_HELP = (
    "fit (every slot's response against the bump's footprint), softargmax or centroid "
    "(of the averaged map's peak); default: the model's"
)

HOLD_HELP = (
    "hold the model's motion at what it infers from the clean frame 0, so the bump is only "
    "carried along (models with a motion() method); default: the model's"
)


def _load_tracer(
    model: str,
    device: str | None,
    masks: int | None,
    scales: str | None,
    passes: int | None = None,
    readout: str | None = None,
    hold_motion: bool | None = None,
):
    from longseq.kltrace import load_tracer
    from longseq.utils import default_device

    try:
        net, cfg = load_tracer(model, default_device(device))
    except (hub.CheckpointError, ValueError, TypeError) as e:
        fail(str(e))
    if masks is not None:
        cfg.n_masks = masks
    if passes is not None:
        cfg.passes = passes
    if readout is not None:
        cfg.readout = readout
    if hold_motion is not None:
        cfg.hold_motion = hold_motion
    if cfg.hold_motion and not callable(getattr(net, "motion", None)):
        fail(
            f"--hold-motion needs a model with a motion(frame0, frame1, revealed) method; "
            f"{type(net).__name__} has none (use --free-motion)"
        )
    if scales:
        try:
            cfg.scales = tuple(float(v) for v in scales.split(","))
        except ValueError:
            fail(f"--scales must be comma-separated fractions like 1,0.75,0.5, got {scales!r}")
    try:
        cfg.validate()
    except ValueError as e:
        fail(str(e))
    return net, cfg


def _output_folder(out: Path) -> None:
    """Make the output folder (checked with :func:`check_folder` before the model was
    loaded) before any tracing, or fail with one line."""
    make_folder(out, "--out")


def _parse_points(text: str) -> list[tuple[float, float]]:
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.replace(" ", "").split(";") if p]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 for p in pts):
        fail(f"--points must look like 'x,y;x,y' (pixels), got {text!r}")
    return pts


def _grid_points(h: int, w: int, step: int) -> list[tuple[float, float]]:
    return [
        (x + 0.5, y + 0.5) for y in range(step // 2, h, step) for x in range(step // 2, w, step)
    ]


@app.command("flow")
def kltrace_flow(
    frame0: Path = typer.Argument(..., help="first frame (image file)"),
    frame1: Path = typer.Argument(..., help="second frame, same size"),
    points: str = typer.Option(None, help="'x,y;x,y' query points in pixels (default: a grid)"),
    grid: int = typer.Option(8, min=2, help="grid spacing in pixels when --points is not given"),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    masks: int = typer.Option(
        None, min=1, help="reveal masks averaged over (default: the model's)"
    ),
    scales: str = typer.Option(
        None, help="zoom windows, e.g. 1,0.75,0.5 (fractions of the frame; default: the model's)"
    ),
    passes: int = typer.Option(
        None, min=1, help="coarse-to-fine passes (1: no refinement; default: the model's)"
    ),
    readout: str = typer.Option(None, help=READOUT_HELP),
    hold_motion: bool = typer.Option(None, "--hold-motion/--free-motion", help=HOLD_HELP),
    out: Path = typer.Option(Path("kltrace-flow"), help="output folder (PNG + JSON)"),
    device: str = typer.Option(None),
) -> None:
    """Trace points of FRAME0 into FRAME1; writes flow.png (arrows) and flow.json."""
    from longseq.kltrace import trace_points
    from longseq.kltrace.plots import flow_figure
    from longseq.kltrace.tracing import jobs_per_point
    from longseq.media import read_image
    from longseq.utils import progress_bar

    require_module("matplotlib", "kltrace flow (it draws flow.png)")
    check_folder(out, "--out")
    parsed = _parse_points(points) if points is not None else None
    try:
        f0, f1 = read_image(frame0), read_image(frame1)
    except (FileNotFoundError, ValueError, ImportError) as e:
        fail(str(e))
    if f0.shape != f1.shape:
        fail(f"the frames differ in size: {f0.shape[:2]} vs {f1.shape[:2]}")
    net, cfg = _load_tracer(model, device, masks, scales, passes, readout, hold_motion)
    h, w = f0.shape[:2]
    pts = np.array(parsed if parsed is not None else _grid_points(h, w, grid), dtype=np.float32)
    _output_folder(out)
    try:
        n_jobs = len(pts) * jobs_per_point((h, w), cfg, net.image_size)
        with progress_bar("KL-tracing", n_jobs) as advance:
            res = trace_points(net, f0, f1, pts, cfg, keep_maps=True, progress=advance)
    except (ValueError, TypeError) as e:
        fail(str(e))
    est = {"KL-tracing": (res.targets["kl"], res.occluded["kl"])}
    flow_figure(f0, f1, pts, est, out / "flow.png", kl_map=res.maps["kl"][0])
    record = {
        "frame0": str(frame0),
        "frame1": str(frame1),
        "model": model,
        # no limit (an infinite float) as null: strict JSON
        "config": {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in vars(cfg).items()
        },
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


# (label, key, scale, format): one row per TAP-Vid metric, one column per method
_METRIC_ROWS = (
    ("EPE (px)", "epe", 1, "{:.2f}"),
    *((f"within {d} px (%)", f"pts_within_{d}", 100, "{:.1f}") for d in (1, 2, 4, 8, 16)),
    ("δ_avg (%)", "average_pts_within_thresh", 100, "{:.1f}"),
    ("occlusion acc. OA (%)", "occlusion_accuracy", 100, "{:.1f}"),
    ("avg. Jaccard AJ (%)", "average_jaccard", 100, "{:.1f}"),
    ("ms / point", "sec_per_point", 1000, "{:.1f}"),
)


def _metrics_table(results: dict, title: str) -> Table:
    """Metrics down, methods across: narrow enough for an 80-column terminal, so no
    header or value is cut."""
    table = folding_table(title, ["metric", *results], right=results)
    for label, key, scale, fmt in _METRIC_ROWS:
        table.add_row(label, *(fmt.format(scale * m[key]) for m in results.values()))
    return table


@app.command("bench")
def kltrace_bench(
    clips: int = typer.Option(8, min=1, help="held-out test clips"),
    points: int = typer.Option(16, min=1, help="query points per clip"),
    frames: int = typer.Option(2, min=2, help="frames per clip (queries at frame 0)"),
    size: int = typer.Option(64, min=32, help="frame size in pixels"),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    masks: int = typer.Option(None, min=1),
    scales: str = typer.Option(None),
    passes: int = typer.Option(None, min=1, help="coarse-to-fine passes (default: the model's)"),
    readout: str = typer.Option(None, help=READOUT_HELP),
    hold_motion: bool = typer.Option(None, "--hold-motion/--free-motion", help=HOLD_HELP),
    json_out: Path = typer.Option(None, "--json", help="write the metrics as JSON here"),
    device: str = typer.Option(None),
) -> None:
    """KL-tracing, the RGB-difference probe, Farneback and DIS on held-out synthetic
    clips (unseen seeds and textures), TAP-Vid "first" metrics."""
    from longseq.kltrace import evaluate_methods, synthetic_set

    check_output_file(json_out, "--json")
    require_module("cv2", "kltrace bench (the Farneback and DIS baselines)")
    net, cfg = _load_tracer(model, device, masks, scales, passes, readout, hold_motion)
    data = synthetic_set(clips, "test", size=size, n_frames=frames, n_points=points)
    try:
        results = evaluate_methods(net, data, cfg)
    except (ImportError, TypeError) as e:
        fail(str(e))
    console.print(_metrics_table(results, f"{clips} test clips x {points} points, {size}px"))
    if json_out:
        write_text(json_out, json.dumps(results, indent=2) + "\n", "--json")


@app.command("demo")
def kltrace_demo(
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    out: Path = typer.Option(Path("kltrace-demo")),
    seed: int = typer.Option(0, min=0, help="seed of the held-out clip"),
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

    require_module("matplotlib", "kltrace demo (it draws flow.png)")
    require_module("cv2", "kltrace demo (the DIS baseline)")
    check_folder(out, "--out")
    net, cfg = _load_tracer(model, device, None, None)
    world = sample_world(seed, 64, 2, split="test")
    _output_folder(out)
    video = world.render()
    pts = np.array(_grid_points(64, 64, 8), dtype=np.float32)
    gt, gt_occ = world.track(pts)
    n_jobs = len(pts) * jobs_per_point((64, 64), cfg, net.image_size)
    with progress_bar("KL-tracing", n_jobs) as advance:
        res = trace_points(net, video[0], video[1], pts, cfg, keep_maps=True, progress=advance)
    dis = track_with_flow(FLOW_METHODS["dis"], video[0], video[1], pts)
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
