"""Batched Power-SMC benchmark -> benchmarks/results/power_batch.json and .md.

Problems per second when B problems are decoded together (B = 1, 4, 16), each with its
own particles and seed, so that every problem gets the answer it gets alone:

* ``power-arith-gpt`` (the shipped model) through :func:`longseq.power.evaluate` on
  held-out arithmetic problems, with accuracy and its 95% Wilson interval, and the
  number of answers that differ from B = 1 (expected: none); also MH power sampling,
  whose chains advance together in a batch;
* randomly initialised `transformers` Llamas (no download), a tiny one (0.1M
  parameters, where the per-step overhead of a forward call dominates) and a 3.4M one
  (where, on one CPU thread, the arithmetic of B * N rows does), on prompts of random
  lengths (left padding), every particle running to the length bound; answers
  compared with B = 1 token for token.

The batch sizes run interleaved (1, 4, 16, 16, 4, 1, ...) in one process, on one
thread by default, and each B's time is the mean over the repeats, so the ratios come
from one run on the same machine load. Target: >= 3x problems per second at B = 16
over B = 1 on CPU, with accuracy unchanged.

    python benchmarks/power_batch.py                 # ~1 minute on one CPU thread
    python benchmarks/power_batch.py --problems 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from longseq import hub
from longseq.power import SamplerConfig, evaluate, load_problems, power_smc
from longseq.power.evaluation import problem_seed
from longseq.utils import default_device, describe_device, synchronize, write_results

RESULTS = Path(__file__).parent / "results"


def _order(sizes: list[int], repeats: int) -> list[int]:
    out = []
    for r in range(repeats):
        out += sizes if r % 2 == 0 else sizes[::-1]
    return out


def arith_part(args, device, method: str = "smc", n_problems: int | None = None) -> dict:
    model, codec, _ = hub.load_causal_lm("power-arith-gpt", device)
    problems = load_problems("arith", limit=n_problems or args.problems)
    cfg = SamplerConfig(
        method,
        n_particles=args.particles,
        block_size=4,
        ramp_tokens=16,
        mh_blocks=4,
        mh_steps=10,
        max_new_tokens=64,
        seed=0,
    )
    times = {b: [] for b in args.batch_sizes}
    answers, summaries = {}, {}
    for b in _order(args.batch_sizes, args.repeats):
        path = Path(args.tmp) / f"power-batch-arith-b{b}.jsonl"
        path.unlink(missing_ok=True)  # a fresh run, not a resumed one
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        summaries[b] = evaluate(model, codec, problems, cfg, progress=False, batch_size=b, out=path)
        synchronize(device)
        times[b].append((time.perf_counter() - t0, time.process_time() - c0))
        rows = [json.loads(x) for x in path.read_text().splitlines()[1:]]
        answers[b] = {r["id"]: r["completion"] for r in rows}
        path.unlink()
    title = "power-arith-gpt, held-out 3-term additions"
    if method == "mh":
        title += ", MH power sampling (4 blocks, 10 steps) instead of Power-SMC"
    return _rows(title, problems, times, answers, summaries)


def _rows(model, problems, times, answers, summaries=None) -> dict:
    """``times[b]``: (wall, CPU) seconds of each repeat."""
    mean = {b: [sum(x) / len(ts) for x in zip(*ts, strict=True)] for b, ts in times.items()}
    rows = []
    for b in times:
        wall, cpu = mean[b]
        row = {
            "batch_size": b,
            "seconds": wall,
            "cpu_seconds": cpu,
            "problems_per_s": len(problems) / wall,
            "speedup": mean[1][0] / wall,
            "cpu_speedup": mean[1][1] / cpu,
            "answers_differing_from_b1": sum(answers[b][k] != answers[1][k] for k in answers[1]),
        }
        if summaries:
            s = summaries[b]
            row.update(accuracy=s.accuracy, ci_low=s.ci_low, ci_high=s.ci_high)
        rows.append(row)
    return {"model": model, "problems": len(problems), "rows": rows}


def llama_part(args, device, hidden: int, layers: int, vocab: int) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    model = transformers.LlamaForCausalLM(cfg).eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 41, (args.llama_problems,), generator=g).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    seeds = [problem_seed(0, f"q{i}") for i in range(len(prompts))]
    times = {b: [] for b in args.batch_sizes}
    answers = {}
    for b in _order(args.batch_sizes, args.repeats):
        got = {}
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(prompts), b):
            chunk = prompts[i : i + b]
            out = power_smc(
                model,
                chunk,
                alpha=4.0,
                n_particles=args.particles,
                max_new_tokens=args.llama_new_tokens,
                block_size=8,
                seed=seeds[i : i + b],
            )
            sample = out.sample if out.sample.dim() == 2 else out.sample[None]
            for j, row in enumerate(sample[:, out.prompt_len :].tolist()):
                got[f"q{i + j}"] = row
        synchronize(device)
        times[b].append((time.perf_counter() - t0, time.process_time() - c0))
        answers[b] = got
    res = _rows(
        f"random transformers Llama, {params / 1e6:.2f}M parameters (hidden {hidden}, "
        f"{layers} layers, vocabulary {vocab})",
        prompts,
        times,
        answers,
    )
    res["prompt_lengths"] = [min(lengths), max(lengths)]
    res["new_tokens"] = args.llama_new_tokens
    return res


def to_markdown(res: dict) -> str:
    lines = [
        "# Batched Power-SMC\n",
        f"Device: {res['device']}; torch {res['torch']}. Written by "
        "`benchmarks/power_batch.py`. Power-SMC with N = "
        f"{res['particles']} particles per problem; B problems decoded together, each "
        "with its own particles and seed. Times are means over "
        f"{res['repeats']} interleaved repeats; CPU time is this process's (one thread), "
        "which a machine shared with other work disturbs less than wall time.\n",
    ]
    for key in ("arith", "arith_mh", "llama_small", "llama"):
        part = res.get(key)
        if not part:
            continue
        lines.append(f"## {part['model']}: {part['problems']} problems\n")
        if key.startswith("llama"):
            lines.append(
                f"Prompts of {part['prompt_lengths'][0]}-{part['prompt_lengths'][1]} tokens "
                f"(left-padded), {part['new_tokens']} new tokens each.\n"
            )
        acc = "accuracy" in part["rows"][0]
        head = (
            "| B | wall s | problems / s | x B=1 (wall) | CPU s | x B=1 (CPU) "
            "| answers differing from B=1 |"
        )
        head += " accuracy (95% CI) |" if acc else ""
        lines += [head, "|---" * (8 if acc else 7) + "|"]
        for r in part["rows"]:
            line = (
                f"| {r['batch_size']} | {r['seconds']:.2f} | {r['problems_per_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['cpu_seconds']:.2f} | {r['cpu_speedup']:.2f}x | "
                f"{r['answers_differing_from_b1']} |"
            )
            if acc:
                line += (
                    f" {100 * r['accuracy']:.1f}% ({100 * r['ci_low']:.0f}-"
                    f"{100 * r['ci_high']:.0f}%) |"
                )
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=96, help="arithmetic problems")
    ap.add_argument("--mh-problems", type=int, default=32, help="0: skip MH")
    ap.add_argument("--llama-problems", type=int, default=32)
    ap.add_argument("--llama-new-tokens", type=int, default=32)
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", default=str(RESULTS / "power_batch"))
    args = ap.parse_args()
    if 1 not in args.batch_sizes:
        ap.error("--batch-sizes must include 1 (the baseline)")
    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    desc = describe_device(device, threads=args.threads)
    res = {
        "device": desc,
        "torch": torch.__version__,
        "particles": args.particles,
        "repeats": args.repeats,
    }
    res["arith"] = arith_part(args, device)
    if args.mh_problems:
        res["arith_mh"] = arith_part(args, device, "mh", args.mh_problems)
    if not args.skip_llama:
        res["llama_small"] = llama_part(args, device, hidden=64, layers=2, vocab=512)
        res["llama"] = llama_part(args, device, hidden=256, layers=4, vocab=2048)
    write_results(args.out, res, to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
