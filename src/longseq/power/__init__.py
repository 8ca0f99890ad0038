"""Power-SMC: sequence-level power sampling p(y | x)^alpha for any causal LM.

```python
from longseq.power import power_smc
out = power_smc(model, input_ids, alpha=4.0, n_particles=16, max_new_tokens=256)
out = power_smc(model, [ids_a, ids_b], ...)  # a batch of prompts of any lengths

import longseq.power
seqs = model.generate(**enc, custom_generate=longseq.power.generate, alpha=4.0)

from longseq.power import SamplerConfig, evaluate, load_problems
summary = evaluate(model, tokenizer, load_problems("problems.jsonl"), SamplerConfig("smc"))
```
"""

from longseq.power import exact
from longseq.power.baselines import MHOutput, SampleOutput, best_of_n, mh_power_sample, sample
from longseq.power.decoding import generate
from longseq.power.evaluation import EvalSummary, SamplerConfig, evaluate
from longseq.power.graders import MissingExtra
from longseq.power.problems import Problem, build_prompt, load_problems
from longseq.power.smc import (
    ContextClampWarning,
    PowerSMCOutput,
    alpha_schedule,
    power_smc,
    systematic_resample,
)

__all__ = [
    "ContextClampWarning",
    "EvalSummary",
    "MHOutput",
    "MissingExtra",
    "PowerSMCOutput",
    "Problem",
    "SampleOutput",
    "SamplerConfig",
    "alpha_schedule",
    "best_of_n",
    "build_prompt",
    "evaluate",
    "exact",
    "generate",
    "load_problems",
    "mh_power_sample",
    "power_smc",
    "sample",
    "systematic_resample",
]
