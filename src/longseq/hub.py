"""Checkpoint registry and I/O: safetensors weights + a JSON config.

A checkpoint is a directory holding ``model.safetensors`` and ``config.json``.
The checkpoints shipped with the package are listed, with the sha256 of their
weights, in ``checkpoints/registry.json`` and are loaded by name::

    model, info = longseq.hub.load("power-arith-gpt")

``load`` also takes a path to any directory written by :func:`save_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from longseq.utils import save_safetensors

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
REGISTRY_FILE = CHECKPOINT_DIR / "registry.json"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not match its config."""


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _architectures() -> dict[str, Any]:
    from longseq.models.attribute_cnn import AttributeCNN, AttributeCNNConfig
    from longseq.models.frame_encoder import FrameEncoder, FrameEncoderConfig
    from longseq.models.gpt import GPT, GPTConfig
    from longseq.models.lras import LRAS, LRASConfig
    from longseq.models.match_mixture import MatchMixture, MatchMixtureConfig
    from longseq.models.video_unet import VideoUNet, VideoUNetConfig
    from longseq.models.vim import Vim, VimConfig
    from longseq.models.vit import ViT, ViTConfig

    return {
        "attribute_cnn": (AttributeCNN, AttributeCNNConfig),
        "frame_encoder": (FrameEncoder, FrameEncoderConfig),
        "gpt": (GPT, GPTConfig),
        "lras": (LRAS, LRASConfig),
        "match_mixture": (MatchMixture, MatchMixtureConfig),
        "video_unet": (VideoUNet, VideoUNetConfig),
        "vim": (Vim, VimConfig),
        "vit": (ViT, ViTConfig),
    }


def registry() -> dict[str, dict[str, Any]]:
    """Name -> entry (``path`` relative to the checkpoint folder, ``sha256``, ``description``)."""
    if not REGISTRY_FILE.exists():
        return {}
    return json.loads(REGISTRY_FILE.read_text())


def format_size(n_bytes: int) -> str:
    """A file size in decimal megabytes, rounded to 0.1 MB (kB below 0.1 MB)."""
    if n_bytes < 50_000:
        return f"{n_bytes / 1e3:.0f} kB"
    return f"{n_bytes / 1e6:.1f} MB"


def weights_file(name: str) -> Path:
    """The weights file of a shipped checkpoint."""
    reg = registry()
    if name not in reg:
        raise CheckpointError(f"{name!r} is not a shipped checkpoint (known: {', '.join(reg)})")
    return CHECKPOINT_DIR / reg[name]["path"] / WEIGHTS


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_pretrained(
    model: torch.nn.Module,
    path: str | Path,
    arch: str,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` to ``path`` (created). ``extra`` is stored in the JSON beside the
    model config: tokenizer, training script and arguments, data seed, metrics.
    ``half`` stores floating-point weights as float16 (loading casts them back)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # tied weights are stored once
    lm_head, wte = getattr(model, "lm_head", None), getattr(model, "wte", None)
    if lm_head is not None and wte is not None and lm_head.weight is wte.weight:
        state.pop("lm_head.weight")
    save_safetensors(state, path / WEIGHTS)
    cfg = {"architecture": arch, "model": model.config.to_dict(), **(extra or {})}
    (path / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def resolve(name_or_path: str | Path) -> tuple[str, Path, str | None]:
    """(name, directory, expected sha256 or None) for a registry name or a directory."""
    reg = registry()
    if isinstance(name_or_path, str) and name_or_path in reg:
        entry = reg[name_or_path]
        return name_or_path, CHECKPOINT_DIR / entry["path"], entry["sha256"]
    path = Path(name_or_path)
    if path.is_dir():
        return path.name, path, None
    known = ", ".join(sorted(reg)) or "none"
    raise CheckpointError(
        f"{str(name_or_path)!r} is neither a shipped checkpoint (known: {known}) "
        "nor a directory with model.safetensors and config.json"
    )


def load(
    name_or_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Load a shipped checkpoint by name, or a checkpoint directory, in eval mode."""
    from longseq.models.mamba2 import Mamba2ForCausalLM, checkpoint_layout

    name, path, sha = resolve(name_or_path)
    wfile, cfile = path / WEIGHTS, path / CONFIG
    for f in (cfile,) if sha is None else (wfile, cfile):
        if not f.exists():
            raise CheckpointError(f"checkpoint {name!r}: file {f} is missing")
    if sha is not None and sha256_file(wfile) != sha:
        raise CheckpointError(
            f"checkpoint {name!r}: {wfile} is corrupted (sha256 does not match the registry)"
        )
    try:
        cfg = json.loads(cfile.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {name!r}: {cfile} is not valid JSON ({e})") from e
    if checkpoint_layout(cfg):  # transformers or mamba_ssm layout, loaded into our Mamba-2
        try:
            model = Mamba2ForCausalLM.from_pretrained(path, device)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {name!r}: {e}") from e
        return model, CheckpointInfo(name, path, cfg, cfg.get("longseq", {}))
    archs = _architectures()
    arch = cfg.get("architecture")
    if arch not in archs:
        raise CheckpointError(
            f"checkpoint {name!r}: unknown architecture {arch!r} (known: {sorted(archs)})"
        )
    model_cls, cfg_cls = archs[arch]
    if not wfile.exists():
        raise CheckpointError(f"checkpoint {name!r}: file {wfile} is missing")
    model = model_cls(cfg_cls.from_dict(cfg["model"]))
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {name!r}: cannot read {wfile} ({e})") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte.weight
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {name!r}: weights do not match the config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    extra = {k: v for k, v in cfg.items() if k not in ("architecture", "model")}
    return model.to(device).eval(), CheckpointInfo(name, path, cfg, extra)


def register(name: str, path: Path, description: str) -> None:
    """Add or update a shipped checkpoint in the registry (used by training scripts)."""
    path = Path(path).resolve()
    try:
        rel = path.relative_to(CHECKPOINT_DIR.resolve())
    except ValueError as e:
        raise CheckpointError(f"{path} is not inside {CHECKPOINT_DIR}") from e
    reg = registry()
    reg[name] = {
        "path": str(rel),
        "sha256": sha256_file(path / WEIGHTS),
        "description": description,
    }
    REGISTRY_FILE.write_text(json.dumps(reg, indent=2, sort_keys=True) + "\n")


class TextCodec:
    """Text <-> token ids for a loaded model: ours (character vocabulary stored in the
    checkpoint) or a `transformers` tokenizer."""

    def __init__(self, tokenizer, add_bos: bool) -> None:
        self.tokenizer, self.add_bos = tokenizer, add_bos
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)

    def encode(self, text: str) -> list[int]:
        if hasattr(self.tokenizer, "stoi"):  # CharTokenizer
            return self.tokenizer.encode(text, bos=self.add_bos)
        return list(self.tokenizer.encode(text))

    def encode_plain(self, text: str) -> list[int]:
        """The tokens of ``text`` alone, without BOS or other special tokens (pieces of a
        longer document)."""
        if hasattr(self.tokenizer, "stoi"):
            return self.tokenizer.encode(text, bos=False)
        if hasattr(self.tokenizer, "all_special_ids"):  # a transformers tokenizer
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text))

    @property
    def byte_level(self) -> bool:
        """Whether the tokens are the UTF-8 bytes of the text."""
        from longseq.data.text import ByteTokenizer

        return isinstance(self.tokenizer, ByteTokenizer)

    def decode(self, ids) -> str:
        if hasattr(self.tokenizer, "all_special_ids"):  # a transformers tokenizer
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids)  # CharTokenizer, ByteTokenizer


def _codec(info: CheckpointInfo) -> TextCodec:
    from longseq.data.arith import CharTokenizer
    from longseq.data.text import ByteTokenizer

    tok_cfg = info.extra.get("tokenizer", {})
    if tok_cfg.get("type") == "char":
        return TextCodec(CharTokenizer(tok_cfg["chars"]), add_bos=True)
    if tok_cfg.get("type") == "byte":
        return TextCodec(ByteTokenizer(), add_bos=False)
    raise CheckpointError(f"checkpoint {info.name!r} records no tokenizer")


def load_mamba2(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    tokenizer: str | Path | None = None,
) -> tuple[torch.nn.Module, TextCodec | None, dict[str, Any]]:
    """Our Mamba-2 (so the collapse toolkit can change it) from a shipped name or a
    Mamba-2 folder in the `transformers` or the original ``mamba_ssm`` layout (told apart
    by config.json), with the codec of its tokenizer and the ``"longseq"`` entry of its
    config (``train_length``, ...).

    The codec reads bytes when the config says the model is byte-level
    (``"longseq": {"tokenizer": {"type": "byte"}}``, the shipped models); otherwise it is
    the tokenizer in ``tokenizer`` (a folder) or in the model's folder, and None when
    neither holds tokenizer files (token-level tools still work)."""
    from longseq.models.mamba2 import checkpoint_layout

    _, path, _ = resolve(name_or_path)
    cfile = path / CONFIG
    if not cfile.exists():
        raise CheckpointError(f"{path} has no config.json")
    try:
        raw = json.loads(cfile.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfile} is not valid JSON ({e})") from e
    if checkpoint_layout(raw) is None:
        kind = raw.get("model_type") or raw.get("architecture")
        raise CheckpointError(
            f"{path} is not a Mamba-2 checkpoint: config.json has neither model_type 'mamba2' "
            f"(transformers layout) nor d_model, n_layer and ssm_cfg (mamba_ssm layout)"
            + (f"; it describes {kind!r}" if kind else "")
        )
    model, info = load(name_or_path, device)
    if tokenizer is None and info.extra.get("tokenizer"):
        return model, _codec(info), info.extra
    tok = folder_tokenizer(Path(tokenizer) if tokenizer is not None else path)
    if tok is None and tokenizer is not None:
        raise CheckpointError(
            f"the tokenizer folder {tokenizer} holds no tokenizer files (none of "
            f"{', '.join(TOKENIZER_FILES)})"
        )
    return model, (TextCodec(tok, add_bos=False) if tok is not None else None), info.extra


def folder_tokenizer(path: Path):
    """The `transformers` tokenizer saved in ``path``, or None when the folder holds no
    tokenizer files; a folder whose files do not load is an error."""
    if not path.is_dir() or not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError as e:
        raise CheckpointError(f"{path} holds a tokenizer; install transformers to read it") from e
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        if (path / "tokenizer.json").is_file():  # e.g. beside a mamba_ssm config
            return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        raise CheckpointError(f"cannot load the tokenizer in {path}: {e}") from e


#: files one of which a `transformers` model folder holds when it ships its tokenizer
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@contextmanager
def quiet_transformers():
    """Silence `transformers`' warnings and its weight-loading progress bars."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_causal_lm(
    name_or_path: str | Path, device: str | torch.device = "cpu", tokenizer: bool = True
) -> tuple[torch.nn.Module, TextCodec | None, dict[str, Any]]:
    """(model, codec, extra) for a shipped checkpoint, one of our checkpoint directories,
    or a `transformers` causal-LM directory (config.json + weights + tokenizer files).

    With ``tokenizer=False`` a `transformers` model is loaded alone and the codec is None
    (token ids in, token ids out); otherwise a folder without tokenizer files is an error
    that says so."""
    path = Path(name_or_path)
    ours = str(name_or_path) in registry()
    if not ours and path.is_dir() and (path / CONFIG).exists():
        try:
            c = json.loads((path / CONFIG).read_text())
            ours = "architecture" in c or "longseq" in c
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / CONFIG} is not valid JSON ({e})") from e
    if ours:
        model, info = load(name_or_path, device)
        return model, _codec(info), info.extra
    if not path.is_dir():
        resolve(name_or_path)  # raises with the list of known names
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise CheckpointError(
            f"{path} looks like a transformers model; install transformers>=5 to load it"
        ) from e
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy "
            "them from where the model came from, or load the model alone with "
            "hub.load_causal_lm(path, tokenizer=False)"
        )
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True) if tokenizer else None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load a transformers causal LM from {path}: {e}") from e
    codec = TextCodec(tok, add_bos=False) if tok is not None else None
    return model.to(device).eval(), codec, {}
