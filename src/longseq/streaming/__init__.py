"""StreamingT2V: long, consistent text-to-video by autoregressive chunks with short-term
(CAM) and long-term (APM) memory, and an enhancer with randomized blending."""

from longseq.streaming.critic import CaptionCritic, ClipScorer
from longseq.streaming.denoiser import (
    Denoiser,
    ImageToVideoDenoiser,
    as_denoiser,
    join_chunks,
    randomized_blending,
)
from longseq.streaming.memory import APM, CAM, StreamingUNet, attach_memory, load_memory
from longseq.streaming.pipeline import (
    BLENDINGS,
    StreamingOutput,
    StreamingT2VPipeline,
    chunk_starts,
)
from longseq.streaming.text import TextEncoder

__all__ = [
    "APM",
    "BLENDINGS",
    "CAM",
    "CaptionCritic",
    "ClipScorer",
    "StreamingUNet",
    "attach_memory",
    "load_memory",
    "Denoiser",
    "ImageToVideoDenoiser",
    "as_denoiser",
    "join_chunks",
    "randomized_blending",
    "StreamingOutput",
    "StreamingT2VPipeline",
    "TextEncoder",
    "chunk_starts",
]
