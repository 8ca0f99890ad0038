"""State-collapse toolkit: streaming exactness, mitigations, diagnostics, passkey."""

import numpy as np
import pytest
import torch

from longseq.collapse import (
    SSMControl,
    apply_mitigation,
    apply_named_mitigation,
    clear_mitigations,
    greedy_continue,
    loss_curve,
    parse_mitigation,
    passkey_accuracy,
    passkey_calibration,
    per_position_nll,
    state_statistics,
)
from longseq.data.text import PASSKEY_FILLER, PASSKEY_PREFIX, PASSKEY_SUFFIX, passkey_prompt
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM, ssd_chunked, ssd_naive


def tiny(seed=0):
    torch.manual_seed(seed)
    return Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()


def full_nll(model, ids):
    with torch.no_grad():
        lp = model(ids[None]).logits[0, :-1].float().log_softmax(-1)
    return -lp.gather(-1, ids[1:, None])[:, 0]


@pytest.mark.parametrize("segment", [7, 32, 1000])
def test_streamed_nll_equals_one_forward(segment):
    m = tiny()
    ids = torch.randint(0, 256, (150,))
    torch.testing.assert_close(
        per_position_nll(m, ids, segment), full_nll(m, ids), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("segment", [1, 7, 33, 1000])
def test_window_streaming_through_the_cache_is_exact(segment):
    m = tiny()
    apply_mitigation(m, SSMControl(window=20))
    ids = torch.randint(0, 256, (200,))
    torch.testing.assert_close(
        per_position_nll(m, ids, segment), full_nll(m, ids), atol=1e-4, rtol=1e-4
    )


def test_window_changes_the_model_only_beyond_the_window():
    m = tiny()
    ids = torch.randint(0, 256, (120,))
    plain = full_nll(m, ids)
    apply_mitigation(m, SSMControl(window=40))
    win = full_nll(m, ids)
    torch.testing.assert_close(win[:39], plain[:39], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(win[60:], plain[60:])


def test_greedy_continue_matches_full_recompute():
    m = tiny()
    ids = torch.randint(0, 256, (40,))

    @torch.no_grad()
    def recompute(n):  # naive greedy decoding: the full sequence through the model each step
        seq = ids.tolist()
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq])).logits[0, -1].argmax()))
        return seq[len(ids) :]

    assert greedy_continue(m, ids, 5) == recompute(5)
    apply_mitigation(m, SSMControl(window=10))
    assert greedy_continue(m, ids, 5) == recompute(5)


def test_forget_more_and_state_bound_on_the_scan():
    torch.manual_seed(0)
    b, l, h, p, n = 1, 64, 2, 4, 3
    x, B, C = torch.ones(b, l, h, p), torch.ones(b, l, h, n), torch.randn(b, l, h, n)
    dt, A = torch.full((b, l, h), 0.1), -torch.full((h,), 0.01)
    _, s_plain = ssd_chunked(x, dt, A, B, C, 16)
    _, s_forget = ssd_chunked(x, dt, A, B, C, 16, log_decay_offset=np.log(0.9))
    y1, f1 = ssd_chunked(x, dt, A, B, C, 16, log_decay_offset=np.log(0.9))
    y2, f2 = ssd_naive(x, dt, A, B, C, log_decay_offset=np.log(0.9))
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    assert s_forget.norm() < 0.5 * s_plain.norm()
    _, s_bound = ssd_chunked(x, dt, A, B, C, 16, state_bound=1.0)
    assert torch.all(s_bound.flatten(2).norm(dim=-1) <= 1.0 + 1e-5)


def test_state_statistics_reads_the_state():
    m = tiny()
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=40)
    assert trace.positions == [40, 80, 100]
    assert trace.tensor("norm").shape == (3, 2, m.config.nheads)
    with torch.no_grad():
        st = m(ids[None], use_cache=True).cache.layers[1].recurrent_states[0]
    torch.testing.assert_close(
        trace.tensor("norm")[-1, 1], st.flatten(1).norm(dim=-1), atol=1e-4, rtol=1e-4
    )
    assert all(0 < d < 1 for d in trace.tensor("decay").flatten().tolist())
    assert all(m.probe is None for m in m.modules() if hasattr(m, "probe"))


def test_norm_mitigation_bounds_the_recorded_state():
    m = tiny()
    ids = torch.randint(0, 256, (200,))
    apply_mitigation(m, SSMControl(state_bound=0.05))
    trace = state_statistics(m, ids, segment=32)
    assert trace.tensor("norm").max() <= 0.05 + 1e-5
    clear_mitigations(m)
    assert state_statistics(m, ids, segment=32).tensor("norm").max() > 0.05


def test_parse_mitigation():
    assert parse_mitigation("none") is None
    c = parse_mitigation("forget")
    assert (c.decay_scale, c.b_scale) == (0.9999, 0.75)
    assert parse_mitigation("forget:0.99,0.5").b_scale == 0.5
    assert parse_mitigation("norm:3").state_bound == 3.0
    assert parse_mitigation("window:64").window == 64
    assert parse_mitigation("dt:0.5").dt_scale == 0.5
    assert parse_mitigation("a:2").a_scale == 2.0
    assert parse_mitigation("bclip:0.3").b_clip == 0.3
    for bad, msg in (
        ("blur", "unknown"),
        ("window:x", "bad mitigation"),
        ("forget:1.5", "decay_scale"),
        ("dt:0", "dt_scale"),
        ("bclip:-1", "b_clip"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_mitigation(bad)
    with pytest.raises(TypeError, match="no Mamba-2"):
        apply_mitigation(torch.nn.Linear(2, 2), None)


def test_passkey_prompt_format():
    s = passkey_prompt(1000, 0.5, np.random.default_rng(0))
    text = bytes(s.ids.tolist()).decode()
    assert text.startswith(PASSKEY_PREFIX) and text.endswith(PASSKEY_SUFFIX)
    assert f"The passkey is {s.key}. Remember it. {s.key} is the passkey." in text
    assert 900 <= len(text) <= 1000 and len(s.key) == 5
    before = text.index("The passkey is")
    assert abs(text[:before].count(PASSKEY_FILLER) - text[before:].count(PASSKEY_FILLER)) <= 1
    cal = passkey_calibration(1000, n=3)
    assert len(cal) == 3 and all(900 <= len(c) <= 1000 for c in cal)
    assert all(torch.equal(a, b) for a, b in zip(cal, passkey_calibration(1000, n=3), strict=True))
    assert len({bytes(c.tolist()) for c in cal}) == 3


def test_passkey_accuracy_scores_each_length_and_depth(monkeypatch):
    """An oracle that reads the key from the prompt scores 1 exactly where it is allowed
    to answer (here: prompts up to 400 bytes with the needle in the first half)."""
    import longseq.collapse.evaluate as ev

    def oracle(model, ids, n):
        text = bytes(ids.tolist()).decode()
        key = text.split("The passkey is ")[1][:5]
        depth = text.index(key) / len(text)
        ok = len(text) <= 400 and depth < 0.5
        return list(f" {key if ok else '00000'}.".encode())[:n]

    monkeypatch.setattr(ev, "greedy_continue", oracle)
    res = passkey_accuracy(None, [300, 1000], depths=[0.0, 1.0], trials=3, progress=False)
    assert res.accuracy == [[1.0, 0.0], [0.0, 0.0]]
    assert res.mean_by_length() == [0.5, 0.0] and res.trials == 3
    with pytest.raises(ValueError, match="185 tokens .the prompt.s fixed text"):
        passkey_accuracy(None, [100])


def test_loss_curve_bins_are_means_of_the_full_forward():
    m = tiny()
    ids = torch.randint(0, 256, (300,))
    curve = loss_curve(m, ids, train_length=64, segment=100)
    assert curve.edges[0] == 0 and curve.edges[-1] == 299
    assert {1, 2, 4, 8, 16, 32, 64, 128, 256} <= set(curve.edges)
    nll = full_nll(m, ids)
    for a, b, v, c in zip(
        curve.edges[:-1], curve.edges[1:], curve.mean_nll, curve.counts, strict=True
    ):
        assert v == pytest.approx(nll[a:b].mean().item(), abs=1e-4) and c == b - a
    # ranges are means over their tokens, not over their (log-spaced) bins
    for lo, hi in ((0, 64), (64, 256), (76, 299)):
        assert curve.mean_between(lo, hi) == pytest.approx(nll[lo:hi].mean().item(), abs=1e-4)
    # "bins": the plain mean of the means of the bins inside the range
    inside = [
        (a, b)
        for a, b in zip(curve.edges[:-1], curve.edges[1:], strict=True)
        if a >= 64 and b <= 256
    ]
    bin_means = [nll[a:b].mean().item() for a, b in inside]
    assert curve.mean_between(64, 256, "bins") == pytest.approx(
        sum(bin_means) / len(inside), abs=1e-4
    )
    with pytest.raises(ValueError, match="weighting"):
        curve.mean_between(0, 64, "tokens")
    with pytest.raises(ValueError, match="at least 2"):
        loss_curve(m, ids[:1], train_length=64)


def test_named_mitigations_calibrate_from_the_model():
    m = tiny()
    a, b = torch.randint(0, 256, (80,)), torch.full((64,), 10)
    apply_named_mitigation(m, "norm", 64, calibration_ids=[a, b])
    bounds = [mx.control.state_bound for mx in m.modules() if hasattr(mx, "control")]
    apply_named_mitigation(m, "norm:layer", 64, calibration_ids=[a, b])
    layer_bounds = [mx.control.state_bound for mx in m.modules() if hasattr(mx, "control")]
    clear_mitigations(m)
    # each head's largest state norm at any reading inside the training length, over inputs
    per_input = [state_statistics(m, x[:64], segment=16).tensor("norm").amax(dim=0) for x in (a, b)]
    expected = torch.maximum(*per_input)  # (layers, heads)
    assert len(bounds[0]) == m.config.nheads
    assert torch.tensor(bounds).flatten().tolist() == pytest.approx(expected.flatten().tolist())
    assert torch.tensor(bounds).flatten().tolist() != pytest.approx(per_input[0].flatten().tolist())
    assert layer_bounds == pytest.approx(expected.amax(-1).tolist())
    apply_named_mitigation(m, "dt", 64, read_length=256)
    assert {mx.control.dt_scale for mx in m.modules() if hasattr(mx, "control")} == {0.25}
    with pytest.raises(ValueError, match="length of the input"):
        apply_named_mitigation(m, "dt", 64)
    apply_named_mitigation(m, "window", 48)
    assert {mx.control.window for mx in m.modules() if hasattr(mx, "control")} == {48}
    apply_named_mitigation(m, "forget:0.9,0.5")
    assert all(
        (mx.control.decay_scale, mx.control.window) == (0.9, None)
        for mx in m.modules()
        if hasattr(mx, "control")
    )
    with pytest.raises(ValueError, match="training length"):
        apply_named_mitigation(m, "window")
    with pytest.raises(ValueError, match="at least one"):
        apply_named_mitigation(m, "norm", 64, calibration_ids=[])
