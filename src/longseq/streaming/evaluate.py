"""All the metrics of one generated video, as the benchmark and the CLI report them."""

from __future__ import annotations

from typing import Any

import numpy as np

from longseq.media import resize_video
from longseq.streaming.metrics import mawe, scene_cuts, seam_flow_std, text_alignment


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
    big = resize_video(frames, (flow_size, flow_size))
    out: dict[str, float] = dict(mawe(big))
    out["scuts"] = float(scene_cuts(big))
    if frame_encoder is not None:
        out["text_alignment"] = text_alignment(frames, caption, frame_encoder)
    if seams:
        out["seam_flow_std"] = seam_flow_std(big, seams)
    return out
