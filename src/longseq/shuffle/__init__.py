"""ShuffleMamba: stochastic layer-wise token shuffle for deep Vision Mamba training.

from longseq.shuffle import shuffle_probabilities, LayerwiseShuffle
"""

from longseq.models.shuffle import SCHEDULES, LayerwiseShuffle, shuffle_probabilities

__all__ = ["SCHEDULES", "LayerwiseShuffle", "shuffle_probabilities"]
