"""Forget length versus state size -> benchmarks/results/collapse/forget_length.{json,md}.

The paper's training-side rule: a Mamba-2 collapses beyond its training length
unless it was trained on sequences longer than its *forget length*, which grows
linearly with the state size (T_forget ~ 5.172 S - 4.469 thousand tokens, S in
millions of state elements). Here models of the shipped recipe with several
``d_state`` are trained at several training lengths T (``scripts/train_collapse_mamba.py
--d-state D --seq-len T``, same number of training tokens); each is read on "\\n" x 64T
and called *collapsed* when the mean NLL over the last three quarters exceeds the NLL
inside the training length by more than ``--margin`` nats. Per state size the forget
length is bracketed by the longest collapsing and the shortest non-collapsing T, and a
line is fitted through the brackets' geometric midpoints.

    python benchmarks/collapse_forget_length.py \\
        --runs 64:runs/forget/T64/dstate32 128:runs/collapse-sizes/dstate32 \\
               128:runs/forget-seed1/T128/dstate128:1 ...

(``T:run_dir[:seed]``; the seed is 0 unless given). Per state size and T the model is
called collapsed when the mean rise over its seeds exceeds the margin. Every run of the
recipe sees the same number of training tokens: 1,500 steps of 2,048 tokens (batch
16 x 128 bytes at T = 128, so batch 2048 / T), e.g. a second seed at d_state 256:

    python scripts/train_collapse_mamba.py --d-state 256 --seq-len 512 --batch-size 4 \
        --seed 1 --run-dir runs/forget-seed1/T512 --export-dir runs/forget-seed1/export

The shipped ``collapse-mamba2`` (d_state 128, T = 128) is always included. ``--add``
keeps the rows already in ``forget_length.json`` (whose runs may be gone), reads only
the given runs, with the NLL weighting recorded there, and writes the whole table again.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from collapse_state_sizes import load_run  # same folder
from longseq import hub
from longseq.collapse import long_text, loss_curve
from longseq.models.mamba2 import Mamba2ForCausalLM

RESULTS = Path(__file__).parent / "results" / "collapse"
PAPER = {"slope_k_tokens_per_M": 5.172, "intercept_k_tokens": -4.469}


WEIGHTING_TEXT = {
    "token": "nats/token, every token weighing the same",
    "bins": "means of log-spaced bins, 4 per octave",
}


def collapse_rise(model: Mamba2ForCausalLM, t: int, factor: int, weighting: str = "token") -> dict:
    n = factor * t
    curve = loss_curve(model, long_text(n, "newline"), t)
    inside = curve.mean_between(0, t, weighting)
    beyond = curve.mean_between(n // 4, n, weighting)
    row = {"nll_in_training": inside, "nll_last_three_quarters": beyond, "rise": beyond - inside}
    if weighting != "token":  # the token-weighted values too
        tok_in, tok_beyond = curve.mean_between(0, t), curve.mean_between(n // 4, n)
        row["token_weighted"] = {
            "nll_in_training": tok_in,
            "nll_last_three_quarters": tok_beyond,
            "rise": tok_beyond - tok_in,
        }
    return row


def plot(rows: list[dict], fit: dict | None, path: Path) -> None:
    """Each (state size, T) read: red cross = collapsed, green dot = stable; the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for collapsed, style, label in ((True, "rx", "collapsed"), (False, "go", "stable")):
        pts = [(r["state_elements"] / 1e6, r["train_length"]) for r in rows]
        pts = [p for p, r in zip(pts, rows, strict=True) if r["collapsed"] == collapsed]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, ms=7, mfc="none", label=label)
    if fit:
        sizes = [r["state_elements"] / 1e6 for r in rows]
        s = np.linspace(min(sizes) / 2, max(sizes) * 1.05, 50)
        t = 1e3 * (fit["slope_k_tokens_per_M"] * s + fit["intercept_k_tokens"])
        keep = t >= min(r["train_length"] for r in rows) / 2
        ax.plot(s[keep], t[keep], "k--", lw=1, label="fit through bracket midpoints")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("state size (million elements)")
    ax.set_ylabel("training length T (bytes)")
    ax.set_title('collapse on "\\n" x 64T by state size and training length', fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[], help="T:run_dir[:seed] entries")
    ap.add_argument("--factor", type=int, default=64)
    ap.add_argument("--margin", type=float, default=1.0, help="NLL rise (nats) = collapse")
    ap.add_argument("--add", action="store_true", help="keep the rows already written")
    args = ap.parse_args()
    shipped, info = hub.load("collapse-mamba2")
    shipped_cfg = shipped.config.to_dict()
    entries = [(int(info.extra["train_length"]), 0, shipped)]
    old_rows, old_runs, weighting, weighting_text = [], [], "token", "token"
    if args.add:
        old = json.loads((RESULTS / "forget_length.json").read_text())
        if (old["factor"], old["margin"]) != (args.factor, args.margin):
            raise SystemExit(
                f"--add: the file was written with --factor {old['factor']} --margin "
                f"{old['margin']}; give the same"
            )
        old_rows, old_runs, weighting_text = old["rows"], old["runs"], old["nll_weighting"]
        weighting = "bins" if weighting_text.startswith("mean of log-spaced") else "token"
        entries = []
    for spec in args.runs:
        t, _, rest = spec.partition(":")
        path, _, seed = rest.partition(":")
        if not path or not t.isdigit() or not (seed or "0").isdigit():
            raise SystemExit(f"--runs entries look like 128:runs/dir/dstate64[:1], got {spec!r}")
        entries.append((int(t), int(seed or 0), load_run(Path(path), shipped_cfg)))

    rows = []
    for t, seed, model in entries:
        row = {
            "d_state": model.config.d_state,
            "state_elements": model.config.state_elements,
            "train_length": t,
            "seed": seed,
            **collapse_rise(model, t, args.factor, weighting),
        }
        row["collapsed"] = row["rise"] > args.margin
        rows.append(row)
        print(json.dumps(row), flush=True)
    have = {(r["d_state"], r["train_length"], r["seed"]) for r in rows}
    rows += [r for r in old_rows if (r["d_state"], r["train_length"], r["seed"]) not in have]
    rows.sort(key=lambda r: (r["d_state"], r["train_length"], r["seed"]))

    brackets = []
    for d in sorted({r["d_state"] for r in rows}):
        rs = [r for r in rows if r["d_state"] == d]
        mean_rise = {
            t: float(np.mean([r["rise"] for r in rs if r["train_length"] == t]))
            for t in {r["train_length"] for r in rs}
        }
        bad = [t for t, rise in mean_rise.items() if rise > args.margin]
        good = [t for t, rise in mean_rise.items() if rise <= args.margin]
        lo = max(bad) if bad else None
        hi = min((g for g in good if lo is None or g > lo), default=None)
        mid = math.sqrt(lo * hi) if lo and hi else None
        brackets.append(
            {
                "d_state": d,
                "state_elements": rs[0]["state_elements"],
                "longest_collapsing_T": lo,
                "shortest_stable_T": hi,
                "forget_length_estimate": mid,
                "mean_rise_by_T": {str(t): mean_rise[t] for t in sorted(mean_rise)},
                "seeds_by_T": {
                    str(t): sum(r["train_length"] == t for r in rs) for t in sorted(mean_rise)
                },
            }
        )
    fit = None
    pts = [(b["state_elements"], b["forget_length_estimate"]) for b in brackets]
    pts = [(s, f) for s, f in pts if f is not None]
    if len(pts) >= 2:
        s, f = np.array(pts, dtype=float).T
        slope, intercept = np.polyfit(s / 1e6, f / 1e3, 1)
        fit = {"slope_k_tokens_per_M": float(slope), "intercept_k_tokens": float(intercept)}

    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = list(dict.fromkeys(old_runs + args.runs))  # in order, each once
    record = {"factor": args.factor, "margin": args.margin, "runs": runs}
    record |= {"nll_weighting": weighting_text, "rows": rows}
    record |= {"brackets": brackets, "fit": fit, "paper": PAPER}
    (RESULTS / "forget_length.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Forget length versus state size",
        "",
        f'Read on "\\n" x {args.factor}T; collapsed = NLL over the last 3/4 more than '
        f"{args.margin} nats above the NLL inside the training length (NLL: "
        f"{WEIGHTING_TEXT[weighting]}). Written by `benchmarks/collapse_forget_length.py`.",
        "",
        '| d_state | state elements | training length T | seed | "\\n" NLL in T | last 3/4 | rise '
        "| collapsed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d_state']} | {r['state_elements']:,} | {r['train_length']} | {r['seed']} | "
            f"{r['nll_in_training']:.2f} | {r['nll_last_three_quarters']:.2f} | "
            f"{r['rise']:+.2f} | {'yes' if r['collapsed'] else 'no'} |"
        )
    lines += [
        "",
        "| d_state | state elements | mean rise by T (seeds) | forget length bracket (T) |",
        "|---|---|---|---|",
    ]
    for b in brackets:
        lo, hi = b["longest_collapsing_T"], b["shortest_stable_T"]
        closed = f"({lo}, {hi}]" if lo else f"<= {hi}"
        text = closed if hi else f"> {lo}"
        rises = ", ".join(
            f"{t}: {r:+.2f} ({b['seeds_by_T'][t]})" for t, r in b["mean_rise_by_T"].items()
        )
        lines.append(f"| {b['d_state']} | {b['state_elements']:,} | {rises} | {text} |")
    if fit:
        lines += [
            "",
            f"Linear fit through the bracket midpoints: T_forget = "
            f"{fit['slope_k_tokens_per_M']:.3f} S {fit['intercept_k_tokens']:+.3f} thousand "
            f"tokens (S in millions of state elements); the paper reports "
            f"{PAPER['slope_k_tokens_per_M']} S {PAPER['intercept_k_tokens']:+.3f}.",
        ]
    (RESULTS / "forget_length.md").write_text("\n".join(lines) + "\n")
    plot(rows, fit, RESULTS / "forget_length.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
