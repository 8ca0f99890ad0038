"""Passkey retrieval beyond the training length, before and after each mitigation
-> benchmarks/results/collapse/passkey.{json,md,png}.

The model (default: the shipped ``collapse-passkey-mamba2``, trained on passkey documents
of its training length T) is asked for the key in the paper's prompt format at lengths
T, 2T, ... and needle depths 0 ... 1, without a mitigation and with each of the three
training-free ones: forget-more with the paper's values (and with its decay scale
alone, B unscaled), state normalization with each head's bound calibrated on 32
passkey prompts of length T (other keys than the test prompts'), and the sliding window
r = T; and the Delta-t baseline (dt scaled by T / prompt length, LongMamba-style).

    python benchmarks/collapse_passkey.py [--model NAME_OR_DIR] [--factors 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from longseq import hub
from longseq.collapse import apply_named_mitigation, passkey_accuracy, passkey_calibration
from longseq.collapse.plots import plot_passkey_grid

RESULTS = Path(__file__).parent / "results" / "collapse"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="collapse-passkey-mamba2")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--trials", type=int, default=4, help="prompts per (length, depth)")
    ap.add_argument(
        "--mitigations",
        nargs="+",
        default=["none", "forget", "forget:0.9999,1", "norm", "window", "dt"],
    )
    ap.add_argument("--calibration", type=int, default=32, help="prompts to set norm bounds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _, extra = hub.load_mamba2(args.model)
    t = int(extra["train_length"])
    lengths = [f * t for f in args.factors]
    calib = passkey_calibration(t, args.calibration)

    results, seconds = {}, {}
    for spec in args.mitigations:
        on_length = None
        if spec == "dt":  # scaled for each prompt length

            def on_length(n: int) -> None:
                apply_named_mitigation(model, "dt", t, read_length=n)

        else:
            apply_named_mitigation(model, spec, t, calibration_ids=calib)
        t0 = time.time()
        results[spec] = passkey_accuracy(
            model, lengths, args.depths, args.trials, seed=0, on_length=on_length
        )
        seconds[spec] = round(time.time() - t0, 1)
        accs = results[spec].mean_by_length()
        means = ", ".join(f"{n}: {a:.2f}" for n, a in zip(lengths, accs, strict=True))
        print(f"{spec}: {means}", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "model": args.model,
        "train_length": t,
        "trials": args.trials,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "results": {k: r.to_dict() for k, r in results.items()},
    }
    (RESULTS / "passkey.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_passkey_grid(results, RESULTS / "passkey.png", f"{args.model} (trained at {t} bytes)")
    n_prompts = len(args.depths) * args.trials
    lines = [
        "# Passkey retrieval beyond the training length",
        "",
        f"Model `{args.model}`, trained at T = {t} bytes. Accuracy over {n_prompts} prompts "
        f"per length ({len(args.depths)} needle depths x {args.trials}), greedy decoding. "
        f"Seconds on {torch.get_num_threads()} CPU thread(s). "
        "Written by `benchmarks/collapse_passkey.py`.",
        "",
        "| mitigation | " + " | ".join(f"{n} ({n // t}T)" for n in lengths) + " | seconds |",
        "|---|" + "---|" * (len(lengths) + 1),
    ]
    for spec, r in results.items():
        accs = " | ".join(f"{a:.0%}" for a in r.mean_by_length())
        lines.append(f"| {spec} | {accs} | {seconds[spec]:.0f} |")
    (RESULTS / "passkey.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
