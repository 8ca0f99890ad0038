"""Streaming far beyond the training length -> benchmarks/results/collapse/streaming.{json,md}.

* Memory: ``longseq collapse loss-curve`` with the sliding window (r = the training
  length) and ``longseq collapse diagnose`` (the plain recurrent state) on 1,048,576
  tokens, each command in a process of its own, with the process's resident memory (now
  and peak) recorded when it has streamed 64K, 128K, ... tokens and when it exits
  (after writing its outputs).
* Cost of the sliding window: prefill and decoding tokens/s of the shipped
  ``collapse-mamba2`` for several windows r (the model's cache keeps each layer's last
  r SSM inputs; no past tokens are re-run), next to the model without a window.

    python benchmarks/collapse_streaming.py [--tokens 1048576] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "collapse"

# run inside the child: the CLI command, with resident memory read at token marks
CHILD = """
import json, sys
from pathlib import Path
import longseq.collapse.diagnostics as dg
import longseq.collapse.evaluate as ev
from longseq.cli import app
from longseq.utils import process_memory_mib

marks, args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
records, calls = [], []

def memory():
    m = process_memory_mib()
    return {"VmRSS_MiB": round(m["rss"], 1), "VmHWM_MiB": round(m["peak"], 1)}

def probed(stream):
    def wrapped(model, ids, segment=1024, on_segment=None):
        calls.append(1)
        pending = [m for m in marks if m <= len(ids)]
        for start, logits in stream(model, ids, segment, on_segment):
            yield start, logits
            while pending and start + len(logits) >= pending[0]:
                records.append({"run": len(calls), "tokens": pending.pop(0), **memory()})
    return wrapped

ev.stream_logits = probed(ev.stream_logits)
dg.stream_logits = probed(dg.stream_logits)
try:
    app(args, standalone_mode=False)
finally:
    records.append({"run": "exit", "tokens": None, **memory()})
    print("RECORDS " + json.dumps(records), flush=True)
"""


def run_command(args: list[str], marks: list[int]) -> dict:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(marks), json.dumps(args)],
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORDS ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {
        "command": "longseq " + " ".join(args),
        "seconds": round(time.time() - t0, 1),
        "points": json.loads(lines[-1].removeprefix("RECORDS ")),
    }


@torch.no_grad()
def window_cost(windows: list[int], prefill: int, decode: int, repeats: int = 3) -> list[dict]:
    """Prefill and decoding speed without and with each window: repeats interleaved over
    the settings, the best of each kept (the machine may be shared)."""
    from longseq import hub
    from longseq.collapse import SSMControl, apply_mitigation, clear_mitigations, long_text

    model, _ = hub.load("collapse-mamba2")
    ids = long_text(prefill + decode)
    best: dict = {}
    for _ in range(repeats):
        for r in [None, *windows]:
            clear_mitigations(model)
            if r:
                apply_mitigation(model, SSMControl(window=r))
            t0 = time.perf_counter()
            cache = model(ids[None, :prefill], use_cache=True).cache
            t1 = time.perf_counter()
            for t in range(prefill, prefill + decode):
                cache = model(ids[None, t : t + 1], cache=cache, use_cache=True).cache
            t2 = time.perf_counter()
            old = best.get(r, (float("inf"), float("inf"), cache))
            best[r] = (min(old[0], t1 - t0), min(old[1], t2 - t1), cache)
    rows = []
    for r, (t_prefill, t_decode, cache) in best.items():
        layer = cache.layers[0]
        held = [layer.conv_states, layer.recurrent_states]
        if layer.window is not None:
            held += [layer.window.xdt, layer.window.B, layer.window.log_decay]
        rows.append(
            {
                "window": r,
                "prefill_tokens_per_s": prefill / t_prefill,
                "decode_tokens_per_s": decode / t_decode,
                "cache_MiB_per_layer": sum(t.numel() * t.element_size() for t in held) / 2**20,
                # what re-running the receptive field would cost per decoded token
                "receptive_field_tokens": (
                    model.config.n_layer * (r + model.config.d_conv - 1) if r else None
                ),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_048_576)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--windows", type=int, nargs="+", default=[128, 1024, 8192])
    ap.add_argument("--skip-memory", action="store_true", help="keep the stored memory runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = RESULTS / "streaming.json"
    record = json.loads(out.read_text()) if out.exists() else {}
    record["threads"] = args.threads
    record["window_cost"] = {
        "model": "collapse-mamba2",
        "prefill": 8192,
        "decode": 256,
        "rows": window_cost(args.windows, 8192, 256),
    }
    if not args.skip_memory:
        n = args.tokens
        marks = [k * 65536 for k in (1, 2, 4, 8, 16) if k * 65536 <= n] + [n]
        common = ["--threads", str(args.threads), "collapse"]
        tmp = Path("/tmp") / "collapse-streaming-bench"
        record["memory"] = {
            "tokens": n,
            "runs": [
                run_command(
                    [*common, "loss-curve", "--length", str(n), "--prompt", "text"]
                    + ["--mitigation", "window", "--out", str(tmp / "l")],
                    marks,
                ),
                run_command(
                    [*common, "diagnose", "--length", str(n), "--prompt", "newline"]
                    + ["--out", str(tmp / "d")],
                    marks,
                ),
            ],
        }
        for run in record["memory"]["runs"]:
            print(run, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    write_md(record)


def write_md(record: dict) -> None:
    wc = record["window_cost"]
    lines = [
        "# Streaming far beyond the training length",
        "",
        f"Written by `benchmarks/collapse_streaming.py`, {record['threads']} CPU thread(s).",
        "",
        f"Sliding window on `{wc['model']}`: prefill {wc['prefill']:,} tokens, then decode "
        f"{wc['decode']} one at a time (best of 3 interleaved runs).",
        "",
        "| window r | prefill tokens/s | decode tokens/s | cache MiB per layer | tokens a "
        "receptive-field re-run would read per step |",
        "|---|---|---|---|---|",
    ]
    for r in wc["rows"]:
        rf = r["receptive_field_tokens"]
        lines.append(
            f"| {r['window'] or 'none'} | {r['prefill_tokens_per_s']:,.0f} | "
            f"{r['decode_tokens_per_s']:,.0f} | {r['cache_MiB_per_layer']:.2f} | "
            f"{f'{rf:,}' if rf else '-'} |"
        )
    mem = record.get("memory")
    if mem:
        lines += [
            "",
            f"Resident memory of each command while it streams {mem['tokens']:,} tokens "
            "(MiB; peak so far / now), and at exit after writing its outputs:",
            "",
        ]
        for run in mem["runs"]:
            pts = run["points"]
            marks = sorted({p["tokens"] for p in pts if p["tokens"]})
            lines += [
                f"`{run['command']}` ({run['seconds']:,.0f} s):",
                "",
                "| run | " + " | ".join(f"{m // 1024:,}K" for m in marks) + " | exit |",
                "|---|" + "---|" * (len(marks) + 1),
            ]
            for k in sorted({p["run"] for p in pts if p["run"] != "exit"}):
                cells = {p["tokens"]: p for p in pts if p["run"] == k}
                row = [
                    f"{cells[m]['VmHWM_MiB']:.0f} / {cells[m]['VmRSS_MiB']:.0f}"
                    if m in cells
                    else "-"
                    for m in marks
                ]
                lines.append(f"| {k} | " + " | ".join(row) + " | |")
            end = next(p for p in pts if p["run"] == "exit")
            lines.append(
                "| exit | "
                + " | " * len(marks)
                + f"{end['VmHWM_MiB']:.0f} / {end['VmRSS_MiB']:.0f} |"
            )
            lines.append("")
    (RESULTS / "streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
