"""The classical flow baselines, now in :mod:`longseq.flow`; re-exported here for imports
written against the earlier location."""

from longseq.flow import (
    DIS_PRESETS,
    FARNEBACK_PARAMS,
    FLOW_METHODS,
    FlowFn,
    bilinear_sample,
    dis_flow,
    farneback_flow,
    track_with_flow,
)

__all__ = [
    "DIS_PRESETS",
    "FARNEBACK_PARAMS",
    "FLOW_METHODS",
    "FlowFn",
    "bilinear_sample",
    "dis_flow",
    "farneback_flow",
    "track_with_flow",
]
