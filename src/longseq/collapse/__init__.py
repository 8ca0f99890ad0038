"""Stuffed Mamba: diagnose and fix Mamba-2 state collapse beyond the training length.

```python
from longseq.collapse import state_statistics, apply_mitigation, parse_mitigation
from longseq.collapse import passkey_accuracy, loss_curve, long_text, text_tokens
```

Every function that takes a model takes our Mamba-2 (``hub.load_mamba2``) or a
`transformers` ``Mamba2ForCausalLM``; every one that builds text takes the model's
``tokenizer`` (None: bytes).
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
    text_tokens,
)
from longseq.collapse.mitigations import (
    apply_mitigation,
    as_mamba2,
    clear_mitigations,
    parse_mitigation,
)
from longseq.collapse.streaming import greedy_continue, per_position_nll
from longseq.models.mamba2 import SSMControl

__all__ = [
    "LossCurve",
    "PasskeyResult",
    "SSMControl",
    "StateTrace",
    "apply_mitigation",
    "apply_named_mitigation",
    "as_mamba2",
    "clear_mitigations",
    "greedy_continue",
    "long_text",
    "loss_curve",
    "parse_mitigation",
    "passkey_accuracy",
    "passkey_calibration",
    "per_position_nll",
    "state_statistics",
    "text_tokens",
]
