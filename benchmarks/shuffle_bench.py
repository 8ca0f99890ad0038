"""Cost of the layer-wise shuffle -> benchmarks/results/shuffle.json and shuffle.md.

Training-step time (forward + backward + AdamW step) of the same Vim with the shuffle
off (p_max = 0) and on (linear schedule, p_max = 0.5), and inference time of both in
eval mode (where the shuffle is off by construction). Steps of the two variants are
interleaved and the median is reported, so drift in machine load hits both alike.
Target: training overhead < 3%; inference identical.

Two models: the small one of the shapes experiments (depth 12, width 64, 32x32 images,
patch 8; ``--steps`` steps of batch 128) and a Vim-Base-size stack (d=768, depth 24,
224x224, patch 16: 197 tokens; ``--base-steps`` steps). On CPU the
Vim-Base stack runs in float32 with batch ``--base-batch-cpu`` (a few steps: each takes
seconds); on CUDA with batch 64 and bf16 autocast.

    python benchmarks/shuffle_bench.py                 # CPU: both models
    python benchmarks/shuffle_bench.py --base-steps 0  # the small model only
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from longseq.models.vim import Vim, VimConfig
from longseq.utils import default_device, describe_device, timed

RESULTS = Path(__file__).parent / "results"


def time_setting(name: str, cfg: dict, batch: int, steps: int, device, amp: bool) -> dict:
    torch.manual_seed(0)
    plain = Vim(VimConfig(shuffle_p_max=0.0, **cfg)).to(device)
    shuf = Vim(VimConfig(shuffle_p_max=0.5, **cfg)).to(device)
    shuf.load_state_dict(plain.state_dict())
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (plain, shuf)}
    x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"], device=device)
    y = torch.randint(0, cfg["num_classes"], (batch,), device=device)

    def train_step(m):
        m.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(m(x).float(), y)
        opts[id(m)].zero_grad(set_to_none=True)
        loss.backward()
        opts[id(m)].step()

    @torch.no_grad()
    def infer(m):
        m.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            m(x)

    res = {}
    for kind, fn in (("train", train_step), ("infer", infer)):
        for m in (plain, shuf):  # warm-up
            fn(m)
            fn(m)
        t_plain, t_shuf, fired = [], [], []
        for _ in range(steps):
            t_plain.append(timed(partial(fn, plain), device))
            t_shuf.append(timed(partial(fn, shuf), device))
            fired.append(sum(shuf.blocks.fired))
        res[kind] = {
            "plain_ms": 1000 * statistics.median(t_plain),
            "shuffle_ms": 1000 * statistics.median(t_shuf),
            "overhead_pct": 100 * (statistics.median(t_shuf) / statistics.median(t_plain) - 1),
            "mean_layers_shuffled": statistics.mean(fired),
        }
    return {
        "setting": name,
        "batch": batch,
        "depth": cfg["depth"],
        "dim": cfg["dim"],
        "params": plain.num_parameters(),
        "amp_bf16": amp,
        **res,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--base-steps", type=int, default=3, help="Vim-Base steps (0: skip it)")
    ap.add_argument("--base-batch-cpu", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(RESULTS / "shuffle"))
    args = ap.parse_args()
    device = default_device(args.device)
    small = dict(
        img_size=32, patch_size=8, dim=64, depth=12, num_classes=8, headdim=16, chunk_size=32
    )
    rows = [time_setting("experiment model", small, 128, args.steps, device, amp=False)]
    if args.base_steps > 0:
        base = dict(
            img_size=224,
            patch_size=16,
            dim=768,
            depth=24,
            num_classes=1000,
            headdim=64,
            chunk_size=64,
        )
        cuda = device.type == "cuda"
        batch = 64 if cuda else args.base_batch_cpu
        rows.append(time_setting("Vim-Base size", base, batch, args.base_steps, device, cuda))
    desc = describe_device(device)
    res = {"device": desc, "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Layer-wise shuffle cost\n",
        f"Device: {desc}. Median of {args.steps} interleaved steps (Vim-Base size: "
        f"{args.base_steps}). "
        "Written by `benchmarks/shuffle_bench.py`.\n",
        "| model | batch | params | train ms (off / on) | train overhead | layers shuffled / step "
        "| inference ms (off / on) | inference difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tr, inf = r["train"], r["infer"]
        lines.append(
            f"| {r['setting']} (depth {r['depth']}, d={r['dim']}) | {r['batch']} | "
            f"{r['params'] / 1e6:.1f}M | {tr['plain_ms']:.1f} / {tr['shuffle_ms']:.1f} | "
            f"{tr['overhead_pct']:+.1f}% | {tr['mean_layers_shuffled']:.1f} | "
            f"{inf['plain_ms']:.1f} / {inf['shuffle_ms']:.1f} | {inf['overhead_pct']:+.1f}% |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
