from pathlib import Path

import pytest
import torch

from longseq.power import exact

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, so a command's default output folder
    (collapse-diagnose/, kltrace-flow/, ...) never lands in the repository."""
    monkeypatch.chdir(tmp_path)


def _top_level() -> set[str]:
    """The entries at the top of the repository (where a command run from it writes its
    default output: collapse-diagnose/, kltrace-flow/, power-eval/, ...)."""
    return {p.name for p in REPO.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="session", autouse=True)
def _repository_unchanged():
    """The test suite writes only under pytest's temporary folders: nothing appears at the
    top of the repository (checked once, after the last test)."""
    before = _top_level()
    yield
    new = sorted(_top_level() - before)
    assert not new, f"the tests left files in the repository: {new}"


EOS = 0
PROMPT = torch.tensor([1, 3])


def tiny_gpt(seed: int = 4, scale: float = 6.0, vocab: int = 4):
    return exact.toy_model(seed, scale, vocab)


@pytest.fixture(scope="session")
def tiny():
    return tiny_gpt()


@pytest.fixture(scope="session")
def tiny_enum(tiny):
    return exact.enumerate_sequences(tiny, PROMPT, 4, eos_token_id=EOS)


def hf_models():
    """Randomly initialised transformers models (no download)."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=40,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    mamba = transformers.Mamba2ForCausalLM(
        transformers.Mamba2Config(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_heads=4,
            head_dim=16,
            state_size=8,
            n_groups=1,
            expand=2,
        )
    ).eval()
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ).eval()
    return {"llama": llama, "mamba2": mamba, "gpt2": gpt2}
