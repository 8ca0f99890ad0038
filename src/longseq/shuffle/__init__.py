"""ShuffleMamba: stochastic layer-wise token shuffle for deep Vision Mamba training.

```python
from longseq.shuffle import shuffle_probabilities, LayerwiseShuffle, DropPath, patch
```
"""

from longseq.models.shuffle import (
    SCHEDULES,
    DropPath,
    LayerwiseShuffle,
    drop_path_rates,
    patch,
    shuffle_probabilities,
)

__all__ = [
    "SCHEDULES",
    "DropPath",
    "LayerwiseShuffle",
    "drop_path_rates",
    "patch",
    "shuffle_probabilities",
]
