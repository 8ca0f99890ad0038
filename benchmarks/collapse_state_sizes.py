"""Collapse severity versus state size -> benchmarks/results/collapse/state_sizes.{json,md}.

Models trained by ``scripts/train_collapse_mamba.py`` with the same recipe and
different ``--d-state`` (run directories hold their ``state.pt``) are read on
"\\n" x 64 training lengths and on held-out text, without and with the sliding window;
the largest head-state norm at the training length and at the end is reported too.

    python scripts/train_collapse_mamba.py --d-state 32 --run-dir runs/collapse-sizes
    python benchmarks/collapse_state_sizes.py --runs runs/collapse-sizes/dstate32 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from longseq import hub
from longseq.collapse import (
    SSMControl,
    apply_mitigation,
    clear_mitigations,
    long_text,
    loss_curve,
    state_statistics,
)
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM

RESULTS = Path(__file__).parent / "results" / "collapse"


def load_run(run: Path, shipped_cfg: dict) -> Mamba2ForCausalLM:
    """A run directory's state.pt, with the shipped model's config but its own d_state."""
    d_state = int(run.name.removeprefix("dstate"))
    cfg = Mamba2Config.from_dict({**shipped_cfg, "d_state": d_state})
    model = Mamba2ForCausalLM(cfg)
    model.load_state_dict(torch.load(run / "state.pt", map_location="cpu")["model"])
    return model.eval()


def read_model(m: Mamba2ForCausalLM, t: int, n: int) -> dict:
    """One row: mean NLL (every token weighing the same) inside the training length t
    and over the last three quarters of n tokens, on "\\n" x n and on held-out text,
    without and with the window r = t; the largest head-state norm at t and at n."""
    row = {"d_state": m.config.d_state, "state_elements": m.config.state_elements}
    row["params"] = m.num_parameters()
    for prompt in ("newline", "text"):
        ids = long_text(n, prompt)
        clear_mitigations(m)
        curve = loss_curve(m, ids, t)
        row[f"{prompt}_in_training"] = curve.mean_between(0, t)
        row[f"{prompt}_last_three_quarters"] = curve.mean_between(n // 4, n)
        apply_mitigation(m, SSMControl(window=t))
        window = loss_curve(m, ids, t)
        row[f"{prompt}_last_three_quarters_window"] = window.mean_between(n // 4, n)
    clear_mitigations(m)
    norm = state_statistics(m, long_text(n, "newline"), segment=t).tensor("norm")
    row["newline_state_norm_at_train_length"] = float(norm[0].max())
    row["newline_state_norm_at_end"] = float(norm[-1].max())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--factor", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shipped, info = hub.load("collapse-mamba2")
    t = info.extra["train_length"]
    n = args.factor * t
    models = {shipped.config.d_state: shipped}
    for r in args.runs:
        m = load_run(Path(r), shipped.config.to_dict())
        models[m.config.d_state] = m
    rows = []
    for _, m in sorted(models.items()):
        rows.append(read_model(m, t, n))
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "state_sizes.json").write_text(
        json.dumps(
            {"train_length": t, "read_length": n, "nll_weighting": "token", "rows": rows},
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"# Collapse versus state size\n\nTraining length {t} bytes, read for {n}. NLL in "
        "nats/token, every token weighing the same. Written by "
        "`benchmarks/collapse_state_sizes.py`.\n",
        '| d_state | state elements | "\\n" NLL in training length | "\\n" NLL, last 3/4 | '
        "same, window | text NLL, last 3/4 | same, window | max state norm at "
        f'{t} / {n} ("\\n") |',
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d_state']} | {r['state_elements']:,} | {r['newline_in_training']:.2f} | "
            f"{r['newline_last_three_quarters']:.2f} | "
            f"{r['newline_last_three_quarters_window']:.2f} | "
            f"{r['text_last_three_quarters']:.3f} | {r['text_last_three_quarters_window']:.3f} | "
            f"{r['newline_state_norm_at_train_length']:.1f} / "
            f"{r['newline_state_norm_at_end']:.1f} |"
        )
    (RESULTS / "state_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
