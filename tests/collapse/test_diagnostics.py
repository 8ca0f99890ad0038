"""State diagnostics against states and inputs computed directly from the model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longseq.collapse import SSMControl, StateTrace, apply_mitigation, state_statistics
from longseq.collapse.diagnostics import CONV_KEYS, INPUT_KEYS, STATE_KEYS
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM


def tiny(seed=0):
    torch.manual_seed(seed)
    return Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()


@torch.no_grad()
def states_at(model, ids, t):
    """Every layer's recurrent state after the first t tokens, from one forward."""
    cache = model(ids[None, :t], use_cache=True).cache
    return [layer.recurrent_states[0] for layer in cache.layers]


@torch.no_grad()
def layer0_conv_inputs(model, ids):
    """The inputs of layer 0's convolution (x, B, C channels before it), (l, conv_dim)."""
    cfg, layer = model.config, model.backbone.layers[0]
    u = layer.norm(model.backbone.embeddings(ids[None]))
    return layer.mixer.in_proj(u)[0, :, cfg.d_inner : cfg.d_inner + cfg.conv_dim]


def test_trace_holds_compact_arrays_of_every_statistic():
    m = tiny()
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=40)
    assert trace.positions == [40, 80, 100]
    for key in STATE_KEYS + INPUT_KEYS:
        assert trace.stats[key].shape == (3, 2, m.config.nheads)
        assert trace.stats[key].dtype == np.float32
    for key in CONV_KEYS:
        assert trace.stats[key].shape == (3, 2, 3)
    assert trace.max_channel.shape == (3, 2, m.config.nheads, 2) and trace.nll.shape == (3,)


def test_state_statistics_match_the_states_of_a_full_forward():
    m = tiny()
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=40)
    for i, t in enumerate(trace.positions):
        for layer, h in enumerate(states_at(m, ids, t)):
            flat = h.flatten(1)
            torch.testing.assert_close(
                trace.tensor("norm")[i, layer], flat.norm(dim=-1), atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(
                trace.tensor("max_abs")[i, layer], flat.abs().amax(-1), atol=1e-5, rtol=1e-4
            )
    # cosine similarity of consecutive readings: first reading has none
    prev, now = states_at(m, ids, 40)[1].flatten(1), states_at(m, ids, 80)[1].flatten(1)
    cos = (prev * now).sum(-1) / (prev.norm(dim=-1) * now.norm(dim=-1))
    torch.testing.assert_close(trace.tensor("cos_prev")[1, 1], cos, atol=1e-5, rtol=1e-5)
    assert torch.isnan(trace.tensor("cos_prev")[0]).all()
    assert all(0 < d < 1 for d in trace.tensor("decay").flatten().tolist())
    assert all(mx.probe is None for mx in m.modules() if hasattr(mx, "probe"))


def test_conv_state_and_C_statistics_match_the_model_inputs():
    m = tiny()
    cfg = m.config
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=40)
    raw = layer0_conv_inputs(m, ids)
    # the conv state after 80 tokens holds the raw inputs of tokens 77, 78, 79
    last = raw[77:80]
    gn = cfg.ngroups * cfg.d_state
    for part, cols in enumerate(
        (slice(0, cfg.d_inner), slice(cfg.d_inner, cfg.d_inner + gn), slice(cfg.d_inner + gn, None))
    ):
        vals = last[:, cols].flatten()
        assert trace.stats["conv_rms"][1, 0, part] == pytest.approx(
            vals.pow(2).mean().sqrt().item(), rel=1e-4
        )
        assert trace.stats["conv_max_abs"][1, 0, part] == pytest.approx(
            vals.abs().max().item(), rel=1e-4
        )
    # mean |C| of layer 0 over the second segment: the convolved, activated C channels
    w = m.backbone.layers[0].mixer.conv1d
    conv = F.silu(w(raw.T[None])[0, :, : len(ids)].T)  # causal (padding d_conv - 1, cut)
    C = conv[40:80, cfg.d_inner + gn :]
    assert trace.stats["C_abs"][1, 0] == pytest.approx(
        [C.abs().mean().item()] * cfg.nheads, rel=1e-4
    )


def test_histograms_at_chosen_positions():
    m = tiny()
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=16, histogram_at=[30, 100], bins=10)
    assert [h["position"] for h in trace.histograms] == [32, 100]  # first reading at or after
    for hist in trace.histograms:
        for layer, h in enumerate(states_at(m, ids, hist["position"])):
            vals = h.flatten()
            top = vals.abs().max().item()
            edges, counts = hist["edges"][layer], hist["counts"][layer]
            assert len(edges) == 11 and edges[0] == pytest.approx(-top) and edges[-1] == top
            assert sum(counts) == vals.numel()
            expected, _ = np.histogram(vals.numpy(), bins=np.asarray(edges))
            assert np.abs(np.asarray(counts) - expected).sum() <= 2  # edge rounding


def test_trace_json_round_trip(tmp_path):
    m = tiny()
    ids = torch.randint(0, 256, (100,))
    trace = state_statistics(m, ids, segment=40, histogram_at=[50])
    back = StateTrace.from_json(trace.to_json(tmp_path / "t.json"))
    assert back.positions == trace.positions and back.histograms == trace.histograms
    for key, arr in trace.stats.items():
        np.testing.assert_allclose(back.stats[key], arr, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(back.max_channel, trace.max_channel)


def test_window_diagnostics_read_the_window_state():
    """Layer 0's window state at t is h_t - (a_{t-r+1} ... a_t) h_{t-r} of the plain model
    (its inputs do not depend on the mitigation)."""
    m = tiny()
    cfg, mixer = m.config, m.backbone.layers[0].mixer
    ids = torch.randint(0, 256, (100,))
    with torch.no_grad():
        u = m.backbone.layers[0].norm(m.backbone.embeddings(ids[None]))
        dt = F.softplus(mixer.in_proj(u)[0, :, -cfg.nheads :] + mixer.dt_bias)  # (l, h)
    log_a = dt * -torch.exp(mixer.A_log)
    h50, h40 = states_at(m, ids, 50)[0], states_at(m, ids, 40)[0]
    window = h50 - torch.exp(log_a[40:50].sum(0))[:, None, None] * h40
    apply_mitigation(m, SSMControl(window=10))
    trace = state_statistics(m, ids, segment=50)
    torch.testing.assert_close(
        trace.tensor("norm")[0, 0], window.flatten(1).norm(dim=-1), atol=1e-4, rtol=1e-4
    )
