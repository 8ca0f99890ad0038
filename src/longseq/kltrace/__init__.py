"""KL-tracing: zero-shot optical flow from an autoregressive frame-pair model."""

from longseq.flow import FLOW_METHODS, dis_flow, farneback_flow, track_with_flow
from longseq.kltrace.evaluate import (
    METHODS,
    calibrate,
    code_accuracy,
    evaluate_methods,
    synthetic_set,
)
from longseq.kltrace.metrics import load_tapvid, sample_queries_first, tapvid_metrics
from longseq.kltrace.tracing import (
    DEFAULT_MODEL,
    FramePairModel,
    TraceConfig,
    TraceResult,
    calibrate_threshold,
    check_model,
    gaussian_bump,
    load_tracer,
    trace_points,
    track_video,
)

__all__ = [
    "DEFAULT_MODEL",
    "FLOW_METHODS",
    "FramePairModel",
    "METHODS",
    "TraceConfig",
    "TraceResult",
    "calibrate",
    "calibrate_threshold",
    "check_model",
    "code_accuracy",
    "dis_flow",
    "evaluate_methods",
    "farneback_flow",
    "gaussian_bump",
    "load_tapvid",
    "load_tracer",
    "sample_queries_first",
    "synthetic_set",
    "tapvid_metrics",
    "trace_points",
    "track_video",
    "track_with_flow",
]
