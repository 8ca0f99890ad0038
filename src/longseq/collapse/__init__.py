"""Stuffed Mamba: diagnose and fix Mamba-2 state collapse beyond the training length.

```python
from longseq.collapse import state_statistics, apply_mitigation, parse_mitigation
from longseq.collapse import passkey_accuracy, loss_curve
```
"""

from longseq.collapse.diagnostics import StateTrace, state_statistics
from longseq.collapse.evaluate import (
    LossCurve,
    PasskeyResult,
    apply_named_mitigation,
    long_text,
    loss_curve,
    passkey_accuracy,
    passkey_calibration,
)
from longseq.collapse.mitigations import apply_mitigation, clear_mitigations, parse_mitigation
from longseq.collapse.streaming import greedy_continue, per_position_nll
from longseq.models.mamba2 import SSMControl

__all__ = [
    "LossCurve",
    "PasskeyResult",
    "SSMControl",
    "StateTrace",
    "apply_mitigation",
    "apply_named_mitigation",
    "clear_mitigations",
    "greedy_continue",
    "long_text",
    "loss_curve",
    "parse_mitigation",
    "passkey_accuracy",
    "passkey_calibration",
    "per_position_nll",
    "state_statistics",
]
