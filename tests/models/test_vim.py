import pytest
import torch

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
