"""Power-SMC benchmark -> benchmarks/results/power.json and power.md.

Part 1 (any device): accuracy and latency of every sampler on held-out problems of
the arithmetic task with the shipped ``power-arith-gpt``, over several seeds.
Targets: SMC accuracy >= MH accuracy; SMC latency <= 1/5 of MH latency.

Part 2 (overhead): a randomly initialised `transformers` Llama. SMC wall time over
plain batched sampling of the same N sequences through the same decoding loop
(temperature 1/alpha, no weights used) and over `transformers`' own
``generate(do_sample=True)``; target <= 1.15 at N=16 and N=64. Cache rows
rewritten at resampling and, on CUDA, peak memory of copy-on-write versus a naive
full cache copy. On CUDA the model has ~110M parameters and 512 new tokens (the
issue's setting); on CPU a ~12M-parameter model and 128 new tokens are used so the
run fits a laptop, and the report says which.

    python benchmarks/power_bench.py             # everything
    python benchmarks/power_bench.py --skip-llama --problems 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from longseq import hub
from longseq.data.arith import ArithTask, CharTokenizer
from longseq.power import power_smc, sample
from longseq.power.evaluate import evaluate_methods
from longseq.utils import default_device, synchronize

RESULTS = Path(__file__).parent / "results"


def accuracy_part(args, device) -> dict:
    model, _, extra = hub.load_causal_lm("power-arith-gpt", device)
    task = ArithTask(**{k: v for k, v in extra["task"].items() if k != "name"})
    tok = CharTokenizer(extra["tokenizer"]["chars"])
    per_seed = []
    for seed in range(args.seeds):
        problems = task.sample_problems(args.problems, "test", seed=1000 + seed)
        res = evaluate_methods(
            model,
            tok,
            task,
            problems,
            alpha=args.alpha,
            n_particles=args.particles,
            block_size=args.block_size,
            ramp_tokens=args.ramp_tokens,
            mh_blocks=args.mh_blocks,
            mh_steps=args.mh_steps,
            seed=seed,
        )
        per_seed.append({r.method: r.to_dict() for r in res})
        print({m: round(r["accuracy"], 3) for m, r in per_seed[-1].items()}, flush=True)
    rows = []
    for method in per_seed[0]:
        accs = [s[method]["accuracy"] for s in per_seed]
        secs = [s[method]["seconds_per_problem"] for s in per_seed]
        rows.append(
            {
                "method": method,
                "settings": per_seed[0][method]["settings"],
                "accuracy_mean": statistics.mean(accs),
                "accuracy_per_seed": accs,
                "ms_per_problem": 1000 * statistics.mean(secs),
            }
        )
    by = {r["method"]: r for r in rows}
    base = by["temp-1"]["ms_per_problem"]
    for r in rows:
        r["latency_x_plain"] = r["ms_per_problem"] / base
    smc, mh = by["smc"], by["mh"]
    return {
        "problems_per_seed": args.problems,
        "seeds": args.seeds,
        "rows": rows,
        "targets": {
            "smc_accuracy_ge_mh": smc["accuracy_mean"] >= mh["accuracy_mean"],
            "smc_latency_over_mh": smc["ms_per_problem"] / mh["ms_per_problem"],
            "smc_latency_le_fifth_of_mh": smc["ms_per_problem"] <= mh["ms_per_problem"] / 5,
        },
    }


def _timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def llama_part(args, device) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    big = device.type == "cuda"
    cfg = transformers.LlamaConfig(
        vocab_size=32000 if big else 8000,
        hidden_size=768 if big else 384,
        intermediate_size=2048 if big else 1024,
        num_hidden_layers=12 if big else 4,
        num_attention_heads=12 if big else 6,
        num_key_value_heads=12 if big else 6,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if big else torch.float32
    model = transformers.LlamaForCausalLM(cfg).to(device, dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    new_tokens = args.new_tokens or (512 if big else 128)
    prompt = torch.randint(0, cfg.vocab_size, (32,), device=device)
    rows = []
    for n in (16, 64):
        kw = dict(max_new_tokens=new_tokens, seed=0)

        def smc(mode="inplace", n=n, kw=kw):
            return power_smc(
                model,
                prompt,
                alpha=args.alpha,
                n_particles=n,
                block_size=64,
                cache_reorder=mode,
                **kw,
            )

        def plain(n=n, kw=kw):
            return sample(model, prompt, n=n, temperature=1 / args.alpha, **kw)

        def hf_generate(n=n):
            return model.generate(
                prompt[None],
                do_sample=True,
                temperature=1 / args.alpha,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )

        smc()  # warm-up
        plain()
        out = smc()
        t_smc = _timed(smc, device, args.repeats)
        t_plain = _timed(plain, device, args.repeats)
        t_hf = _timed(hf_generate, device, args.repeats)
        row = {
            "n_particles": n,
            "new_tokens": new_tokens,
            "smc_s": t_smc,
            "plain_s": t_plain,
            "hf_generate_s": t_hf,
            "smc_over_plain": t_smc / t_plain,
            "smc_over_hf_generate": t_smc / t_hf,
            "resampling_events": out.n_resamples,
            "rows_copied_inplace": out.rows_copied,
            "rows_copied_naive": smc("copy").rows_copied,
        }
        if device.type == "cuda":
            for mode in ("inplace", "copy"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                smc(mode)
                row[f"peak_mem_{mode}_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        print(row, flush=True)
    return {
        "model": f"random LlamaForCausalLM, {n_params / 1e6:.1f}M parameters, {dtype}",
        "alpha": args.alpha,
        "block_size": 64,
        "prompt_len": 32,
        "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"# Power-SMC benchmark\n\nDevice: {res['device']}. Written by "
        "`benchmarks/power_bench.py`.\n"
    ]
    acc = res.get("accuracy")
    if acc:
        lines += [
            f"## Held-out accuracy, `power-arith-gpt` ({acc['problems_per_seed']} problems x "
            f"{acc['seeds']} seeds, one answer per problem)\n",
            "| method | settings | accuracy | ms / problem | latency x temp-1 |",
            "|---|---|---|---|---|",
        ]
        for r in acc["rows"]:
            lines.append(
                f"| {r['method']} | {r['settings']} | {100 * r['accuracy_mean']:.1f}% | "
                f"{r['ms_per_problem']:.1f} | {r['latency_x_plain']:.1f}x |"
            )
        t = acc["targets"]
        lines.append(
            f"\nSMC accuracy >= MH: **{t['smc_accuracy_ge_mh']}**; SMC latency / MH "
            f"latency = **{t['smc_latency_over_mh']:.3f}** (target <= 0.2).\n"
        )
    ll = res.get("llama")
    if ll:
        lines += [
            f"## Overhead on {ll['model']} (alpha={ll['alpha']}, block {ll['block_size']})\n",
            "| N | new tokens | SMC s | plain s | HF generate s | SMC / plain | SMC / HF generate "
            "| resamplings | cache rows copied (CoW / naive) |"
            + (" peak MiB (CoW / naive) |" if "peak_mem_inplace_MiB" in ll["rows"][0] else ""),
            "|---|---|---|---|---|---|---|---|---|"
            + ("---|" if "peak_mem_inplace_MiB" in ll["rows"][0] else ""),
        ]
        for r in ll["rows"]:
            line = (
                f"| {r['n_particles']} | {r['new_tokens']} | {r['smc_s']:.2f} | "
                f"{r['plain_s']:.2f} | {r['hf_generate_s']:.2f} | {r['smc_over_plain']:.3f} | "
                f"{r['smc_over_hf_generate']:.3f} | {r['resampling_events']} | "
                f"{r['rows_copied_inplace']} / {r['rows_copied_naive']} |"
            )
            if "peak_mem_inplace_MiB" in r:
                line += f" {r['peak_mem_inplace_MiB']:.0f} / {r['peak_mem_copy_MiB']:.0f} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--mh-blocks", type=int, default=4)
    ap.add_argument("--mh-steps", type=int, default=10)
    ap.add_argument("--ramp-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(RESULTS / "power"))
    args = ap.parse_args()
    device = default_device(args.device)
    desc = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )
    res = {"device": desc, "torch": torch.__version__}
    if not args.skip_accuracy:
        res["accuracy"] = accuracy_part(args, device)
    if not args.skip_llama:
        res["llama"] = llama_part(args, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
