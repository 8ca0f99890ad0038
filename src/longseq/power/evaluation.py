"""Evaluate any sampler of :mod:`longseq.power` on reasoning problems.

    from longseq.power import SamplerConfig, evaluate, load_problems
    problems = load_problems("my_math500.jsonl")
    summary = evaluate(model, tokenizer, problems, SamplerConfig("smc", n_particles=16),
                       out="results/smc.jsonl")

One answer per problem. Results are written to a JSONL file as they come (a first
line with the run's settings, then one line per problem); a rerun with the same
settings skips the problems already there, so an interrupted evaluation resumes.
The summary has the accuracy with a 95% Wilson interval, the generated and decoded
tokens and the wall time per problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.table import Table

from longseq import lm
from longseq.power.baselines import best_of_n, mh_power_sample, sample
from longseq.power.graders import grade
from longseq.power.problems import Problem, build_prompt
from longseq.power.smc import ContextClampWarning, power_smc
from longseq.utils import progress_bar

METHODS = ("temp-1", "temp-alpha", "best-of-n", "mh", "smc")

#: the settings every method reads, and those each method reads besides
_COMMON = ("method", "max_new_tokens", "min_new_tokens", "top_k", "top_p", "stop_strings")
_COMMON += ("max_time", "seed")
_OWN = {
    "temp-1": (),
    "temp-alpha": ("alpha",),
    "best-of-n": ("n_particles",),
    "mh": ("alpha", "mh_blocks", "mh_steps"),
    "smc": ("alpha", "n_particles", "block_size", "ramp_tokens", "kappa"),
}


@dataclass
class SamplerConfig:
    """A sampler and its settings. Defaults are those of :func:`power_smc` and the
    paper (alpha 4, kappa 0.5, ESS checked every 64 tokens; MH: 16 blocks, 10 steps).

    ``method``: ``temp-1`` (temperature 1), ``temp-alpha`` (temperature 1/alpha),
    ``best-of-n`` (``n_particles`` samples, the likeliest kept), ``mh`` or ``smc``.
    """

    method: str = "smc"
    alpha: float = 4.0
    n_particles: int = 16
    max_new_tokens: int = 1024
    block_size: int = 64
    ramp_tokens: int = 0
    kappa: float = 0.5
    mh_blocks: int = 16
    mh_steps: int = 10
    min_new_tokens: int = 0
    top_k: int | None = None
    top_p: float | None = None
    stop_strings: list[str] = field(default_factory=list)
    max_time: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
        if not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa must be in [0, 1], got {self.kappa}")
        if self.max_time is not None and not (math.isfinite(self.max_time) and self.max_time > 0):
            raise ValueError(f"max_time must be a number of seconds > 0, got {self.max_time}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings holds an empty string (it would stop at once)")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) is more than max_new_tokens "
                f"({self.max_new_tokens})"
            )

    def settings(self) -> dict:
        """The settings this method reads (a results file records these, so a rerun that
        changes only another method's settings resumes it)."""
        used = (*_COMMON, *_OWN[self.method])
        return {k: v for k, v in asdict(self).items() if k in used}

    def describe(self) -> str:
        if self.method == "temp-1":
            return "T=1"
        if self.method == "temp-alpha":
            return f"T=1/{self.alpha:g}"
        if self.method == "best-of-n":
            return f"N={self.n_particles}"
        if self.method == "mh":
            return f"alpha={self.alpha:g} blocks={self.mh_blocks} K={self.mh_steps}"
        return (
            f"alpha={self.alpha:g} N={self.n_particles} block={self.block_size} "
            f"ramp={self.ramp_tokens}"
        )


@dataclass
class EvalSummary:
    method: str
    settings: str
    n: int
    correct: int
    accuracy: float
    ci_low: float  # 95% Wilson interval
    ci_high: float
    new_tokens: float  # mean generated tokens of the answer
    decoded_tokens: float  # mean tokens decoded per problem (all particles / proposals)
    seconds: float  # mean wall time per problem (sampling)
    cpu_seconds: float  # mean CPU time of this process per problem (robust to a busy machine)
    template: str  # chat or plain
    out: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models often
    end a turn with a token of their own)."""
    ids = []
    for src in (getattr(tokenizer, "eos_token_id", None), _gen_eos(model)):
        for e in src if isinstance(src, list | tuple) else [src]:
            if isinstance(e, int) and e not in ids:
                ids.append(e)
    return ids


def _gen_eos(model):
    cfg = getattr(model, "generation_config", None)
    return getattr(cfg, "eos_token_id", None)


def _decode(tokenizer, ids: list[int]) -> str:
    if hasattr(tokenizer, "batch_decode"):  # a transformers tokenizer
        return tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids)


def problem_seed(seed: int, problem_id: str) -> int:
    """Each problem's own random stream, fixed by the run's seed and the problem id (one
    seed for all problems would make every problem take the same first draws)."""
    digest = hashlib.sha256(f"{seed}/{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def run_sampler(
    model, ids: list[int], cfg: SamplerConfig, eos: list[int], tokenizer, seed: int
) -> dict:
    """One answer for one prompt: generated ids, decoded-token count, time, flags."""
    x = torch.tensor(ids, dtype=torch.long)
    kw = dict(
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos or None,
        seed=seed,
        min_new_tokens=cfg.min_new_tokens,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_strings=cfg.stop_strings or None,
        tokenizer=tokenizer if cfg.stop_strings else None,
        max_time=cfg.max_time,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg.method in ("temp-1", "temp-alpha"):
        temp = 1.0 if cfg.method == "temp-1" else 1.0 / cfg.alpha
        out = sample(model, x, n=1, temperature=temp, **kw)
        gen, length = out.sequences[0, len(ids) :], int(out.lengths[0])
        decoded = gen.numel()
    elif cfg.method == "best-of-n":
        out = best_of_n(model, x, n=cfg.n_particles, **kw)
        gen, length = out.sequences[len(ids) :], int(out.lengths)
        decoded = cfg.n_particles * gen.numel()
    elif cfg.method == "mh":
        out = mh_power_sample(
            model, x, alpha=cfg.alpha, n_blocks=cfg.mh_blocks, mh_steps=cfg.mh_steps, **kw
        )
        gen = out.sequence[len(ids) :]
        length, decoded = gen.numel(), out.tokens_decoded
    else:
        out = power_smc(
            model,
            x,
            alpha=cfg.alpha,
            n_particles=cfg.n_particles,
            block_size=cfg.block_size,
            ramp_tokens=cfg.ramp_tokens,
            kappa=cfg.kappa,
            **kw,
        )
        gen = out.sample[len(ids) :]
        length = int(out.lengths[out.sample_index])
        decoded = out.sequences.shape[0] * gen.numel()
    return {
        "tokens": gen[:length].tolist(),
        "new_tokens": length,
        "decoded_tokens": int(decoded),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "stopped_by_time": bool(getattr(out, "stopped_by_time", False)),
    }


def run_batch(
    model, prompts: list[list[int]], cfg: SamplerConfig, eos: list[int], tokenizer, seeds
) -> list[dict]:
    """:func:`run_sampler` for several prompts decoded as one batch (each with its own
    seed, so each answer is the one it gets alone); time is shared out evenly."""
    kw = dict(
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos or None,
        seed=list(seeds),
        min_new_tokens=cfg.min_new_tokens,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_strings=cfg.stop_strings or None,
        tokenizer=tokenizer if cfg.stop_strings else None,
        max_time=cfg.max_time,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []  # (generated ids, length, decoded tokens, stopped by time)
    if cfg.method == "mh":
        outs = mh_power_sample(
            model, prompts, alpha=cfg.alpha, n_blocks=cfg.mh_blocks, mh_steps=cfg.mh_steps, **kw
        )
        for ids, o in zip(prompts, outs, strict=True):
            gen = o.sequence[len(ids) :]
            rows.append((gen, gen.numel(), o.tokens_decoded, o.stopped_by_time))
    else:
        if cfg.method in ("temp-1", "temp-alpha"):
            temp = 1.0 if cfg.method == "temp-1" else 1.0 / cfg.alpha
            out = sample(model, prompts, n=1, temperature=temp, **kw)
            gens, lengths, n = out.sequences[:, 0], out.lengths[:, 0], 1
        elif cfg.method == "best-of-n":
            out = best_of_n(model, prompts, n=cfg.n_particles, **kw)
            gens, lengths, n = out.sequences, out.lengths, cfg.n_particles
        else:
            out = power_smc(
                model,
                prompts,
                alpha=cfg.alpha,
                n_particles=cfg.n_particles,
                block_size=cfg.block_size,
                ramp_tokens=cfg.ramp_tokens,
                kappa=cfg.kappa,
                **kw,
            )
            pick = out.sample_index
            gens, n = out.sample, cfg.n_particles
            lengths = out.lengths.gather(1, pick[:, None])[:, 0]
        for i in range(len(prompts)):
            steps = int(out.steps[i])
            rows.append(
                (gens[i, out.prompt_len :], int(lengths[i]), n * steps, out.stopped_by_time[i])
            )
    seconds = (time.perf_counter() - t0) / len(prompts)
    cpu = (time.process_time() - c0) / len(prompts)
    return [
        {
            "tokens": gen[:length].tolist(),
            "new_tokens": int(length),
            "decoded_tokens": int(decoded),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "stopped_by_time": bool(late),
        }
        for gen, length, decoded, late in rows
    ]


def _answers(model, tokenizer, todo, prompt, cfg, eos, batch_size, notes):
    """(problem, sampler result) for each problem, sampled ``batch_size`` at a time; a
    note is added when max_new_tokens did not fit the model's context."""
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        ids = [prompt(p) for p in chunk]
        seeds = [problem_seed(cfg.seed, p.id) for p in chunk]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContextClampWarning)
            if len(chunk) == 1:
                results = [run_sampler(model, ids[0], cfg, eos, tokenizer, seeds[0])]
            else:
                results = run_batch(model, ids, cfg, eos, tokenizer, seeds)
        for w in caught:
            if issubclass(w.category, ContextClampWarning):
                ctx = lm.context_length(model)
                notes.add(
                    f"max_new_tokens={cfg.max_new_tokens} was lowered to what the "
                    f"model's context ({ctx} tokens) leaves after each prompt"
                )
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        yield from zip(chunk, results, strict=True)


def _flat(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v) if isinstance(v, dict) else {k: v})
    return out


def _read_results(path: Path, run: dict) -> dict[str, dict]:
    """Finished records of an earlier run with the same settings (id -> record)."""
    if not path.exists() or path.stat().st_size == 0:
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0])["run"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a results file of this evaluation") from e
    if isinstance(head, dict) and isinstance(head.get("sampler"), dict):
        # files written before settings() recorded every method's settings
        used = run.get("sampler", {})
        head = {**head, "sampler": {k: v for k, v in head["sampler"].items() if k in used}}
    if head != run:
        a, b = _flat(head), _flat(run)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(
            f"{path} holds results of another run (it differs in {', '.join(diff)}); "
            "give another output file or delete it"
        )
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption: redo that problem
            continue
        done[rec["id"]] = rec
    return done


def evaluate(
    model,
    tokenizer,
    problems: list[Problem],
    sampler: SamplerConfig | None = None,
    out: str | Path | None = None,
    chat: bool | None = None,
    template: str | None = None,
    instruction: str | None = None,
    code_timeout: float = 10.0,
    progress: bool = True,
    run_info: dict | None = None,
    batch_size: int = 1,
) -> EvalSummary:
    """Sample one answer per problem with ``sampler`` and grade it.

    Args:
        model: causal LM (see :func:`power_smc`).
        tokenizer: a `transformers` tokenizer or :class:`longseq.hub.TextCodec`.
        problems: from :func:`longseq.power.load_problems`.
        sampler: the method and its settings (default: Power-SMC, alpha 4, N 16).
        out: JSONL results file, appended to as problems finish; a rerun with the same
            settings skips the problems it holds. None keeps results in memory only.
        chat: use the tokenizer's chat template (None: when it has one).
        template, instruction: prompt text (see :func:`longseq.power.build_prompt`).
        code_timeout: seconds per program for the code grader.
        run_info: extra settings recorded in the results file (model, data, ...).
        batch_size: problems decoded together as one batch. Each keeps its own seed,
            so the answers are those of ``batch_size=1`` (up to the rounding of a
            padded forward pass); the time of a batch is shared out evenly among its
            problems, and ``max_time`` applies to each batch.
    """
    cfg = sampler or SamplerConfig()
    if not problems:
        raise ValueError("no problems to evaluate")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    eos = eos_ids(model, tokenizer)
    use_chat = None if chat is None else bool(chat)
    _, _, mode = build_prompt(problems[0], tokenizer, use_chat, template, instruction)
    run = {
        "sampler": cfg.settings(),
        "template": mode,
        "template_text": template,
        "instruction": instruction,
        **(run_info or {}),
    }
    path = Path(out) if out is not None else None
    done: dict[str, dict] = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        done = _read_results(path, json.loads(json.dumps(run)))
        if not done:
            path.write_text(json.dumps({"run": run}) + "\n")
    records = [done[p.id] for p in problems if p.id in done]
    todo = [p for p in problems if p.id not in done]
    notes: set[str] = set()
    correct = sum(r["correct"] for r in records)
    with progress_bar(cfg.method, len(problems), enabled=progress) as advance:
        advance(len(records))
        prompt = lambda p: build_prompt(p, tokenizer, use_chat, template, instruction)[0]  # noqa: E731
        for p, res in _answers(model, tokenizer, todo, prompt, cfg, eos, batch_size, notes):
            completion = _decode(tokenizer, res.pop("tokens"))
            ok, pred = grade(p.kind, completion, p, code_timeout, chat=mode == "chat")
            rec = {
                "id": p.id,
                "kind": p.kind,
                "correct": bool(ok),
                "prediction": pred,
                "gold": p.answer if p.kind != "code" else "(tests)",
                "completion": completion,
                **res,
            }
            records.append(rec)
            correct += rec["correct"]
            if path is not None:
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
            advance(description=f"{cfg.method} ({correct}/{len(records)} right)")
    n = len(records)
    lo, hi = wilson_interval(correct, n)
    mean = lambda key: sum(r.get(key, 0.0) for r in records) / n  # noqa: E731
    return EvalSummary(
        method=cfg.method,
        settings=cfg.describe(),
        n=n,
        correct=correct,
        accuracy=correct / n,
        ci_low=lo,
        ci_high=hi,
        new_tokens=mean("new_tokens"),
        decoded_tokens=mean("decoded_tokens"),
        seconds=mean("seconds"),
        cpu_seconds=mean("cpu_seconds"),
        template=mode,
        out=str(path) if path is not None else None,
        notes=sorted(notes),
    )


def summary_table(summaries: list[EvalSummary], title: str = "evaluation") -> Table:
    """A rich table, one row per sampler; values fold rather than being cut."""
    table = Table(title=title)
    right = ("accuracy", "95% CI", "n", "tokens", "decoded", "s/problem", "CPU s")
    for col in ("method", "settings", *right):
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for s in summaries:
        table.add_row(
            s.method,
            s.settings,
            f"{100 * s.accuracy:.1f}%",
            f"{100 * s.ci_low:.0f}-{100 * s.ci_high:.0f}%",
            str(s.n),
            f"{s.new_tokens:.1f}",
            f"{s.decoded_tokens:.0f}",
            f"{s.seconds:.3f}",
            f"{s.cpu_seconds:.3f}",
        )
    return table
