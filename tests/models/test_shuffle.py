import math

import pytest
import torch
import torch.nn as nn

from longseq.models.shuffle import (
    SCHEDULES,
    DropPath,
    LayerwiseShuffle,
    drop_path_rates,
    shuffle_probabilities,
)
from longseq.models.vim import Vim
from longseq.models.vit import ViTBlock


def test_linear_and_constant_schedules():
    assert shuffle_probabilities(5, 0.5) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert shuffle_probabilities(3, 0.2, "constant") == [0.0, 0.2, 0.2]
    assert shuffle_probabilities(3, 0.2, "uniform") == [0.2, 0.2, 0.2]
    assert shuffle_probabilities(1, 0.5) == [0.0]


@pytest.mark.parametrize("depth", [1, 2, 6, 12, 24])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_schedules_match_the_authors_formulas(depth, p):
    """linear: torch.linspace(0, p, depth); constant: [0] + [p] * (depth - 1) (the
    ShuffleMamba code's two forms); uniform: p everywhere."""
    lin = torch.linspace(0, p, depth).tolist()
    assert shuffle_probabilities(depth, p, "linear") == pytest.approx(lin, abs=1e-7)
    assert shuffle_probabilities(depth, p, "constant") == [0.0] + [p] * (depth - 1)
    assert shuffle_probabilities(depth, p, "uniform") == [p] * depth
    assert drop_path_rates(depth, p) == pytest.approx(lin, abs=1e-7)


@pytest.mark.parametrize(
    "args, msg",
    [
        ((0, 0.5), "depth"),
        ((4, 1.5), "p_max"),
        ((4, -0.1), "p_max"),
        ((4, 0.5, "cosine"), "schedule"),
    ],
)
def test_schedule_errors(args, msg):
    with pytest.raises(ValueError, match=msg):
        shuffle_probabilities(*args)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_drop_path_rate_errors(rate):
    with pytest.raises(ValueError, match=r"drop-path rate must be in \[0, 1\)"):
        DropPath(rate)
    with pytest.raises(ValueError, match=r"drop-path rate must be in \[0, 1\)"):
        drop_path_rates(4, rate)


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    rate, n = 0.3, 4000
    branch = torch.randn(n, 5, 3) + 2.0
    dp = DropPath(rate).train()
    out = dp(branch)
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    # each sample is either all zero or the whole branch scaled by 1 / (1 - rate)
    torch.testing.assert_close(out[kept], branch[kept] / (1 - rate))
    assert abs(float(dropped.float().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert not torch.equal(dp(branch), out)  # a fresh draw every call
    dp.eval()
    assert dp(branch) is branch  # eval: untouched


class CumSum(nn.Module):
    """An order-dependent block that records what it saw."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return x.cumsum(1)


def test_fired_block_sees_a_permutation_and_order_is_restored():
    torch.manual_seed(0)
    block = CumSum()
    stack = LayerwiseShuffle([block], p_max=1.0, schedule="uniform").train()
    x = torch.randn(2, 9, 3)
    out = stack(x)
    assert stack.fired == [True]
    seen = block.seen
    assert not torch.equal(seen, x)  # shuffled ...
    # ... by one permutation shared over the batch and channels
    perm = [int((x[0] == seen[0, j]).all(-1).nonzero()) for j in range(9)]
    assert sorted(perm) == list(range(9))
    assert torch.equal(seen, x[:, perm])
    # the output is the block's output put back in the original token order
    expected = torch.empty_like(x)
    expected[:, perm] = seen.cumsum(1)
    torch.testing.assert_close(out, expected)


def test_eval_mode_is_exactly_the_plain_stack():
    torch.manual_seed(0)
    model = Vim(
        img_size=16,
        patch_size=4,
        dim=32,
        depth=4,
        num_classes=3,
        headdim=16,
        shuffle_p_max=1.0,
        shuffle_schedule="uniform",
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    h = model.tokens(x)
    for blk in model.blocks.blocks:
        h = blk(h)
    ref = model.head(model.norm_f(h[:, model.cls_pos]))
    assert torch.equal(model(x), ref)
    assert model.blocks.fired == [False] * 4


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_firing_frequencies_follow_the_schedule(schedule):
    torch.manual_seed(1)
    depth, p_max, n = 5, 0.8, 3000
    stack = LayerwiseShuffle([nn.Identity() for _ in range(depth)], p_max, schedule).train()
    counts = [0] * depth
    x = torch.randn(1, 4, 2)
    for _ in range(n):
        stack(x)
        counts = [c + f for c, f in zip(counts, stack.fired, strict=True)]
    expected = {
        "linear": [0.0, 0.2, 0.4, 0.6, 0.8],
        "constant": [0.0, 0.8, 0.8, 0.8, 0.8],
        "uniform": [0.8] * 5,
    }[schedule]
    for c, p in zip(counts, expected, strict=True):
        assert abs(c / n - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-9) / n) + 1e-9
    assert stack.p_max == 0.8


def test_attention_blocks_are_permutation_equivariant_under_shuffle():
    """Self-attention without positions inside the block commutes with any token
    permutation, so a correct un-shuffle leaves a ViT stack's output unchanged."""
    torch.manual_seed(0)
    blocks = [ViTBlock(16, 2, 2.0) for _ in range(3)]
    plain = LayerwiseShuffle(blocks, p_max=0.0).train()
    shuffled = LayerwiseShuffle(plain.blocks, p_max=1.0, schedule="uniform").train()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(shuffled(x), plain(x), atol=1e-5, rtol=1e-5)
    assert all(shuffled.fired)


def test_two_stream_blocks_restore_both_streams():
    class TwoStream(nn.Module):
        def forward(self, h, r):
            return h.cumsum(1), r + h.cumsum(1)

    torch.manual_seed(0)
    h, r = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    ho, ro = LayerwiseShuffle([TwoStream()], p_max=1.0, schedule="uniform").train()(h, r)
    # residual stream stays aligned with its tokens: r's contribution is unpermuted
    torch.testing.assert_close(ro - ho, r)
    assert not torch.allclose(ho, h.cumsum(1))  # the block did see shuffled tokens


def test_no_parameters_and_gradients_flow():
    torch.manual_seed(0)
    model = Vim(
        img_size=16, patch_size=4, dim=32, depth=3, num_classes=3, headdim=16, shuffle_p_max=1.0
    )
    blocks_params = sum(p.numel() for p in model.blocks.blocks.parameters())
    assert sum(p.numel() for p in model.blocks.parameters()) == blocks_params
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert model.blocks.fired[2]  # p = 1 at the deepest layer
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_timm_vit_blocks():
    try:
        from timm.models.vision_transformer import Block
    except Exception:  # timm needs torchvision, which may be missing
        pytest.skip("timm is not importable here")
    torch.manual_seed(0)
    blocks = [Block(16, 2) for _ in range(2)]
    plain = LayerwiseShuffle(blocks).eval()
    shuffled = LayerwiseShuffle(plain.blocks, p_max=1.0, schedule="uniform").train()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(shuffled(x), plain(x), atol=1e-5, rtol=1e-5)
