"""ShuffleMamba experiment -> benchmarks/results/shuffle_experiment.{json,md} and
benchmarks/results/shuffle_depth.png.

Does the layer-wise shuffle raise a Vim's test accuracy on top of drop-path, narrow its
train-test gap, and more so the deeper the Vim? Methods: no regularization, drop-path
alone, drop-path + the linear shuffle, drop-path + the authors' constant form. Both
schedules are swept over p in {0.25, 0.5, 0.75} at depth 6 and compared there, each at
its best p (chosen on validation accuracy, never on test); no regularization,
drop-path and drop-path + linear (at its best p) are trained at depths 6, 12 and 24.
4 seeds per setting; paired differences over seeds with 95% t-intervals; a
10,000-image test set; 32 px shapes, patch 4 (65 tokens). The grid and the analysis
are in :mod:`longseq.shuffle.experiment`.

    python benchmarks/shuffle_experiment.py --estimate   # time a few steps, print the total
    python benchmarks/shuffle_experiment.py              # the CPU run (2 processes x 1 thread)
    python benchmarks/shuffle_experiment.py --quick      # smoke run (runs/shuffle_experiment_quick)
    python benchmarks/shuffle_experiment.py --summarize-only   # tables and plot so far

Each run's result is saved in --run-dir as it finishes and finished runs are skipped,
so the same command resumes an interrupted experiment.

Sizing for 2 CPU cores (about 2.5 hours). A width-32 Vim (d_inner 64, one Mamba-2 head
of 64 channels per direction, d_state 16) costs about 1 ms per image and layer for a
training step on one core, nearly independent of the batch size, and 0.3 ms to
evaluate; the 10,000 test images are a fixed cost per run. So each run sees 1,000
training images for 10 epochs in batches of 16 (625 steps: small batches give more
steps for the same CPU time), drop-path 0.1. The gate before any comparison: without
regularization the model must beat chance (12.5%) clearly and overfit (a train-test
gap of several points), or a regularizer has nothing to act on. Pilots at depth 6
(unregularized, 1,000 images): the class token first (the authors' placement) reached
20% test after 8 epochs at patch 8, against 36% with the token in the middle (Vim's
placement), so this experiment puts it in the middle (``--cls-position first`` runs
the authors' placement); at patch 4, 12 epochs, middle: 74% train, 33% test.

GPU recipe (the same grid, larger; bf16 autocast; several processes share the device):

    python benchmarks/shuffle_experiment.py --device cuda --workers 4 --threads 2 \\
        --dim 192 --img-size 64 --n-train 20000 --epochs 60 --batch-size 128 \\
        --drop-path 0.3 --sweep-depth 12 --depth-schedules linear constant \\
        --cls-position first --seeds 0 1 2 3 4 5 \\
        --run-dir runs/shuffle_experiment_gpu --out benchmarks/results/shuffle_experiment_gpu

(64 px images, patch 4: 257 tokens, near the paper's 197.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from longseq.shuffle.experiment import (
    ExperimentConfig,
    estimate,
    load_results,
    run_experiment,
    summarize,
    write_summary,
)
from longseq.shuffle.plots import depth_plot

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv=None) -> argparse.Namespace:
    d = ExperimentConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny models and data")
    ap.add_argument("--estimate", action="store_true", help="time a few steps; train nothing")
    ap.add_argument("--summarize-only", action="store_true", help="tables and plot, no runs")
    ap.add_argument("--workers", type=int, default=2, help="processes (0: this one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--run-dir", default=None, help="default runs/shuffle_experiment[_quick]")
    ap.add_argument("--out", default=None, help="results path without suffix")
    ap.add_argument("--plot", default=None, help="depth plot (.png)")
    ap.add_argument("--depths", type=int, nargs="+", default=None)
    ap.add_argument("--sweep-depth", type=int, default=None)
    ap.add_argument("--p-values", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument(
        "--depth-schedules",
        nargs="+",
        choices=("linear", "constant"),
        default=None,
        help="schedules trained at the depths other than --sweep-depth (default: linear)",
    )
    for name in (
        "dim",
        "img_size",
        "patch",
        "drop_path",
        "n_train",
        "n_val",
        "n_test",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
    ):
        kind = type(getattr(d, name))
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    ap.add_argument("--cls-position", choices=("first", "middle"), default=None)
    ap.add_argument("--device", default=None)
    return ap.parse_args(argv)


def config(args: argparse.Namespace) -> ExperimentConfig:
    given = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if v is not None and k in ExperimentConfig.__dataclass_fields__
    }
    try:
        return ExperimentConfig.quick(**given) if args.quick else ExperimentConfig(**given)
    except ValueError as e:
        sys.exit(f"error: {e}")


def main(argv=None) -> None:
    args = parse(argv)
    cfg = config(args)
    tag = "_quick" if args.quick else ""
    run_dir = Path(args.run_dir or f"runs/shuffle_experiment{tag}")
    out = Path(
        args.out
        or (run_dir / "shuffle_experiment" if args.quick else RESULTS / "shuffle_experiment")
    )
    plot = Path(args.plot or out.with_name("shuffle_depth.png"))
    if args.estimate:
        torch.set_num_threads(args.threads)
        est = estimate(cfg)
        workers = max(args.workers, 1)
        print(json.dumps(est, indent=2))
        print(
            f"{est['runs']} runs, {est['cpu_seconds'] / 3600:.1f} CPU hours at these rates: "
            f"about {est['cpu_seconds'] / workers / 3600:.1f} hours on {workers} processes"
        )
        return
    if not args.summarize_only:
        run_experiment(cfg, run_dir, workers=args.workers, threads=args.threads)
    results = load_results(run_dir)
    if not results:
        sys.exit(f"error: no finished runs in {run_dir}")
    summary = summarize(results, cfg)
    summary["command"] = "python benchmarks/shuffle_experiment.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    write_summary(summary, out)
    depth_plot(summary, plot)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')} and {plot}")


if __name__ == "__main__":
    main()
