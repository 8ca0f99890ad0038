"""The collapse benchmarks' numbers are what their names say."""

import pytest
import torch
from benchmarks.collapse_state_sizes import read_model

from longseq.collapse import SSMControl, apply_mitigation, clear_mitigations, long_text
from longseq.models.mamba2 import Mamba2Config, Mamba2ForCausalLM


@torch.no_grad()
def nll(model, ids):
    lp = model(ids[None]).logits[0, :-1].float().log_softmax(-1)
    return -lp.gather(-1, ids[1:, None])[:, 0]


def test_state_size_rows_hold_the_last_three_quarters():
    torch.manual_seed(0)
    m = Mamba2ForCausalLM(
        Mamba2Config(vocab_size=256, d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=16)
    ).eval()
    t, n = 8, 512
    row = read_model(m, t, n)
    assert not any("quarter" in k and "three_quarters" not in k for k in row)
    for prompt in ("newline", "text"):
        ids = long_text(n, prompt)
        plain = nll(m, ids)
        assert row[f"{prompt}_in_training"] == pytest.approx(plain[:t].mean().item(), abs=1e-4)
        assert row[f"{prompt}_last_three_quarters"] == pytest.approx(
            plain[n // 4 :].mean().item(), abs=1e-4
        )
        apply_mitigation(m, SSMControl(window=t))
        assert row[f"{prompt}_last_three_quarters_window"] == pytest.approx(
            nll(m, ids)[n // 4 :].mean().item(), abs=1e-4
        )
        clear_mitigations(m)
