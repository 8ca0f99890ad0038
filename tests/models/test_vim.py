import pytest
import torch
import torch.nn as nn

from longseq.models.vim import Vim, VimConfig
from longseq.models.vit import ViT


def test_vim_forward_shapes_and_class_token_position():
    torch.manual_seed(0)
    m = Vim(img_size=16, patch_size=4, dim=32, depth=2, num_classes=5, headdim=16).eval()
    assert m(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    tok = m.tokens(torch.randn(1, 3, 16, 16))
    assert tok.shape == (1, 17, 32)
    assert m.cls_pos == 8
    torch.testing.assert_close(tok[0, 8], (m.cls_token + m.pos_embed[:, 8])[0, 0])


def test_vim_is_bidirectional():
    """The class token in the middle sees patches after it as well as before it."""
    torch.manual_seed(0)
    m = Vim(img_size=16, patch_size=4, dim=32, depth=1, num_classes=2, headdim=16).eval()
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[..., 12:, 12:] += 1.0  # last patch only
    assert not torch.allclose(m(x), m(y))


def test_bad_image_shape_is_a_clear_error():
    m = Vim(img_size=16, patch_size=4, dim=32, depth=1, num_classes=2, headdim=16)
    with pytest.raises(ValueError, match="expected images of shape"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VimConfig(img_size=30, patch_size=4)


def test_vit_forward():
    m = ViT(img_size=16, patch_size=4, dim=32, depth=2, heads=2, num_classes=4)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def _small(**kw):
    return Vim(img_size=16, patch_size=4, dim=32, num_classes=5, headdim=16, **{"depth": 2, **kw})


@pytest.mark.parametrize("position, index", [("first", 0), ("middle", 8)])
def test_class_token_sits_at_its_index_between_the_patches_in_order(position, index):
    torch.manual_seed(0)
    m = _small(cls_position=position).eval()
    x = torch.randn(2, 3, 16, 16)
    tok = m.tokens(x)
    assert m.cls_pos == index
    torch.testing.assert_close(
        tok[:, index], (m.cls_token + m.pos_embed[:, index])[:, 0].expand(2, -1)
    )
    # the 16 patches, row by row, fill the other positions in order
    patches = m.patch_embed(x).flatten(2).transpose(1, 2)
    others = [i for i in range(17) if i != index]
    torch.testing.assert_close(tok[:, others], patches + m.pos_embed[:, others])


@pytest.mark.parametrize("position, index", [("first", 0), ("middle", 8)])
def test_head_reads_the_class_token(position, index):
    """With identity blocks nothing mixes the tokens, so the logits are the head applied
    to the class token's input alone, whatever the image."""
    torch.manual_seed(0)
    m = _small(cls_position=position).eval()
    m.blocks.blocks = nn.ModuleList([nn.Identity(), nn.Identity()])
    expected = m.head(m.norm_f(m.cls_token[0, 0] + m.pos_embed[0, index]))
    out = m(torch.randn(3, 3, 16, 16))
    torch.testing.assert_close(out, expected.expand(3, -1))


class TokenWise(nn.Module):
    """A residual block that acts on each token alone (so it commutes with any token
    permutation) and records where the class token (marked by a large first channel)
    was when it ran."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.seen_at: list[int] = []

    def forward(self, x):
        self.seen_at.append(int(x[0, :, 0].argmax()))
        return x + torch.tanh(self.lin(x))


@pytest.mark.parametrize("position", ["first", "middle"])
def test_shuffle_moves_the_class_token_and_puts_it_back(position):
    torch.manual_seed(0)
    m = _small(cls_position=position, depth=4, shuffle_p_max=1.0, shuffle_schedule="uniform")
    with torch.no_grad():
        m.cls_token[0, 0, 0] = 1e3  # a marker the token-wise blocks keep at the top
    m.blocks.blocks = nn.ModuleList([TokenWise(32) for _ in range(4)])
    x = torch.randn(2, 3, 16, 16)
    shuffled = m.train()(x)
    assert m.blocks.fired == [True] * 4
    where = [i for b in m.blocks.blocks for i in b.seen_at]
    assert any(i != m.cls_pos for i in where)  # the class token did move ...
    torch.testing.assert_close(shuffled, m.eval()(x))  # ... and its output is read back


def test_drop_path_off_in_eval_and_rates_grow_linearly():
    torch.manual_seed(0)
    m = _small(depth=4, drop_path=0.6)
    plain = _small(depth=4)
    plain.load_state_dict(m.state_dict())  # drop-path adds no parameters
    assert [b.drop_path.rate for b in m.blocks.blocks] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    x = torch.randn(3, 3, 16, 16)
    m.eval()
    plain.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(m(x), plain(x), rtol=0, atol=0)


def test_a_dropped_block_passes_its_input_through_for_that_sample():
    torch.manual_seed(0)
    m = _small(depth=2, drop_path=0.5)
    block = m.blocks.blocks[1]  # rate 0.5
    h = torch.randn(64, 17, 32)
    with torch.no_grad():
        branch = block.eval()(h) - h  # the residual branch, nothing dropped
        out = block.train()(h)
    dropped = torch.isclose(out, h, rtol=0, atol=1e-6).flatten(1).all(1)
    assert 10 < int(dropped.sum()) < 54  # about half of 64
    torch.testing.assert_close(out[~dropped], h[~dropped] + 2 * branch[~dropped])
    first = m.blocks.blocks[0].train()  # rate 0: never dropped
    with torch.no_grad():
        torch.testing.assert_close(first(h), first.eval()(h))


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"cls_position": "last"}, "cls_position must be one of"),
        ({"drop_path": 1.0}, r"drop_path must be in \[0, 1\)"),
        ({"drop_path": -0.1}, r"drop_path must be in \[0, 1\)"),
    ],
)
def test_bad_options_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        VimConfig(**kw)


def test_configs_saved_before_the_options_load_as_before():
    """A checkpoint config written before cls_position and drop_path existed keeps the
    class token in the middle and trains without drop-path."""
    cfg = VimConfig.from_dict({"img_size": 32, "patch_size": 8, "dim": 64, "depth": 12})
    assert (cfg.cls_position, cfg.drop_path) == ("middle", 0.0)
    assert Vim(cfg).cls_pos == 8


def test_vit_drop_path():
    torch.manual_seed(0)
    m = ViT(img_size=16, patch_size=4, dim=32, depth=3, heads=2, num_classes=4, drop_path=0.5)
    assert [b.drop_path.rate for b in m.blocks.blocks] == pytest.approx([0.0, 0.25, 0.5])
    x = torch.randn(2, 3, 16, 16)
    m.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
