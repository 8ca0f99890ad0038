"""All the metrics of one generated video, as the benchmark and the CLI report them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longseq.streaming.metrics import mawe, scene_cuts, seam_flow_std, text_alignment


def resize_video(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8, bilinear."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def video_metrics(
    frames: np.ndarray,
    caption: str,
    frame_encoder: Any = None,
    seams: list[int] | None = None,
    flow_size: int = 64,
) -> dict[str, float]:
    """MAWE (with its warp error and mean flow magnitude), SCuts, text alignment (with a
    frame encoder) and the flow-magnitude std at ``seams``. Flow-based metrics run on the
    video resized to ``flow_size`` pixels, so videos of different resolutions compare."""
    big = resize_video(frames, flow_size)
    out: dict[str, float] = dict(mawe(big))
    out["scuts"] = float(scene_cuts(big))
    if frame_encoder is not None:
        out["text_alignment"] = text_alignment(frames, caption, frame_encoder)
    if seams:
        out["seam_flow_std"] = seam_flow_std(big, seams)
    return out
