"""Fixtures shared by the Power-SMC tests."""

import pytest
import torch

from longseq import hub


@pytest.fixture
def one_thread():
    """Tiny models decode many small batches: on a busy machine torch's threads cost far
    more than they bring (seconds instead of tenths of a second). Used by the modules that
    decode many batches, through ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def arith_model():
    """The shipped arithmetic GPT and its codec (loaded once per test module)."""
    model, codec, _ = hub.load_causal_lm("power-arith-gpt")
    return model, codec
