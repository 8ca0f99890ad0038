"""The layer-wise shuffle on a user's own block stack: `patch` in place on a
transformers ViT and on a Vim-style ``(hidden, residual=None)`` stack, and
`LayerwiseShuffle` with the arguments real blocks take, against a naive loop that
draws the same random numbers."""

import math

import pytest
import torch
import torch.nn as nn

from longseq.shuffle import LayerwiseShuffle, patch, shuffle_probabilities


def naive_draws(probs, n, seed):
    """The shuffle's random stream, written out: per layer one uniform draw (layers with
    p = 0 draw nothing) and, when it fires, one permutation of the n tokens."""
    g = torch.Generator().manual_seed(seed)
    perms = []
    for p in probs:
        fire = p > 0 and float(torch.rand((), generator=g)) < p
        perms.append(torch.randperm(n, generator=g) if fire else None)
    return perms


def inverse(perm):
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return inv


# -- Vim-style blocks: block(hidden, residual=None) -> (hidden, residual) ---------------


class VimStyleBlock(nn.Module):
    """mamba_ssm's Block convention: add the residual, normalize, mix; the mixer here
    is order-dependent (a running sum), as a Mamba scan is."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = nn.Linear(dim, dim)

    def forward(self, hidden_states, residual=None, inference_params=None):
        residual = hidden_states if residual is None else residual + hidden_states
        hidden_states = self.mixer(self.norm(residual)).cumsum(1) / residual.shape[1]
        return hidden_states, residual


class TinyVim(nn.Module):
    """A Vim-like model with its blocks in ``layers`` and the class token in the middle."""

    def __init__(self, dim=8, depth=4, tokens=7):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.layers = nn.ModuleList([VimStyleBlock(dim) for _ in range(depth)])
        self.norm_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)
        self.cls = tokens // 2

    def features(self, x, call):
        hidden, residual = self.embed(x), None
        for i, layer in enumerate(self.layers):
            hidden, residual = call(i, layer, hidden, residual)
        return self.norm_f(hidden + residual)

    def forward(self, x):
        feats = self.features(x, lambda i, layer, h, r: layer(h, r, inference_params=None))
        return self.head(feats[:, self.cls])


def plain(block, *args, **kwargs):
    """The block's own forward, whatever patch did to the instance."""
    return type(block).forward(block, *args, **kwargs)


def naive_vim(model, x, perms):
    def call(i, layer, h, r):
        if perms[i] is None:
            return plain(layer, h, r, inference_params=None)
        p, inv = perms[i], inverse(perms[i])
        h, r = plain(layer, h[:, p], None if r is None else r[:, p], inference_params=None)
        return h[:, inv], r[:, inv]

    return model.head(model.features(x, call)[:, model.cls])


def test_patch_on_a_vim_style_stack_matches_the_naive_loop():
    torch.manual_seed(0)
    model = TinyVim().train()
    x = torch.randn(2, 7, 3)
    shuffle = patch(model, p_max=1.0, schedule="uniform", generator=torch.Generator())
    for seed in range(3):
        shuffle.generator.manual_seed(seed)
        out = model(x)  # the model's own loop, residual=None into the first block
        perms = naive_draws(shuffle.probs, 7, seed)
        torch.testing.assert_close(out, naive_vim(model, x, perms))
        assert shuffle.fired == [p is not None for p in perms]
    assert all(shuffle.fired)
    # order matters to these blocks, so the shuffle changed the output ...
    assert not torch.allclose(out, naive_vim(model, x, [None] * 4))
    # ... but not in eval mode, and not once removed
    model.eval()
    torch.testing.assert_close(model(x), naive_vim(model, x, [None] * 4), rtol=0, atol=0)
    model.train()
    shuffle.remove()
    torch.testing.assert_close(model(x), naive_vim(model, x, [None] * 4), rtol=0, atol=0)


def test_stack_of_vim_style_blocks_returns_hidden_and_residual_in_token_order():
    torch.manual_seed(0)
    blocks = [VimStyleBlock(8) for _ in range(3)]
    stack = LayerwiseShuffle(blocks, p_max=0.8, generator=torch.Generator().manual_seed(5)).train()
    h = torch.randn(2, 9, 8)
    hidden, residual = stack(h)  # the first block gets residual=None
    perms = naive_draws(stack.probs, 9, 5)
    assert perms[2] is not None  # the deepest layer fired
    eh, er = h, None
    for block, p in zip(stack.blocks, perms, strict=True):
        if p is None:
            eh, er = block(eh, er)
        else:
            eh, er = block(eh[:, p], None if er is None else er[:, p])
            eh, er = eh[:, inverse(p)], er[:, inverse(p)]
    torch.testing.assert_close(hidden, eh)
    torch.testing.assert_close(residual, er)


# -- arguments that are not per-token pass through ------------------------------------


class Recorder(nn.Module):
    """Records the arguments it was called with; mixes tokens in order."""

    def forward(self, x, mask=None, *, scale=1.0, head_mask=None):
        self.got = {"x": x, "mask": mask, "scale": scale, "head_mask": head_mask}
        y = x.cumsum(1) * scale
        if mask is not None:
            y = y * mask[..., None]
        return y


def test_keyword_arguments_none_masks_and_per_token_masks():
    torch.manual_seed(0)
    block = Recorder()
    stack = LayerwiseShuffle([block], p_max=1.0, schedule="uniform", generator=torch.Generator())
    stack.train()
    x = torch.randn(2, 6, 4)
    head_mask = torch.ones(6)  # same length as the token axis, but not per-token
    stack.generator.manual_seed(3)
    out = stack(x, None, scale=2.0, head_mask=head_mask)
    (perm,) = naive_draws([1.0], 6, 3)
    assert stack.fired == [True]
    assert block.got["mask"] is None and block.got["scale"] == 2.0
    assert block.got["head_mask"] is head_mask
    torch.testing.assert_close(block.got["x"], x[:, perm])
    torch.testing.assert_close(out, (x[:, perm].cumsum(1) * 2.0)[:, inverse(perm)])
    # a (batch, tokens) mask travels with its tokens
    mask = (torch.rand(2, 6) > 0.3).float()
    stack.generator.manual_seed(3)
    out = stack(x, mask=mask)
    torch.testing.assert_close(block.got["mask"], mask[:, perm])
    expected = (x[:, perm].cumsum(1) * mask[:, perm, None])[:, inverse(perm)]
    torch.testing.assert_close(out, expected)


def test_token_args_names_the_per_token_arguments():
    block = Recorder()
    stack = LayerwiseShuffle([block], 1.0, "uniform", token_args=["x"]).train()
    x, mask = torch.randn(2, 6, 4), torch.rand(2, 6)
    stack(x, mask)
    assert block.got["mask"] is mask  # not named: passed as it came
    assert not torch.equal(block.got["x"], x)
    stack = LayerwiseShuffle([block], 1.0, "uniform", token_args=[0, 1]).train()
    stack(x, mask)  # by position: both move, with the same permutation
    perm = [int((x[0] == block.got["x"][0, j]).all(-1).nonzero()) for j in range(6)]
    assert torch.equal(block.got["mask"], mask[:, perm])
    with pytest.raises(ValueError, match="token_args names 'head_mask'.*shape \\(3,\\)"):
        LayerwiseShuffle([Recorder()], 1.0, "uniform", token_args=["x", "head_mask"]).train()(
            x, head_mask=torch.ones(3)
        )
    with pytest.raises(TypeError, match="token_args must be a list"):
        LayerwiseShuffle([Recorder()], token_args="x")


def test_first_argument_must_be_a_token_tensor():
    stack = LayerwiseShuffle([Recorder()], 1.0, "uniform").train()
    with pytest.raises(TypeError, match="first argument must be the hidden states.*got None"):
        stack(None)


def test_patch_frequencies_follow_the_schedule():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Identity() for _ in range(5)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(1)
    model, n = Stack().train(), 2000
    shuffle = patch(model, "blocks", p_max=0.8, schedule="linear")
    counts = [0] * 5
    for _ in range(n):
        model(torch.zeros(1, 3, 1))
        counts = [c + f for c, f in zip(counts, shuffle.fired, strict=True)]
    for c, p in zip(counts, shuffle_probabilities(5, 0.8), strict=True):
        assert abs(c / n - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-9) / n) + 1e-9


# -- a transformers ViT, patched in place ---------------------------------------------


def tiny_vit(seed=0):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.ViTForImageClassification(cfg)


def test_transformers_vit_checkpoint_loads_into_the_patched_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    plain = tiny_vit(0).eval()
    plain.save_pretrained(tmp_path / "vit")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = plain(pixel_values=x).logits

    loaded = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit")
    patch(loaded, p_max=0.5)  # the model's only block list: vit.layers
    assert list(loaded.state_dict()) == list(plain.state_dict())
    other = tiny_vit(1)
    patch(other, "vit.layers")
    res = other.load_state_dict(plain.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for model in (loaded, other):
        with torch.no_grad():
            assert torch.equal(model.eval()(pixel_values=x).logits, ref)  # eval: identical
    # a checkpoint saved from the patched model loads into an unpatched one
    loaded.save_pretrained(tmp_path / "patched")
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "patched")
    with torch.no_grad():
        assert torch.equal(again.eval()(pixel_values=x).logits, ref)


def test_transformers_vit_layers_see_the_scheduled_shuffle():
    model = tiny_vit(0).train()
    shuffle = patch(model, "vit.layers", p_max=1.0, generator=torch.Generator())
    assert shuffle.probs == [0.0, 0.5, 1.0]
    seen, outside = {}, {}
    for i, layer in enumerate(model.vit.layers):
        # what the layer computes on: the input of its first norm
        layer.layernorm_before.register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(i, args[0])
        )
        # what hooks on the layer itself see: arguments and output in token order
        layer.register_forward_hook(
            lambda m, args, kwargs, out, i=i: outside.__setitem__(i, (args, kwargs, out)),
            with_kwargs=True,
        )
    x = torch.randn(2, 3, 16, 16)
    n = (16 // 4) ** 2 + 1
    fired_any = set()
    for seed in range(4):
        shuffle.generator.manual_seed(seed)
        logits = model(pixel_values=x).logits
        perms = naive_draws(shuffle.probs, n, seed)
        assert shuffle.fired == [p is not None for p in perms]
        fired_any |= {i for i, p in enumerate(perms) if p is not None}
        # the naive loop: permute, run the layer, put the tokens back
        h = model.vit.embeddings(x)
        for i, (layer, p) in enumerate(zip(model.vit.layers, perms, strict=True)):
            inp = h if p is None else h[:, p]
            torch.testing.assert_close(seen[i], inp)
            args, kwargs, out = outside[i]
            assert torch.equal(args[0], h)
            assert all(a is None for a in args[1:])  # the attention mask, None, passed
            h = plain(layer, inp, None)
            h = h if p is None else h[:, inverse(p)]
            assert torch.equal(out, h)
        expected = model.classifier(model.vit.layernorm(h)[:, 0])  # class token at 0
        torch.testing.assert_close(logits, expected)
    assert fired_any == {1, 2}
    # attention is permutation-equivariant: a ViT computes the same with or without,
    # and the hidden states transformers records (through hooks on the layers) agree
    with torch.no_grad():
        ours = model(pixel_values=x, output_hidden_states=True)
        ref = tiny_vit(0).train()(pixel_values=x, output_hidden_states=True)
    assert sum(shuffle.fired) >= 1
    torch.testing.assert_close(ours.logits, ref.logits)
    for a, b in zip(ours.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    shuffle.remove()
    assert all("forward" not in vars(layer) for layer in model.vit.layers)


def test_patch_errors_name_the_problem():
    model = tiny_vit(0)
    with pytest.raises(
        ValueError, match=r"vit \(ViTModel\) has no attribute 'encoder'.*'vit.layers'"
    ):
        patch(model, "vit.encoder.layer")
    with pytest.raises(
        TypeError, match="'vit.embeddings' is a ViTEmbeddings, not an nn.ModuleList"
    ):
        patch(model, "vit.embeddings")
    two = nn.Module()
    two.a, two.b = nn.ModuleList([nn.Identity()]), nn.ModuleList([nn.Identity()])
    with pytest.raises(ValueError, match="2 non-empty nn.ModuleLists.*'a', 'b'.*blocks_attr"):
        patch(two)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        patch([nn.Identity()])
    shuffle = patch(model)
    with pytest.raises(ValueError, match="already carry a layer-wise shuffle"):
        patch(model, "vit.layers")
    shuffle.remove()
    patch(model, "vit.layers")  # fine once removed


def test_attention_masks_and_maps_move_with_their_tokens():
    """A (1, 1, n, n) causal mask and a (batch, 1, n, n) attention map have tokens on
    both last axes; permuting the mask with the tokens keeps each token's view, so the
    output and the map, put back, equal the plain call's."""

    class MaskedAttention(nn.Module):
        def forward(self, x, attention_mask=None):
            w = ((x @ x.transpose(1, 2))[:, None] + attention_mask).softmax(-1)
            return (w @ x[:, None])[:, 0], w

    torch.manual_seed(0)
    n = 6
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    x = torch.randn(2, n, 4)
    plain_h, plain_w = MaskedAttention()(x, causal)
    stack = LayerwiseShuffle([MaskedAttention()], 1.0, "uniform").train()
    h, w = stack(x, attention_mask=causal)
    assert stack.fired == [True]
    torch.testing.assert_close(h, plain_h)
    torch.testing.assert_close(w, plain_w)


def test_a_sequential_block_list_named_by_blocks_attr():
    """timm keeps its ViT blocks in an nn.Sequential: named, it is patched the same way."""

    class CumSum(nn.Module):
        def forward(self, x):
            return x.cumsum(1) / x.shape[1]

    model = nn.Module()
    model.blocks = nn.Sequential(CumSum(), CumSum(), CumSum())
    model.train()
    shuffle = patch(model, "blocks", p_max=1.0, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 5, 3)
    out = model.blocks(x)
    h = x
    for p in naive_draws(shuffle.probs, 5, 2):
        h = h.cumsum(1) / 5 if p is None else (h[:, p].cumsum(1) / 5)[:, inverse(p)]
    torch.testing.assert_close(out, h)
    assert shuffle.fired[2]
    with pytest.raises(ValueError, match="0 non-empty nn.ModuleLists.*'blocks'"):
        patch(model)


def test_blocks_shuffled_by_their_own_stack_are_not_patched_twice():
    from longseq.models.vim import Vim

    cfg = dict(img_size=16, patch_size=4, dim=32, depth=2, num_classes=3, headdim=16)
    with pytest.raises(ValueError, match=r"already run in a LayerwiseShuffle \(p_max=0.5\)"):
        patch(Vim(shuffle_p_max=0.5, **cfg))
    patch(Vim(**cfg))  # p_max 0: its own stack never fires


def test_every_block_gets_the_keyword_masks_in_its_own_token_order():
    """A per-token keyword argument is permuted for a firing block only: the next block
    gets it in token order again (or permuted by its own draw)."""
    torch.manual_seed(0)
    blocks = [Recorder() for _ in range(3)]
    stack = LayerwiseShuffle(blocks, 1.0, "uniform", generator=torch.Generator().manual_seed(4))
    x, mask = torch.randn(2, 6, 4), torch.rand(2, 6)
    out = stack.train()(x, mask=mask)
    h = x
    for block, p in zip(blocks, naive_draws(stack.probs, 6, 4), strict=True):
        torch.testing.assert_close(block.got["mask"], mask[:, p])
        h = (h[:, p].cumsum(1) * mask[:, p, None])[:, inverse(p)]
    torch.testing.assert_close(out, h)


def test_a_copy_of_a_patched_model_runs_its_own_blocks():
    """copy.deepcopy (an EMA copy) and pickling keep the shuffle on the copy's blocks."""
    import copy
    import io

    torch.manual_seed(0)
    model = TinyVim().train()
    shuffle = patch(model, p_max=1.0, schedule="uniform", generator=torch.Generator())
    x = torch.randn(2, 7, 3)
    buf = io.BytesIO()
    torch.save(model, buf)
    for twin in (copy.deepcopy(model), torch.load(io.BytesIO(buf.getvalue()), weights_only=False)):
        with torch.no_grad():
            for p in twin.parameters():
                p.mul_(2.0)  # the copy's weights differ from the original's
        twin_shuffle = twin.layers._longseq_layerwise_shuffle
        assert twin_shuffle is not shuffle
        twin_shuffle.generator.manual_seed(1)
        out = twin(x)
        perms = naive_draws(twin_shuffle.probs, 7, 1)
        torch.testing.assert_close(out, naive_vim(twin, x, perms))
        assert not torch.allclose(out, naive_vim(model, x, perms))


def test_gradient_checkpointing_recomputes_the_same_shuffle():
    """transformers checkpoints inside a layer's forward, so the backward pass replays
    the layer on the inputs it was given, already shuffled: the gradients equal those of
    the same draws without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_vit(0).train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
            assert all(layer.gradient_checkpointing for layer in model.vit.layers)
        shuffle = patch(model, p_max=1.0, generator=torch.Generator().manual_seed(0))
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        model(pixel_values=x).logits.square().sum().backward()
        assert shuffle.fired == [False, True, True]
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
