"""Choosing the first chunk among candidates: a scorer reads each candidate and the
pipeline keeps the best (:meth:`StreamingT2VPipeline.stream`, ``first_chunk_candidates``).

A scorer is any callable ``scorer(candidates, prompt) -> scores``: ``candidates`` are K
first chunks as (K, F, H, W, 3) uint8 frames, the result K numbers, higher is better. For
a real text-to-video model the natural one is CLIP's (:class:`ClipScorer`); for the video world
the package ships :class:`CaptionCritic`, a small network of its own (not the fidelity
classifier that the benchmark reads with) that names the shape and speed it sees in two
frames ``CRITIC_GAP`` apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from longseq.data import videoworld as vw

CRITIC_GAP = 3  # the critic reads frame t stacked with frame t + CRITIC_GAP
CRITIC = dict(  # reads shape and speed from two 16 px frames CRITIC_GAP apart
    size=16,
    in_channels=6,
    channels=[32, 64, 64],
    dim=64,
    attributes={"shape": list(vw.SHAPES), "speed": list(vw.SPEEDS)},
)


def critic_pairs(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, T - CRITIC_GAP, 6, H, W): each frame stacked with the frame
    ``CRITIC_GAP`` later, the critic's input."""
    return torch.cat([video[:, :, :-CRITIC_GAP], video[:, :, CRITIC_GAP:]], 1).transpose(1, 2)


def standardise(x: torch.Tensor, contrast: bool = False) -> torch.Tensor:
    """Each image channel (..., H, W) to zero mean and unit variance: what the critic
    reads, so that its reading is the same for any frame-wide shift or scale of a colour.
    With ``contrast`` only the mean is removed: a frame-wide shift still changes nothing,
    but a fainter object reads fainter."""
    mean = x.mean((-2, -1), keepdim=True)
    if contrast:
        return x - mean
    return (x - mean) / (x - mean).pow(2).mean((-2, -1), keepdim=True).add(1e-4).sqrt()


class CaptionCritic:
    """Scores first-chunk candidates by how surely the critic sees the caption's shape:
    the mean, over the chunk's frame pairs, of the critic's probability of that shape.
    A prompt that names none of the world's shapes scores every candidate 0.

    ``critic`` is a :class:`~longseq.models.frame_encoder.FrameEncoder` reading two frames
    stacked (6 channels) with a ``shape`` head over the world's shapes, as
    ``scripts/train_streaming.py --stage critic`` trains it (``streaming-critic``);
    ``contrast`` as it was trained (:func:`standardise`)."""

    def __init__(self, critic: Any, contrast: bool = False) -> None:
        shapes = getattr(getattr(critic, "config", None), "attributes", {}).get("shape")
        if not shapes or critic.config.in_channels != 6:
            raise ValueError(
                "the critic must read two stacked frames (in_channels 6) and have a 'shape' head"
            )
        self.critic, self.shapes, self.contrast = critic.eval(), list(shapes), contrast

    @classmethod
    def from_pretrained(
        cls, name: str | Path = "streaming-critic", device: str | torch.device = "cpu"
    ) -> CaptionCritic:
        from longseq import hub

        critic, info = hub.load(name, device)
        reads = info.extra.get("critic")
        if info.config.get("architecture") != "frame_encoder" or reads is None:
            raise ValueError(f"{name!r} is not a frame-pair critic")
        if reads.get("gap") != CRITIC_GAP:
            raise ValueError(f"{name!r} reads frames {reads.get('gap')} apart, not {CRITIC_GAP}")
        return cls(critic, bool(reads.get("contrast", False)))

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray, prompt: str) -> np.ndarray:
        frames = np.asarray(candidates)
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.shape[1] <= CRITIC_GAP:
            raise ValueError(
                f"candidates must be (K, F, H, W, 3) frames with F > {CRITIC_GAP}, "
                f"got {frames.shape}"
            )
        shape = vw.parse_caption(prompt).get("shape")
        if shape not in self.shapes:  # nothing to choose by: every candidate scores 0,
            return np.zeros(len(frames))  # so the first (the plain sample) is kept
        p = next(self.critic.parameters())
        pairs = critic_pairs(vw.to_tensor(frames).to(p))  # (K, n, 6, H, W)
        logits = self.critic(standardise(pairs.flatten(0, 1), self.contrast))["shape"]
        prob = logits.softmax(-1)[:, self.shapes.index(shape)].view(pairs.shape[:2])
        return prob.mean(1).float().cpu().numpy()


def check_clip_folder(path: str | Path) -> Path:
    """``path`` as a folder that ``CLIPModel.save_pretrained`` wrote (its config.json), or
    a FileNotFoundError that says so."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a CLIP folder (config.json and the processor's files, as "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained write them)"
        )
    return folder


class ClipScorer:
    """Scores candidates with a CLIP model (``transformers``' ``CLIPModel`` and its
    processor): the mean, over a chunk's frames, of the cosine similarity between the
    frame's image embedding and the prompt's text embedding, the CLIP text-frame score the
    StreamingT2V paper reports. For text-to-video models of the real world, where the
    world's :class:`CaptionCritic` knows nothing."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model.eval(), processor

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
        """A CLIP folder as ``save_pretrained`` writes it (model and processor)."""
        from transformers import AutoProcessor, CLIPModel

        folder = check_clip_folder(path)
        model = CLIPModel.from_pretrained(folder).to(device)
        return cls(model, AutoProcessor.from_pretrained(folder))

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray, prompt: str) -> np.ndarray:
        frames = np.asarray(candidates)
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"candidates must be (K, F, H, W, 3) frames, got {frames.shape}")
        k, f = frames.shape[:2]
        inputs = self.processor(
            text=[prompt],
            images=list(frames.reshape(k * f, *frames.shape[2:])),
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        p = next(self.model.parameters())
        out = self.model(**{n: v.to(p.device) for n, v in inputs.items()})
        cos = (out.image_embeds @ out.text_embeds.T)[:, 0]  # both unit length
        return cos.view(k, f).mean(1).float().cpu().numpy()
