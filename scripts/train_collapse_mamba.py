"""Train the small byte-level Mamba-2 LMs used to study state collapse.

Each model is trained on windows of ``--seq-len`` bytes of the Python standard
library's source, a share of them passkey documents, and saved in the `transformers`
Mamba2 layout (config.json + model.safetensors; `transformers` loads it as it is).
The first model of ``--d-state`` is registered as ``--name`` (default ``collapse-mamba2``).

    python scripts/train_collapse_mamba.py                         # the shipped model
    python scripts/train_collapse_mamba.py --d-state 16 32 64 --export-dir runs/collapse/export
    python scripts/train_collapse_mamba.py --seq-len 512 --batch-size 8 --steps 2000 \
        --passkey-frac 1 --run-dir runs/passkey --name collapse-passkey-mamba2   # passkey model

Runs resume from ``state.pt`` in their run directory. Several GPUs:
``torchrun --nproc_per_node=K scripts/train_collapse_mamba.py`` (DistributedDataParallel,
each rank on its own batches; rank 0 logs, saves and exports).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longseq import hub
from longseq.data.text import lm_batch, stdlib_corpus
from longseq.lm import causal_lm_loss
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM
from longseq.utils import (
    default_device,
    dist_info,
    load_training_state,
    optimizer_step,
    progress_bar,
    save_training_state,
    seed_everything,
    setup_distributed,
)

NAME = "collapse-mamba2"


@torch.no_grad()
def val_loss(model, corpus, seq_len, device, n=16) -> float:
    model.eval()
    b = lm_batch(corpus, n, seq_len, np.random.default_rng(123)).to(device)
    loss = model(b[:, :-1], labels=b[:, :-1]).loss.item()
    model.train()
    return loss


def train_one(args, d_state: int, device, train, val) -> tuple[Mamba2ForCausalLM, dict]:
    seed_everything(args.seed)
    cfg = Mamba2Config(
        vocab_size=256,
        d_model=args.d_model,
        n_layer=args.n_layer,
        d_state=d_state,
        headdim=args.headdim,
        chunk_size=args.chunk_size,
        dt_min=args.dt_min,
        dt_max=args.dt_max,
    )
    model = Mamba2ForCausalLM(cfg).to(device)
    rank, world = dist_info()
    net = model
    if world > 1:  # launched by torchrun: each rank trains on its own batches
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    run = Path(args.run_dir) / f"dstate{d_state}"
    run.mkdir(parents=True, exist_ok=True)
    step = load_training_state(run / "state.pt", model, opt, device)
    log = open(run / "metrics.jsonl", "a") if rank == 0 else None  # noqa: SIM115
    t0 = time.time()
    with progress_bar(f"d_state={d_state}", args.steps, enabled=rank == 0) as advance:
        advance(step)
        while step < args.steps:
            rng = np.random.default_rng([args.seed, step, rank])
            b = lm_batch(train, args.batch_size, args.seq_len, rng, args.passkey_frac).to(device)
            lr = (
                args.lr
                * min(1.0, (step + 1) / 100)
                * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
            )
            for g in opt.param_groups:
                g["lr"] = lr
            loss = causal_lm_loss(net(b[:, :-1]).logits, b[:, :-1])
            optimizer_step(opt, loss, model)
            step += 1
            advance()
            rec = {"step": step, "loss": round(loss.item(), 4)}
            if rank == 0 and (step % 200 == 0 or step == args.steps):
                rec["val_loss"] = val_loss(model, val, args.seq_len, device)
                save_training_state(run / "state.pt", model, opt, step)
                print(json.dumps(rec), flush=True)
            if log:
                log.write(json.dumps(rec) + "\n")
    if log:
        log.close()
    metrics = {
        "val_loss_at_train_length": val_loss(model, val, args.seq_len, device),
        "train_seconds_this_call": round(time.time() - t0, 1),
        "state_elements": cfg.state_elements,
    }
    return model, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-state", nargs="+", type=int, default=[128])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    # the scan's block length: the same model whatever its value (chunked SSD is exact);
    # set it to the training length when that is shorter, to skip padded work
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--passkey-frac", type=float, default=0.0)
    # slow decays at initialization (a_t = exp(-dt A) close to 1): the model starts with
    # long memory and, trained on short windows, never has to learn to forget
    ap.add_argument("--dt-min", type=float, default=1e-4)
    ap.add_argument("--dt-max", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--run-dir", default="runs/collapse")
    ap.add_argument("--export-dir", default=str(hub.CHECKPOINT_DIR))
    ap.add_argument("--name", default=NAME, help="registered name of the first model")
    args = ap.parse_args()
    device = setup_distributed() if args.device is None else default_device(args.device)
    train, val = stdlib_corpus("train"), stdlib_corpus("val")
    for i, d_state in enumerate(args.d_state):
        model, metrics = train_one(args, d_state, device, train, val)
        if dist_info()[0] != 0:
            continue
        name = args.name if i == 0 else f"{args.name}-dstate{d_state}"
        extra = {
            "name": name,
            "tokenizer": {"type": "byte"},
            "train_length": args.seq_len,
            "training": {
                "script": "scripts/train_collapse_mamba.py",
                "argv": sys.argv[1:],
                "args": {k: v for k, v in vars(args).items() if k != "export_dir"},
                "corpus": "Python stdlib sources (train split)"
                + (f", {args.passkey_frac:.0%} passkey documents" if args.passkey_frac else ""),
                "data_seed": args.seed,
            },
            "metrics": metrics,
        }
        out = model.cpu().save_pretrained(Path(args.export_dir) / name, extra)
        if out.resolve().is_relative_to(hub.CHECKPOINT_DIR.resolve()):
            hub.register(
                name,
                out,
                f"byte-level Mamba-2 ({model.num_parameters() / 1e6:.2f}M, "
                f"d_state={d_state}) trained at {args.seq_len} bytes"
                + (" on passkey documents" if args.passkey_frac else ""),
            )
        print(json.dumps({"d_state": d_state, **metrics}), flush=True)


if __name__ == "__main__":
    main()
