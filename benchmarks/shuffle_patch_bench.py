"""Cost of `longseq.shuffle.patch` on a transformers ViT -> benchmarks/results/
shuffle_patch.json and shuffle_patch.md.

The same randomly initialised ``ViTForImageClassification`` (ViT-Tiny size: d=192,
depth 12, 3 heads, 224x224 images, patch 16: 197 tokens) unpatched and patched in place
(linear schedule, p_max = 0.5): training-step time (forward + backward + AdamW) and
inference time in eval mode, steps of the two interleaved, medians reported. Also the
largest eval-mode logit difference between the two (0 expected: the patch changes
nothing in eval mode) and, since attention is permutation-equivariant, the largest
training-mode logit difference with dropout off (float rounding only).

    python benchmarks/shuffle_patch_bench.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from longseq.shuffle import patch
from longseq.utils import default_device, describe_device, timed

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from transformers import ViTConfig, ViTForImageClassification

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(RESULTS / "shuffle_patch"))
    args = ap.parse_args()
    device = default_device(args.device)
    cfg = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=1000,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    plain = ViTForImageClassification(cfg).to(device)
    patched = ViTForImageClassification(cfg).to(device)
    res = patched.load_state_dict(plain.state_dict())
    shuffle = patch(patched, "vit.layers", p_max=0.5)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (plain, patched)}

    with torch.no_grad():
        eval_diff = (plain.eval()(x).logits - patched.eval()(x).logits).abs().max().item()
        train_diff = (plain.train()(x).logits - patched.train()(x).logits).abs().max().item()

    def train_step(m):
        m.train()
        loss = F.cross_entropy(m(pixel_values=x).logits, y)
        opts[id(m)].zero_grad(set_to_none=True)
        loss.backward()
        opts[id(m)].step()

    @torch.no_grad()
    def infer(m):
        m.eval()
        m(pixel_values=x)

    rows = {}
    for kind, fn in (("train", train_step), ("infer", infer)):
        for m in (plain, patched):  # warm-up
            fn(m)
        t_plain, t_patched, fired = [], [], []
        for _ in range(args.steps):
            t_plain.append(timed(partial(fn, plain), device))
            t_patched.append(timed(partial(fn, patched), device))
            fired.append(sum(shuffle.fired))
        rows[kind] = {
            "plain_ms": 1000 * statistics.median(t_plain),
            "patched_ms": 1000 * statistics.median(t_patched),
            "overhead_pct": 100 * (statistics.median(t_patched) / statistics.median(t_plain) - 1),
            "mean_layers_shuffled": statistics.mean(fired),
        }
    desc = describe_device(device)
    out = {
        "device": desc,
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "params": sum(p.numel() for p in plain.parameters()),
        "state_dict_missing": res.missing_keys,
        "state_dict_unexpected": res.unexpected_keys,
        "eval_max_abs_logit_diff": eval_diff,
        "train_max_abs_logit_diff": train_diff,
        **rows,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    tr, inf = rows["train"], rows["infer"]
    lines = [
        "# `patch` on a transformers ViT: cost\n",
        f"Device: {desc}. ViT-Tiny size ({out['params'] / 1e6:.1f}M params), batch "
        f"{args.batch}, median of {args.steps} interleaved steps. Written by "
        "`benchmarks/shuffle_patch_bench.py`.\n",
        "| | unpatched ms | patched ms | difference | layers shuffled / step |",
        "|---|---|---|---|---|",
        f"| training step | {tr['plain_ms']:.0f} | {tr['patched_ms']:.0f} | "
        f"{tr['overhead_pct']:+.1f}% | {tr['mean_layers_shuffled']:.1f} |",
        f"| inference | {inf['plain_ms']:.0f} | {inf['patched_ms']:.0f} | "
        f"{inf['overhead_pct']:+.1f}% | {inf['mean_layers_shuffled']:.1f} |",
        "",
        f"Largest logit difference, eval mode: {eval_diff:.3g}; training mode (dropout "
        f"off, attention is permutation-equivariant): {train_diff:.3g}.",
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
