"""ShuffleMamba experiment on the shapes dataset, and the shipped ``shuffle-vim-shapes``.

Trains, for each seed, a deep Vim without shuffle, with the linear schedule
(p_l = p_max * l / (L - 1)), with p_max / 2 at every layer ("vim-constant", the
``"uniform"`` schedule: the same expected number of shuffled layers), and a same-size
ViT; writes the table to benchmarks/results/shuffle_shipped_model.{json,md} and exports the
best Vim.

    python scripts/train_shuffle_vim.py                    # the recorded run (CPU ok)
    python scripts/train_shuffle_vim.py --epochs 2 --seeds 0 --export ""   # smoke run
    torchrun --nproc_per_node=4 scripts/train_shuffle_vim.py   # several GPUs

Finished runs are skipped and an interrupted run resumes from its last epoch, so the
same command can be repeated until everything is done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from longseq import hub
from longseq.data.shapes import CLASSES
from longseq.shuffle.train import TrainConfig, build_classifier, train_classifier
from longseq.utils import dist_info, setup_distributed, write_results

NAME = "shuffle-vim-shapes"
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def build(kind: str, args) -> torch.nn.Module:
    if kind == "vit":
        return build_classifier("vit", args.depth, args.dim, args.patch, heads=args.heads)
    p, sched = {
        "vim-none": (0.0, "linear"),
        "vim-linear": (args.p_max, "linear"),
        "vim-constant": (args.p_max / 2, "uniform"),  # every layer, the first included
    }[kind]
    return build_classifier("vim", args.depth, args.dim, args.patch, p, sched)


def summarize(results: dict) -> dict:
    rows = []
    for kind, runs in results.items():
        if not runs:
            continue
        row = {"model": kind, "seeds": sorted(runs), "params": runs[next(iter(runs))]["params"]}
        for key in ("train_acc", "test_acc", "gap"):
            vals = [r[key] for r in runs.values()]
            row[key] = statistics.mean(vals)
            row[key + "_per_seed"] = vals
        rows.append(row)
    return {"rows": rows}


def to_markdown(summary: dict, args) -> str:
    lines = [
        "# ShuffleMamba experiment (shapes dataset)\n",
        f"Depth {args.depth}, width {args.dim}, 32x32 images, patch {args.patch}, "
        f"{args.n_train} training images, {args.epochs} epochs, seeds {args.seeds}. "
        "Written by `scripts/train_shuffle_vim.py`.\n",
        "| model | params | train acc | test acc | train - test gap | test acc per seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        per = ", ".join(f"{100 * v:.1f}" for v in r["test_acc_per_seed"])
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {100 * r['train_acc']:.1f}% | "
            f"{100 * r['test_acc']:.1f}% | {100 * r['gap']:.1f} | {per} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=["vim-none", "vim-linear", "vim-constant", "vit"]
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--p-max", type=float, default=0.5)
    ap.add_argument("--run-dir", default="runs/shuffle")
    ap.add_argument("--results", default=str(RESULTS / "shuffle_shipped_model"))
    ap.add_argument("--export", default=str(hub.CHECKPOINT_DIR / NAME), help="'' to skip")
    args = ap.parse_args()
    device = setup_distributed()
    rank, _ = dist_info()
    results: dict[str, dict[int, dict]] = {k: {} for k in args.models}
    for kind in args.models:
        for seed in args.seeds:
            run = Path(args.run_dir) / f"{kind}-s{seed}"
            run.mkdir(parents=True, exist_ok=True)
            if (run / "result.json").exists():
                results[kind][seed] = json.loads((run / "result.json").read_text())
                continue
            torch.manual_seed(seed)
            model = build(kind, args)
            cfg = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                n_train=args.n_train,
                seed=seed,
            )
            if rank == 0:
                print(
                    f"== {kind} seed {seed}: {model.num_parameters() / 1e6:.2f}M params", flush=True
                )
            res = train_classifier(model, cfg, device, run / "metrics.jsonl", run / "state.pt")
            res.update(
                params=model.num_parameters(), config=model.config.to_dict(), train=cfg.to_dict()
            )
            if rank == 0:
                save_file(
                    {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                    str(run / "model.safetensors"),
                )
                (run / "result.json").write_text(json.dumps(res, indent=2))
                print(json.dumps({k: res[k] for k in ("train_acc", "test_acc", "gap")}), flush=True)
            results[kind][seed] = res
    if rank != 0:
        return
    summary = summarize(results)
    summary["args"] = {k: v for k, v in vars(args).items() if k not in ("export", "results")}
    write_results(args.results, summary, to_markdown(summary, args))
    print(to_markdown(summary, args))
    vims = [r for r in summary["rows"] if r["model"].startswith("vim")]
    if args.export and vims:
        best = max(vims, key=lambda r: r["test_acc"])
        seed = max(results[best["model"]], key=lambda s: results[best["model"]][s]["val_acc"])
        res = results[best["model"]][seed]
        model = build(best["model"], args)
        model.load_state_dict(
            load_file(str(Path(args.run_dir) / f"{best['model']}-s{seed}" / "model.safetensors"))
        )
        extra = {
            "classes": list(CLASSES),
            "dataset": {"name": "shapes", "img_size": 32},
            "training": {
                "script": "scripts/train_shuffle_vim.py",
                "argv": sys.argv[1:],
                "run": f"{best['model']}-s{seed}",
                "args": summary["args"],
                **res["train"],
            },
            "metrics": {k: res[k] for k in ("train_acc", "val_acc", "test_acc", "gap")},
        }
        path = hub.save_pretrained(model, args.export, "vim", extra)
        if Path(path).resolve().is_relative_to(hub.CHECKPOINT_DIR.resolve()):
            hub.register(
                NAME,
                path,
                f"depth-{args.depth} Vim ({best['model']}) for the 8-class "
                "shapes dataset (ShuffleMamba demo)",
            )
        print(f"exported {best['model']} seed {seed} to {path}")


if __name__ == "__main__":
    main()
