"""Train the small GPT shipped as ``power-arith-gpt`` (the Power-SMC default model).

    python scripts/train_power_gpt.py                       # CPU, the shipped recipe
    python scripts/train_power_gpt.py --steps 300 --export ""   # a quick smoke run

The run directory keeps ``state.pt`` (model, optimizer, step) every ``--save-every``
steps and a ``metrics.jsonl`` log; running the same command again resumes from it.
At the end the model is exported to ``--export`` with a config.json recording this
script, its arguments, the data seed and the held-out metrics, and registered.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.arith import ArithTask, CharTokenizer, Problem, make_batch
from longseq.models.gpt import GPT, GPTConfig
from longseq.utils import (
    default_device,
    load_training_state,
    optimizer_step,
    progress_bar,
    save_training_state,
    seed_everything,
    warmup_cosine_lr,
)

NAME = "power-arith-gpt"


@torch.no_grad()
def evaluate(model: GPT, task: ArithTask, tok: CharTokenizer, n: int, device) -> dict:
    """Held-out: P(first answer token = 'S') and exact-match of the worked answer
    under teacher forcing (every token of the worked solution is the argmax)."""
    model.eval()
    problems = task.sample_problems(n, "test", seed=12345)
    rows = [tok.encode(p.prompt, bos=True) + tok.encode(p.worked(), eos=True) for p in problems]
    plen = len(tok.encode(problems[0].prompt, bos=True))
    width = max(map(len, rows))
    ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    ids = ids.to(device)
    logp = model(ids).logits.float().log_softmax(-1)
    p_s = logp[:, plen - 1, tok.stoi["S"]].exp().mean().item()
    pred = logp[:, :-1].argmax(-1)
    exact = []
    for i, r in enumerate(rows):
        # answer tokens after the 'S' (the mode token is a choice, not a deduction)
        exact.append(bool((pred[i, plen : len(r) - 1] == ids[i, plen + 1 : len(r)]).all()))
    model.train()
    return {"p_worked_first_token": p_s, "worked_exact": float(np.mean(exact))}


def _relative(path: str) -> str:
    """Path as recorded in the checkpoint: relative to the working directory if inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--run-dir", default="runs/power-arith-gpt")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--export", default=str(hub.CHECKPOINT_DIR / NAME), help="'' to skip")
    args = ap.parse_args(argv)

    device = default_device(args.device)
    seed_everything(args.seed)
    task, tok = ArithTask(), CharTokenizer()
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=64,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    step = load_training_state(run / "state.pt", model, opt, device)
    if step:
        print(f"resumed from {run / 'state.pt'} at step {step}")

    def lr_at(s: int) -> float:
        return warmup_cosine_lr(s, args.lr, args.warmup, args.steps)

    seq_len = len(tok.encode(Problem((task.high,) * task.n_operands).prompt, bos=True))
    seq_len += task.max_new_tokens()
    log = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (appended to through the loop)
    model.train()
    t0 = time.time()
    with progress_bar("training", args.steps) as advance:
        advance(step)
        while step < args.steps:
            # data seed per step: resuming reproduces the same stream
            ids, labels = make_batch(task, tok, args.batch_size, args.seed * 10**7 + step, seq_len)
            ids, labels = ids.to(device), labels.to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(ids, labels=labels).loss
            optimizer_step(opt, loss, model)
            step += 1
            advance()
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": lr_at(step - 1)}
            if step % args.eval_every == 0 or step == args.steps:
                rec.update(evaluate(model, task, tok, 512, device))
                print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            if step % args.save_every == 0 or step == args.steps:
                save_training_state(run / "state.pt", model, opt, step)
    log.close()
    metrics = evaluate(model, task, tok, 2048, device)
    metrics["train_seconds_this_call"] = round(time.time() - t0, 1)
    print(json.dumps(metrics))
    if args.export:
        extra = {
            "tokenizer": tok.to_dict(),
            "task": {"name": "arith", **asdict(task)},
            "training": {
                "script": "scripts/train_power_gpt.py",
                "argv": sys.argv[1:] if argv is None else argv,
                "args": {**vars(args), "export": _relative(args.export)},
                "data_seed": args.seed,
                "device": str(device),
            },
            "metrics": metrics,
            "n_parameters": model.num_parameters(),
        }
        out = hub.save_pretrained(model.cpu(), args.export, "gpt", extra)
        if Path(out).resolve().is_relative_to(hub.CHECKPOINT_DIR.resolve()):
            hub.register(
                NAME,
                out,
                "4-layer char GPT for 3-term addition with a shortcut trap (Power-SMC demo)",
            )
        print(f"exported to {out}")


if __name__ == "__main__":
    main()
