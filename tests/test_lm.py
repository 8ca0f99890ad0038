"""Cache row utilities on our cache and on transformers' attention and SSM caches."""

import pytest
import torch

from longseq import lm
from tests.conftest import hf_models, tiny_gpt


def _models():
    return {"gpt": tiny_gpt(), **hf_models()}


@pytest.mark.parametrize("name", ["gpt", "llama", "mamba2", "gpt2"])
@pytest.mark.parametrize("how", ["copy_rows_", "select_cache"])
def test_row_copy_then_decode_matches_recompute(name, how):
    model = _models()[name]
    with torch.no_grad():
        ids = torch.tensor([[1, 3, 2, 1], [2, 2, 1, 3], [3, 1, 1, 2]])
        _, cache = lm.forward(model, ids)
        if how == "copy_rows_":
            lm.copy_rows_(cache, torch.tensor([0, 2]), torch.tensor([1, 1]))
        else:
            lm.select_cache(cache, torch.tensor([1, 1, 1]))
        nxt = torch.tensor([[2], [2], [2]])
        got, _ = lm.forward(model, nxt, cache)
        ref = model(torch.cat([ids[[1]], nxt[:1]], 1)).logits[:, -1].float()
        torch.testing.assert_close(got, ref.expand(3, -1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt", "llama", "mamba2"])
def test_repeat_cache(name):
    model = _models()[name]
    with torch.no_grad():
        ids = torch.tensor([[1, 3, 2], [2, 2, 1]])
        _, cache = lm.forward(model, ids)
        lm.repeat_cache(cache, 3)
        assert lm.cache_batch_size(cache) == 6
        got, _ = lm.forward(model, torch.full((6, 1), 2), cache)
        ref = model(torch.cat([ids, torch.full((2, 1), 2)], 1)).logits[:, -1].float()
        torch.testing.assert_close(got, ref.repeat_interleave(3, 0), atol=1e-4, rtol=1e-4)


def test_gumbel_sample_frequencies():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.2, 0.7])
    draws = lm.gumbel_sample(p.log().expand(20000, 3), g)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_check_finite():
    lm.check_finite(torch.tensor([[0.0, -float("inf")]]), "here")
    with pytest.raises(ValueError, match="NaN"):
        lm.check_finite(torch.tensor([[0.0, float("nan")]]), "here")
    with pytest.raises(ValueError, match="all -inf"):
        lm.check_finite(torch.tensor([[-float("inf"), -float("inf")]]), "here")
