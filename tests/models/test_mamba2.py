"""Our Mamba-2 against a naive recurrence and against transformers' Mamba2ForCausalLM."""

import json

import pytest
import torch

from longseq.lm import sequence_logprob
from longseq.models.mamba2 import (
    Mamba2Config,
    Mamba2ForCausalLM,
    segsum,
    ssd_chunked,
    ssd_naive,
    ssd_window_scan,
    ssd_window_step,
    ssd_windowed,
)
from longseq.power import power_smc

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_matches_recurrence(chunk, with_state):
    torch.manual_seed(0)
    b, l, h, p, n = 2, 23, 3, 4, 5
    x, B, C = torch.randn(b, l, h, p), torch.randn(b, l, h, n), torch.randn(b, l, h, n)
    dt, A = torch.rand(b, l, h), -torch.rand(h) * 3
    s0 = torch.randn(b, h, p, n) if with_state else None
    y1, f1 = ssd_chunked(x, dt, A, B, C, chunk, s0)
    y2, f2 = ssd_naive(x, dt, A, B, C, s0)
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f1, f2, atol=1e-4, rtol=1e-4)


def scan_inputs(l=61, ngroups=2, seed=0):
    torch.manual_seed(seed)
    b, h, p, n = 2, 4, 3, 5
    x, C = torch.randn(b, l, h, p), torch.randn(b, l, h, n)
    B = torch.randn(b, l, ngroups, n).repeat_interleave(h // ngroups, dim=2)
    dt, A = torch.rand(b, l, h), -torch.tensor([1e-4, 0.05, 0.5, 3.0])  # slow to fast decays
    return x, dt, A, B, C


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_bounded_scan_renormalizes_after_every_token(chunk):
    """Per-head state bounds give the token-by-token recurrence for any chunk size, also
    when the sequence is split and continued from the carried state."""
    x, dt, A, B, C = scan_inputs()
    bound = torch.tensor([0.5, 1.0, 2.0, 1e6])  # the last head is never capped
    y_ref, s_ref = ssd_naive(x, dt, A, B, C, log_decay_offset=-0.01, state_bound=bound)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, log_decay_offset=-0.01, state_bound=bound)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)
    y1, s1 = ssd_chunked(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], chunk, None, -0.01, bound)
    y2, _ = ssd_chunked(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], chunk, s1, -0.01, bound)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, atol=1e-5, rtol=1e-5)
    assert (s_ref.flatten(2).norm(dim=-1) <= bound + 1e-5).all()
    free, _ = ssd_naive(x, dt, A, B, C, log_decay_offset=-0.01)
    assert (free - y_ref).abs().max() > 0.1  # the bounds bind


@pytest.mark.parametrize("window", [1, 4, 16, 50])
@pytest.mark.parametrize("chunk", [4, 16])
def test_window_scan_matches_the_references(window, chunk):
    """The chunked window scan = the quadratic windowed SSD = a difference of stored
    states, in one call, and streamed in segments and single steps through its ring
    buffer."""
    x, dt, A, B, C = scan_inputs()
    y_ref, _ = ssd_naive(x, dt, A, B, C, log_decay_offset=-0.01, window=window)
    torch.testing.assert_close(
        ssd_windowed(x, dt, A, B, C, window, -0.01), y_ref, atol=1e-5, rtol=1e-5
    )
    y, _ = ssd_window_scan(x, dt, A, B, C, window, chunk, None, -0.01, ngroups=2)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    pieces, past, t = [], None, 0
    for size in (3, 1, 1, 17, 1, 30, 1, 7):
        if size == 1 and past is not None:
            yt, past = ssd_window_step(past, x[:, t], dt[:, t], A, B[:, t], C[:, t], -0.01)
            pieces.append(yt[:, None])
        else:
            sl = slice(t, t + size)
            yt, past = ssd_window_scan(
                x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], window, chunk, past, -0.01, 2
            )
            pieces.append(yt)
        t += size
    torch.testing.assert_close(torch.cat(pieces, 1), y_ref, atol=1e-5, rtol=1e-5)
    assert past.xdt.shape[1] == window and past.B.shape[2] == 2


def test_segsum():
    a = torch.tensor([1.0, 2.0, 3.0])
    s = segsum(a)
    assert s[2, 0] == 5.0 and s[1, 1] == 0.0 and s[0, 1] == -torch.inf


def hf_model(tie=False, ngroups=2, seed=0, vocab_size=50):
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=4,
        head_dim=16,
        state_size=8,
        n_groups=ngroups,
        expand=2,
        chunk_size=16,
        tie_word_embeddings=tie,
    )
    m = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():  # move away from the symmetric init so every weight matters
        for prm in m.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    return m


@pytest.mark.parametrize("tie, ngroups", [(False, 2), (True, 1)])
def test_loads_transformers_checkpoint_with_same_logits(tmp_path, tie, ngroups):
    ref = hf_model(tie, ngroups)
    ref.save_pretrained(tmp_path)
    ours = Mamba2ForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 45))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_recurrent_decoding_and_chunked_continuation_match_full_forward(tmp_path):
    hf_model().save_pretrained(tmp_path)
    m = Mamba2ForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        full = m(ids).logits
        out = m(ids[:, :25], use_cache=True)
        steps = [out.logits]
        for t in range(25, 40):
            out = m(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
        a = m(ids[:, :9], use_cache=True)
        b = m(ids[:, 9:], cache=a.cache, use_cache=True)
        torch.testing.assert_close(b.logits, full[:, 9:], atol=1e-4, rtol=1e-4)
        assert b.cache.get_seq_length() == 40
        # the state does not grow with the sequence
        st = b.cache.layers[0]
        assert st.conv_states.shape == (2, m.config.conv_dim, 3)
        assert st.recurrent_states.shape == (2, 4, 16, 8)


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=40, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)
    )
    ours.save_pretrained(tmp_path, extra={"note": "x"})
    ref = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 40, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "config.json").read_text())["longseq"] == {"note": "x"}


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    hf_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing keys \['backbone.layers.2"):
        Mamba2ForCausalLM.from_pretrained(tmp_path)
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type"):
        Mamba2ForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Mamba2ForCausalLM.from_pretrained(tmp_path / "nope")


def test_power_smc_runs_on_our_mamba2():
    torch.manual_seed(0)
    m = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=30, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)
    ).eval()
    out = power_smc(
        m,
        torch.tensor([3, 4, 5]),
        alpha=2.0,
        n_particles=8,
        max_new_tokens=10,
        block_size=2,
        kappa=1.0,
    )
    assert out.n_resamples > 0
    ref = sequence_logprob(m, out.sequences, 3)
    torch.testing.assert_close(out.seq_logprobs, ref, atol=1e-4, rtol=1e-4)
