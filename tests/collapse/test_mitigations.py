"""The mitigations give one answer on every path (chunked prefill of any chunk size,
token-by-token decoding, prefill then decode), the window is exact at constant cost,
and every inference knob matches a naive token-by-token mixer."""

import math

import pytest
import torch
import torch.nn.functional as F

import longseq.models.mamba2 as mamba2
from longseq.collapse import SSMControl, apply_mitigation, clear_mitigations, state_statistics
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM


def tiny(seed=0, ngroups=1):
    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16, ngroups=ngroups
    )
    m = Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for prm in m.parameters():  # away from the init, so that every weight matters
            prm.add_(torch.randn_like(prm) * 0.2)
        for layer in m.backbone.layers:  # slow decays on some heads: states grow as in a collapse
            layer.mixer.A_log.copy_(torch.tensor([-6.0, -1.0, 0.0, 1.0]))
    return m


def set_chunk_size(model, q):
    model.config.chunk_size = q
    for mod in model.modules():
        if hasattr(mod, "cfg"):
            mod.cfg.chunk_size = q


@torch.no_grad()
def logprobs_by_path(model, ids, path):
    """Log-probs of every next token, computed along ``path``: ("full", q) one forward
    with chunk size q; ("steps",) token by token; ("split", k) prefill k tokens, then
    decode; ("segments", s) chunked continuation in segments of s tokens."""
    kind, arg = path[0], path[1] if len(path) > 1 else None
    if kind == "full":
        set_chunk_size(model, arg)
        logits = model(ids[None]).logits[0]
        set_chunk_size(model, 16)
    else:
        size = {"steps": 1, "segments": arg}.get(kind)
        bounds = [0, arg] if kind == "split" else []
        pieces, cache, start = [], None, 0
        while start < len(ids):
            end = bounds[1] if kind == "split" and start == 0 else start + (size or 1)
            out = model(ids[start:end][None], cache=cache, use_cache=True)
            pieces.append(out.logits[0])
            cache, start = out.cache, end
        logits = torch.cat(pieces)
    return logits.float().log_softmax(-1)


PATHS = [("full", 4), ("full", 16), ("full", 64), ("steps",), ("split", 37), ("segments", 23)]


@pytest.mark.parametrize("per_head", [True, False])
def test_state_normalization_gives_one_answer_on_every_path(per_head):
    m = tiny()
    ids = torch.randint(0, 256, (160,))
    plain = logprobs_by_path(m, ids, ("full", 16))
    norms = state_statistics(m, ids, segment=8).tensor("norm").amax(0)  # (layers, heads)
    for layer, top in enumerate(norms):  # bounds that bind on every head
        bound = tuple((0.3 * top).tolist()) if per_head else float(0.3 * top.max())
        apply_mitigation(m, SSMControl(state_bound=bound), [layer])
    ref = logprobs_by_path(m, ids, ("steps",))  # the definition: renormalize after every token
    assert (ref - plain).abs().max() > 0.1  # the bounds change the model
    for path in PATHS:
        torch.testing.assert_close(
            logprobs_by_path(m, ids, path), ref, atol=1e-4, rtol=0, msg=str(path)
        )
    heads = state_statistics(m, ids, segment=8).tensor("norm").amax(0)
    caps = torch.tensor(
        [mx.mixer.control.bound_tensor(4, "cpu").tolist() for mx in m.backbone.layers]
    )
    assert torch.all(heads <= caps + 1e-5)


def test_state_bound_checks_its_arguments():
    m = tiny()
    apply_mitigation(m, SSMControl(state_bound=(1.0, 2.0)))
    with pytest.raises(ValueError, match="2 values, the layer has 4 heads"):
        m(torch.tensor([[1, 2]]))
    for bad, msg in (
        (dict(state_bound=0.0), "state_bound"),
        (dict(state_bound=(1.0, -1.0)), "state_bound"),
        (dict(state_bound=1.0, window=8), "cannot be combined"),
        (dict(a_scale=0.0), "a_scale"),
    ):
        with pytest.raises(ValueError, match=msg):
            SSMControl(**bad)


def receptive_field_logits(model, ids, window):
    """Today's windowed results: each position read by a forward over the tokens a
    windowed model can depend on (layers x (r + d_conv - 1) of them), without a cache,
    with the quadratic windowed SSD of the reference implementation."""
    ctx = model.config.n_layer * (window + model.config.d_conv - 1)

    def quadratic(x, dt, A, B, C, window, chunk_size, past, offset, ngroups):
        assert past is None
        return mamba2.ssd_windowed(x, dt, A, B, C, window, offset), None

    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(mamba2, "ssd_window_scan", quadratic)
        rows = [model(ids[max(0, t - ctx) : t + 1][None]).logits[0, -1] for t in range(len(ids))]
    return torch.stack(rows).float().log_softmax(-1)


@pytest.mark.parametrize("window, ngroups", [(5, 1), (12, 2), (40, 1)])
def test_windowed_decoding_equals_the_receptive_field_path(window, ngroups):
    m = tiny(ngroups=ngroups)
    ids = torch.randint(0, 256, (110,))
    apply_mitigation(m, SSMControl(window=window, decay_scale=0.99, dt_scale=1.5))
    ref = receptive_field_logits(m, ids, window)
    for path in PATHS:
        torch.testing.assert_close(
            logprobs_by_path(m, ids, path), ref, atol=1e-4, rtol=0, msg=str(path)
        )


def test_window_cache_does_not_grow_with_the_stream():
    m = tiny()
    apply_mitigation(m, SSMControl(window=8))

    def cache_bytes(n):
        with torch.no_grad():
            cache = m(torch.randint(0, 256, (1, n)), use_cache=True).cache
            for _ in range(3):
                cache = m(torch.tensor([[7]]), cache=cache, use_cache=True).cache
        layer = cache.layers[0]
        ts = [layer.conv_states, layer.recurrent_states, *vars(layer.window).values()]
        return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))

    assert cache_bytes(3) == cache_bytes(50) == cache_bytes(400)
    with torch.no_grad():  # a cache filled with one window does not silently serve another
        cache = m(torch.tensor([[1, 2, 3]]), use_cache=True).cache
        apply_mitigation(m, SSMControl(window=9))
        with pytest.raises(ValueError, match="window 8"):
            m(torch.tensor([[4]]), cache=cache, use_cache=True)
        clear_mitigations(m)
        with pytest.raises(ValueError, match="holds a sliding window"):
            m(torch.tensor([[4]]), cache=cache, use_cache=True)


@torch.no_grad()
def naive_forward(model, ids, controls):
    """The whole LM with every mixer written out token by token from the formulas,
    each layer with its own knobs (a dict of SSMControl fields)."""
    cfg = model.config
    x = model.backbone.embeddings(ids[None])
    for layer, ctl in zip(model.backbone.layers, controls, strict=True):
        mx = layer.mixer
        u = layer.norm(x)
        z, xbc, dt_raw = torch.split(mx.in_proj(u), [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        w = mx.conv1d.weight[:, 0]  # (conv_dim, d_conv)
        padded = F.pad(xbc[0], (0, 0, cfg.d_conv - 1, 0))
        conv = (
            torch.stack([(padded[t : t + cfg.d_conv].T * w).sum(-1) for t in range(len(ids))])
            + mx.conv1d.bias
        )
        xs, Bs, Cs = torch.split(
            F.silu(conv), [cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], -1
        )
        state = torch.zeros(cfg.nheads, cfg.headdim, cfg.d_state)
        ys = []
        for t in range(len(ids)):
            y = torch.zeros(cfg.nheads, cfg.headdim)
            for h in range(cfg.nheads):
                g = h // (cfg.nheads // cfg.ngroups)
                dt = F.softplus(dt_raw[0, t, h] + mx.dt_bias[h]) * ctl.get("dt_scale", 1.0)
                A = -math.exp(mx.A_log[h]) * ctl.get("a_scale", 1.0)
                a = math.exp(dt * A) * ctl.get("decay_scale", 1.0)
                B = Bs[t, g * cfg.d_state : (g + 1) * cfg.d_state] * ctl.get("b_scale", 1.0)
                if "b_clip" in ctl:
                    B = B.clamp(-ctl["b_clip"], ctl["b_clip"])
                xh = xs[t, h * cfg.headdim : (h + 1) * cfg.headdim]
                state[h] = a * state[h] + dt * torch.outer(xh, B)
                C = Cs[t, g * cfg.d_state : (g + 1) * cfg.d_state]
                y[h] = state[h] @ C + mx.D[h] * xh
            ys.append(y.flatten())
        x = x + mx.out_proj(mx.norm(torch.stack(ys)[None], z))
    return model.lm_head(model.backbone.norm_f(x))[0]


@pytest.mark.parametrize(
    "knobs",
    [
        {"dt_scale": 0.3},
        {"dt_scale": 2.5},
        {"a_scale": 4.0},
        {"b_clip": 0.05},
        {"decay_scale": 0.9, "b_scale": 0.5, "a_scale": 0.5, "dt_scale": 1.7, "b_clip": 0.1},
    ],
)
def test_inference_knobs_match_a_naive_mixer(knobs):
    m = tiny(seed=1, ngroups=2)
    ids = torch.randint(0, 256, (24,))
    apply_mitigation(m, SSMControl(**knobs), layers=[1])  # one layer only
    with torch.no_grad():
        ours = m(ids[None]).logits[0]
    torch.testing.assert_close(ours, naive_forward(m, ids, [{}, knobs]), atol=1e-4, rtol=1e-4)
    clear_mitigations(m)
    with torch.no_grad():
        assert not torch.allclose(m(ids[None]).logits[0], ours, atol=1e-3)
