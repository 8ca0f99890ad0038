"""Mamba-2 speed and memory -> benchmarks/results/mamba2.json and mamba2.md.

* prefill tokens/s: our chunked SSD vs `transformers`' Mamba2 torch path (same
  weights, loaded from the same directory), and `mamba_ssm`'s Triton kernels when
  that package is importable;
* recurrent decode tokens/s (one token per call, batch 1 and batch 16);
* memory while streaming a long input through the recurrent state in segments:
  peak memory after 1/16, 1/4 and all of it (flat = memory does not grow).

On CUDA the model is a ~130M-parameter Mamba-2 (d_model 768, 24 layers) in bf16;
on CPU a ~5M one in float32 with shorter inputs, and the report says which.

    python benchmarks/mamba2_bench.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM
from longseq.utils import default_device, describe_device, process_memory_mib, timed

RESULTS = Path(__file__).parent / "results"


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return process_memory_mib()["peak"]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--stream-tokens", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "mamba2"))
    args = ap.parse_args()
    device = default_device(args.device)
    big = device.type == "cuda"
    cfg = Mamba2Config(
        vocab_size=32000 if big else 8000,
        d_model=768 if big else 256,
        n_layer=24 if big else 6,
        d_state=128 if big else 64,
        headdim=64,
        chunk_size=256 if big else 64,
    )
    dtype = torch.bfloat16 if big else torch.float32
    torch.manual_seed(0)
    ours = Mamba2ForCausalLM(cfg)
    tmp = Path(tempfile.mkdtemp())
    ours.save_pretrained(tmp)
    ours = ours.to(device, dtype).eval()
    rows: dict = {
        "model": f"Mamba-2, {ours.num_parameters() / 1e6:.1f}M parameters, "
        f"d_model {cfg.d_model}, {cfg.n_layer} layers, d_state {cfg.d_state}, {dtype}"
    }
    impls = {"longseq (chunked SSD)": ours}
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp).to(device, dtype).eval()
        impls["transformers (torch path)"] = hf
    except ImportError:
        pass
    try:
        import mamba_ssm  # noqa: F401

        rows["mamba_ssm"] = "installed: transformers dispatches to its kernels"
    except ImportError:
        rows["mamba_ssm"] = "not installed: Triton-kernel row omitted"
    batch, seqlen = (4, 2048) if big else (2, 1024)
    ids = torch.randint(0, cfg.vocab_size, (batch, seqlen), device=device)
    prefill = []
    for name, m in impls.items():
        t = timed(lambda m=m: m(ids), device, repeats=3, warmup=1)
        prefill.append(
            {"impl": name, "batch": batch, "seqlen": seqlen, "tokens_per_s": batch * seqlen / t}
        )
        print(prefill[-1], flush=True)
    rows["prefill"] = prefill

    decode = []
    for b in (1, 16):
        prompt = torch.randint(0, cfg.vocab_size, (b, 64), device=device)
        n_new = 64 if big else 32

        def run(b=b, prompt=prompt, n_new=n_new):
            out = ours(prompt, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(n_new):
                out = ours(tok, cache=out.cache, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)

        t = timed(run, device, repeats=2, warmup=1)
        decode.append({"batch": b, "new_tokens": n_new, "tokens_per_s": b * n_new / t})
        print(decode[-1], flush=True)
    rows["decode"] = decode

    total = args.stream_tokens or (1_000_000 if big else 262_144)
    seg = 8192 if big else 4096
    marks = {total // 16, total // 4, total}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cache, seen, stream = None, 0, []
    t0 = time.perf_counter()
    while seen < total:
        x = torch.randint(0, cfg.vocab_size, (1, seg), device=device)
        out = ours(x, cache=cache, use_cache=True)
        cache = out.cache
        del out
        seen += seg
        for mark in sorted(marks):
            if seen >= mark and mark not in {s["tokens"] for s in stream}:
                stream.append({"tokens": mark, "peak_MiB": _peak_mib(device)})
                print(stream[-1], flush=True)
    rows["stream"] = {
        "segment": seg,
        "points": stream,
        "tokens_per_s": total / (time.perf_counter() - t0),
        "memory": "torch.cuda.max_memory_allocated" if big else "process peak RSS",
    }
    desc = describe_device(device)
    res = {"device": desc, "torch": torch.__version__, **rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        f"# Mamba-2 benchmark\n\nDevice: {desc}. Model: {rows['model']}. mamba_ssm: "
        f"{rows['mamba_ssm']}. Written by `benchmarks/mamba2_bench.py`.\n",
        "| prefill | batch x length | tokens/s | vs transformers |",
        "|---|---|---|---|",
    ]
    ref = next((p["tokens_per_s"] for p in prefill if p["impl"].startswith("transformers")), None)
    for p in prefill:
        ratio = f"{p['tokens_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {p['impl']} | {p['batch']} x {p['seqlen']} | {p['tokens_per_s']:,.0f} | {ratio} |"
        )
    lines += ["", "| recurrent decode (longseq) | batch | tokens/s |", "|---|---|---|"]
    for d in decode:
        lines.append(f"| {d['new_tokens']} new tokens | {d['batch']} | {d['tokens_per_s']:,.0f} |")
    lines += [
        "",
        f"Streaming {total:,} tokens in segments of {seg} through the recurrent state "
        f"({rows['stream']['tokens_per_s']:,.0f} tokens/s), {rows['stream']['memory']}:",
        "",
        "| tokens seen | peak MiB |",
        "|---|---|",
    ]
    for s in stream:
        lines.append(f"| {s['tokens']:,} | {s['peak_MiB']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
