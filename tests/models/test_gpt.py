import torch

from longseq.models.gpt import GPT, GPTCache, GPTConfig


def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()


def test_cached_decoding_matches_full_forward():
    m = model()
    ids = torch.randint(0, 11, (3, 12))
    full = m(ids).logits
    out = m(ids[:, :5], use_cache=True)
    logits = [out.logits]
    cache = out.cache
    for t in range(5, 12):  # one token at a time
        out = m(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)


def test_chunked_continuation_after_cache_is_causal():
    m = model()
    ids = torch.randint(0, 11, (2, 10))
    full = m(ids).logits
    out = m(ids[:, :4], use_cache=True)
    out2 = m(ids[:, 4:], cache=out.cache, use_cache=True)
    torch.testing.assert_close(out2.logits, full[:, 4:], atol=1e-5, rtol=1e-5)
    assert out2.cache.get_seq_length() == 10


def test_reorder_cache_selects_rows():
    m = model()
    ids = torch.randint(0, 11, (3, 6))
    out = m(ids, use_cache=True)
    out.cache.reorder_cache(torch.tensor([2, 2, 0]))
    nxt = torch.tensor([[1], [1], [1]])
    got = m(nxt, cache=out.cache, use_cache=True).logits[:, -1]
    ref = m(torch.cat([ids[[2, 2, 0]], nxt], 1)).logits[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_is_a_clear_error():
    import pytest

    m = model()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 33, dtype=torch.long))
    assert isinstance(GPTCache(2).get_seq_length(), int)


def test_loss_ignores_masked_labels():
    m = model()
    ids = torch.randint(0, 11, (2, 8))
    labels = ids.clone()
    labels[:, :4] = -100
    loss = m(ids, labels=labels).loss
    logp = m(ids).logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0][:, 3:].mean()
    torch.testing.assert_close(loss, nll)


def test_left_padded_batch_matches_each_row_alone():
    """With an attention mask and position ids, a left-padded row (prefill, then cached
    steps) gives the logits of the same tokens decoded alone."""
    m = model()
    rows = [torch.randint(0, 11, (n,)) for n in (7, 3, 5)]
    nxt = torch.randint(0, 11, (3, 4))
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 7 - len(r) :], mask[i, 7 - len(r) :] = r, 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = m(ids, use_cache=True, attention_mask=mask, position_ids=pos)
    got = [out.logits[:, -1]]
    for t in range(4):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        step = m(
            nxt[:, t : t + 1],
            cache=out.cache,
            use_cache=True,
            attention_mask=mask,
            position_ids=pos[:, -1:] + t + 1,
        )
        got.append(step.logits[:, -1])
    for i, r in enumerate(rows):
        ref = m(torch.cat([r, nxt[i]])[None]).logits[0, len(r) - 1 :]
        torch.testing.assert_close(torch.stack([g[i] for g in got]), ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out.cache.layers[1].keys).all()  # padding never attends to nothing
