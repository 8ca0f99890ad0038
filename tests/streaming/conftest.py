"""Tiny random diffusers text-to-video folders (TextToVideoSDPipeline layout), offline."""

import json
import shutil
from pathlib import Path

import pytest
import torch

TEXT_TOKENS, TEXT_DIM = 6, 32


def tiny_unet3d(channels: int, size: int):
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet3DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()


def tiny_vae():
    import diffusers

    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    ).eval()


def clip_tokenizer(max_length: int):
    """A CLIP tokenizer with a character vocabulary (no merges); its vocabulary size."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=max_length
    )
    return tok, len(vocab)


def clip_text_config(vocab_size: int, hidden_size: int, max_length: int) -> dict:
    """A one-layer CLIP text encoder's config arguments for :func:`clip_tokenizer`'s
    vocabulary (its last two tokens are start and end of text)."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def tiny_clip():
    """A CLIP text encoder and tokenizer with a character vocabulary (no merges)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok, n = clip_tokenizer(TEXT_TOKENS)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(**clip_text_config(n, TEXT_DIM, TEXT_TOKENS))
    return CLIPTextModel(cfg).eval(), tok


def write_folder(path: Path, latent: bool) -> Path:
    """unet/, text_encoder/, tokenizer/, scheduler/ (+ vae/ when latent), model_index.json."""
    import diffusers

    path.mkdir(parents=True)
    text, tok = tiny_clip()
    unet = tiny_unet3d(4, 4) if latent else tiny_unet3d(3, 8)
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False
    )
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    tok.save_pretrained(path / "tokenizer")
    sched.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "unet": ["diffusers", "UNet3DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if latent:
        tiny_vae().save_pretrained(path / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="session")
def t2v_folders(tmp_path_factory):
    """{'latent': folder with a VAE, 'pixel': folder without}; copy before changing."""
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("t2v")
    return {k: write_folder(root / k, k == "latent") for k in ("latent", "pixel")}


@pytest.fixture
def t2v_copy(t2v_folders, tmp_path):
    def copy(kind: str) -> Path:
        return Path(shutil.copytree(t2v_folders[kind], tmp_path / kind))

    return copy
