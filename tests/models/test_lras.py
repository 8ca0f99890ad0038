import torch

from longseq.models.lras import LRAS, LRASConfig, PatchQuantizer, lras_mask


def _model(seed=0):
    torch.manual_seed(seed)
    m = LRAS(LRASConfig(image_size=16, patch=4, codebook_size=32, n_layer=2, n_embd=32))
    return m.eval()


def test_training_pass_equals_random_access_queries():
    """Pointer k of the random-order training pass predicts exactly what `predict` gives
    for that slot with the first k slots of the order revealed."""
    m = _model()
    b, s = 2, m.config.n_slots
    f0, f1 = torch.rand(b, s, 48), torch.rand(b, s, 48)
    order = torch.stack([torch.randperm(s) for _ in range(b)])
    logits, _ = m(f0, f1, order)
    for k in (0, 1, 5, s - 1):
        rev = order[:, :k]
        shown = f1.gather(1, rev[..., None].expand(-1, -1, 48))
        ref = m.predict(f0, rev, shown, order[:, k : k + 1])
        torch.testing.assert_close(logits[:, k : k + 1], ref, atol=1e-5, rtol=1e-5)
    # a prefix of the order trains the same pointers
    head, _ = m(f0, f1, order[:, :5])
    torch.testing.assert_close(head, logits[:, :5], atol=1e-5, rtol=1e-5)


def test_queries_are_independent():
    m = _model(1)
    s = m.config.n_slots
    f0, f1 = torch.rand(1, s, 48), torch.rand(1, s, 48)
    rev = torch.tensor([[3, 7]])
    qry = torch.tensor([[0, 1, 2, 9, 15]])
    shown = f1[:, [3, 7]]
    together = m.predict(f0, rev, shown, qry)
    for j in range(qry.shape[1]):
        alone = m.predict(f0, rev, shown, qry[:, j : j + 1])
        torch.testing.assert_close(together[:, j], alone[:, 0], atol=1e-5, rtol=1e-5)


def test_mask_layout():
    mask = lras_mask(2, 3, 3, torch.device("cpu"), queries_see_all=False)
    n0, m = 2, 3
    assert mask[:n0, :n0].all() and not mask[:n0, n0:].any()
    for k in range(m):
        assert mask[n0 + m + k, n0 : n0 + k].all() and not mask[n0 + m + k, n0 + k : n0 + m].any()
        assert mask[n0 + m + k, n0 + m + k] and mask[n0 + m + k, n0 + m :].sum() == 1


def test_quantizer_roundtrip_and_kmeans():
    q = PatchQuantizer(4, 2)
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(4, 12, generator=g)
    pts = centers.repeat(50, 1) + 0.01 * torch.randn(200, 12, generator=g)
    mse = q.fit(pts, iters=30)
    assert mse < 2e-4  # the four clusters are found
    img = torch.randint(0, 256, (2, 6, 8, 3), generator=g)
    x = q.patchify(img)
    assert x.shape == (2, 12, 12)
    torch.testing.assert_close(q.unpatchify(x, 6, 8), img.float())
    # images built from codewords encode to those codes
    codes = torch.randint(0, 4, (2, 12), generator=g)
    rebuilt = q.decode(codes, 6, 8)
    assert torch.equal(q.encode(rebuilt), codes)


def test_rope_scores_depend_on_the_slot_offset_only():
    from longseq.models.lras import apply_rope, rope_angles

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(a, b):
        qa = apply_rope(q, rope_angles(torch.tensor([[a]]), 8, 16, 16.0))
        kb = apply_rope(k, rope_angles(torch.tensor([[b]]), 8, 16, 16.0))
        return (qa * kb).sum()

    base = score(9, 18)  # offset (+1 column, +1 row)
    torch.testing.assert_close(score(9 + 8 * 2 + 3, 18 + 8 * 2 + 3), base)
    assert not torch.allclose(score(9, 19), base)
