"""Power-SMC as a `transformers` decoding strategy.

    out = model.generate(**enc, custom_generate=longseq.power.generate,
                         alpha=4.0, n_particles=16, max_new_tokens=256)

`transformers` 5 calls a callable ``custom_generate`` in place of its own decoding
loop, after it has prepared the inputs and the generation config: as
``generate(model, input_ids, logits_processor=..., stopping_criteria=...,
generation_config=..., **custom_arguments, **model_kwargs)``, where the custom
arguments are the keyword arguments of ``model.generate`` that this function names
and `transformers`' sampling loop does not (``alpha``, ``n_particles``, ...). It returns
what ``generate`` returns: the input ids followed by the new tokens, one row per input
row, padded with the pad token after EOS.
"""

from __future__ import annotations

import torch

from longseq.power.smc import power_smc


def _new_tokens(generation_config, prompt_len: int) -> int:
    n = getattr(generation_config, "max_new_tokens", None)
    if n is None:
        n = generation_config.max_length - prompt_len
    if n < 1:
        raise ValueError(
            f"no room for new tokens: max_length={generation_config.max_length} and the "
            f"prompts are {prompt_len} tokens long; set max_new_tokens"
        )
    return int(n)


def _min_new_tokens(generation_config, prompt_len: int) -> int:
    n = getattr(generation_config, "min_new_tokens", None)
    if n is None:
        n = max(0, (getattr(generation_config, "min_length", 0) or 0) - prompt_len)
    return int(n)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    logits_processor=None,
    stopping_criteria=None,
    generation_config=None,
    synced_gpus: bool = False,
    streamer=None,
    alpha: float = 4.0,
    n_particles: int = 16,
    kappa: float = 0.5,
    block_size: int = 64,
    ramp_tokens: int = 0,
    n_rounds: int = 1,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    **model_kwargs,
):
    """Power-SMC for ``model.generate(..., custom_generate=longseq.power.generate)``.

    One sample of p(y | x)^alpha per input row (rows repeated by
    ``num_return_sequences`` are independent samples: row i uses ``seed + i``). From the
    generation config: ``max_new_tokens`` (or ``max_length``), ``min_new_tokens`` (or
    ``min_length``), ``eos_token_id`` (a list ends a particle at any of them) and
    ``pad_token_id``; its temperature, ``top_k``, ``top_p`` and logits processors are
    not used, since Power-SMC's target is p^alpha itself (pass ``top_k``/``top_p`` to
    ``generate`` to restrict every token's support). ``attention_mask`` marks padding
    (left or right). Returns ``(batch, prompt_len + new_len)`` token ids, or a
    ``GenerateDecoderOnlyOutput`` with ``sequences`` when the config asks for a dict.
    Power-SMC's own arguments are those of :func:`longseq.power.power_smc`.
    """
    if generation_config is None:
        generation_config = model.generation_config
    if getattr(generation_config, "stop_strings", None):
        raise ValueError(
            "stop_strings are not supported through generate(custom_generate=...); "
            "use longseq.power.power_smc(..., stop_strings=..., tokenizer=...)"
        )
    if streamer is not None:
        raise ValueError("Power-SMC picks its sample at the end; it cannot stream tokens")
    prompt_len = input_ids.shape[1]
    eos = generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = generation_config.pad_token_id
    if isinstance(pad, list | tuple):
        pad = pad[0] if pad else None
    if pad is None:
        pad = eos[0] if eos else 0
    mask = model_kwargs.get("attention_mask")
    out = power_smc(
        model,
        input_ids,
        alpha=alpha,
        n_particles=n_particles,
        max_new_tokens=_new_tokens(generation_config, prompt_len),
        eos_token_id=eos or None,
        kappa=kappa,
        block_size=block_size,
        ramp_tokens=ramp_tokens,
        seed=seed,
        n_rounds=n_rounds,
        pad_token_id=pad,
        attention_mask=mask,
        min_new_tokens=_min_new_tokens(generation_config, prompt_len),
        top_k=top_k,
        top_p=top_p,
    )
    sample = out.sample if out.sample.dim() == 2 else out.sample[None]
    new = sample[:, out.prompt_len :].to(input_ids.device)
    sequences = torch.cat([input_ids, new], dim=1)
    if getattr(generation_config, "return_dict_in_generate", False):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
