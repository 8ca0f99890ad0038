"""Power-SMC: sequence-level power sampling p(y | x)^alpha for any causal LM.

from longseq.power import power_smc
out = power_smc(model, input_ids, alpha=4.0, n_particles=16, max_new_tokens=256)
"""

from longseq.power import exact
from longseq.power.baselines import MHOutput, SampleOutput, best_of_n, mh_power_sample, sample
from longseq.power.smc import PowerSMCOutput, alpha_schedule, power_smc, systematic_resample

__all__ = [
    "MHOutput",
    "PowerSMCOutput",
    "SampleOutput",
    "alpha_schedule",
    "best_of_n",
    "exact",
    "mh_power_sample",
    "power_smc",
    "sample",
    "systematic_resample",
]
