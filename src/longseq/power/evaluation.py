"""Evaluate any sampler of :mod:`longseq.power` on reasoning problems.

    from longseq.power import SamplerConfig, evaluate, load_problems
    problems = load_problems("my_math500.jsonl")
    summary = evaluate(model, tokenizer, problems, SamplerConfig("smc", n_particles=16),
                       out="results/smc.jsonl")

One answer per problem, or ``samples`` answers with pass@k and maj@k. Results are
written to a JSONL file as they come (a first line with the run's settings, then one
line per answer); a rerun with the same settings skips the answers already there, so
an interrupted evaluation resumes. A last line cut by an interruption is dropped and
the file rewritten before new lines are added. Every setting that changes sampling or
grading is recorded (the sampler's settings its method uses, the graders, the code
timeout, the prompt template, the few-shot examples, the samples per problem, the
task), and a rerun that differs in one stops with an error naming it.
The summary has the accuracy with a 95% Wilson interval, the generated and decoded
tokens, the wall time per problem and, when the problems have MATH's ``subject`` /
``level`` fields, the accuracy per subject and level. Under ``torchrun`` (or with
``ranks``) the answers are shared out over the processes and merged into the same file
(:mod:`longseq.power.parallel`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.table import Table

from longseq import lm
from longseq.power import parallel
from longseq.power.baselines import best_of_n, mh_power_sample, sample
from longseq.power.graders import GRADER_VERSION, grade
from longseq.power.problems import Problem, build_prompt, fewshot_examples
from longseq.power.smc import ContextClampWarning, power_smc
from longseq.power.task import TaskConfig, load_task
from longseq.utils import progress_bar

METHODS = ("temp-1", "temp-alpha", "best-of-n", "mh", "smc")

# sampler settings a method does not read: not recorded, not compared on resume
UNUSED = {
    "temp-1": (
        "alpha",
        "n_particles",
        "block_size",
        "ramp_tokens",
        "kappa",
        "mh_blocks",
        "mh_steps",
    ),
    "temp-alpha": ("n_particles", "block_size", "ramp_tokens", "kappa", "mh_blocks", "mh_steps"),
    "best-of-n": ("alpha", "block_size", "ramp_tokens", "kappa", "mh_blocks", "mh_steps"),
    "mh": ("n_particles", "block_size", "ramp_tokens", "kappa"),
    "smc": ("mh_blocks", "mh_steps"),
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

    def used(self) -> dict:
        """The settings this method reads (what the results file records)."""
        return {k: v for k, v in asdict(self).items() if k not in UNUSED[self.method]}


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
    samples: int = 1  # answers per problem; accuracy is then pass@1, correct counts answers
    pass_at_k: dict[str, float] = field(default_factory=dict)  # "pass@k", unbiased
    maj_at_k: float | None = None  # majority vote over the samples (not for code)
    by_subject: dict[str, dict[str, dict]] = field(default_factory=dict)  # field -> value -> stats
    fewshot: int = 0
    task: str | None = None

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


def _sampler_kwargs(cfg: SamplerConfig, eos, tokenizer, seed) -> dict:
    """The decoding settings every sampler takes, from ``cfg``."""
    return dict(
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


def run_sampler(
    model, ids: list[int], cfg: SamplerConfig, eos: list[int], tokenizer, seed: int
) -> dict:
    """One answer for one prompt: generated ids, decoded-token count, time, flags."""
    x = torch.tensor(ids, dtype=torch.long)
    kw = _sampler_kwargs(cfg, eos, tokenizer, seed)
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
    kw = _sampler_kwargs(cfg, eos, tokenizer, list(seeds))
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


def _answers(model, tokenizer, work, cfg, eos, batch_size, notes):
    """((problem, sample), sampler result) for each item of ``work`` (problem, sample,
    prompt ids, seed), sampled ``batch_size`` at a time; a note is added when
    max_new_tokens did not fit the model's context."""
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContextClampWarning)
            if len(chunk) == 1:
                _, _, ids, seed = chunk[0]
                results = [run_sampler(model, ids, cfg, eos, tokenizer, seed)]
            else:
                ids, seeds = [w[2] for w in chunk], [w[3] for w in chunk]
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
        yield from zip(((w[0], w[1]) for w in chunk), results, strict=True)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (Chen et al.
    2021): 1 - C(n - c, k) / C(n, k), the chance that k of the n drawn without
    replacement hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(records: list[dict]) -> dict | None:
    """The answer most samples give (whitespace ignored; ties: the earliest sample);
    None when no sample has an answer."""
    key = lambda r: re.sub(r"\s+", "", str(r.get("prediction", "")))  # noqa: E731
    votes = Counter(key(r) for r in records if key(r))
    if not votes:
        return None
    top = max(votes.values())
    return next(r for r in records if key(r) and votes[key(r)] == top)


def _ks(samples: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k < samples]
    return [*ks, samples]


# results-file settings and the option that sets each on the command line
OPTION = {
    "grader": "--kind",
    "code_timeout": "--code-timeout",
    "template": "--chat/--no-chat",
    "template_text": "--template",
    "fewshot": "--fewshot",
    "fewshot_examples": "--fewshot / --fewshot-file",
    "samples": "--samples",
    "n_particles": "--particles",
    "stop_strings": "--stop",
}


def _flat(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v) if isinstance(v, dict) else {k: v})
    return out


def _parse_results(path: Path, run: dict) -> tuple[dict, dict, bool]:
    """(records, lines, torn) of a results file with the settings ``run``: the finished
    answers ((id, sample) -> record, and -> its line as written) and whether lines that
    do not parse (a line cut by an interruption) or a missing last newline were found.
    Raises ValueError naming every setting that differs."""
    if not path.exists() or path.stat().st_size == 0:
        return {}, {}, False
    text = path.read_text()
    lines = text.split("\n")
    if len(lines) == 1:  # only a header cut while being written: start afresh
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return {}, {}, False
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
        said = "; ".join(
            f"{k}{f' ({OPTION[k]})' if k in OPTION else ''} was "
            f"{a.get(k, '(not recorded)')!r}, now {b.get(k, '(not recorded)')!r}"
            for k in diff
        )
        raise ValueError(
            f"{path} holds results of another run: {said}; give another output file or delete it"
        )
    done, kept, dropped = {}, {}, 0
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (rec["id"], int(rec.get("sample", 0)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            dropped += 1  # a line cut by an interruption: redo that answer
            continue
        if key not in done:
            done[key], kept[key] = rec, line
    return done, kept, bool(dropped or not text.endswith("\n"))


def _read_results(path: Path, run: dict) -> dict[tuple[str, int], dict]:
    """Finished answers of an earlier run with the same settings ((id, sample) ->
    record). Lines that do not parse (a line cut by an interruption) are dropped and
    the file is rewritten without them, so that new lines start on a line of their
    own."""
    done, kept, torn = _parse_results(path, run)
    if torn:
        head = path.read_text().split("\n")[0]
        _write_atomic(path, [head, *kept.values()])
    return done


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _read_all(path: Path, run: dict) -> tuple[dict, dict]:
    """(records, lines) of the results file and of every rank file beside it (read
    only: a torn line is skipped, not rewritten; the first copy of an answer wins)."""
    done, lines = {}, {}
    for f in [path, *parallel.rank_files(path)]:
        recs, kept, _ = _parse_results(f, run)
        for key, rec in recs.items():
            if key not in done:
                done[key], lines[key] = rec, kept[key]
    return done, lines


def _merge(path: Path, run: dict, keys: list, lines: dict) -> None:
    """Write the results file of a one-process run from the gathered ``lines`` (the
    answers of ``keys`` in their order, then any others the files held) and remove the
    rank files, whose answers it now holds."""
    ordered = [lines[k] for k in keys if k in lines]
    wanted = set(keys)
    ordered += [line for k, line in lines.items() if k not in wanted]
    _write_atomic(path, [json.dumps({"run": run}), *ordered])
    for f in parallel.rank_files(path):
        f.unlink()


def _breakdown(problems: list[Problem], score: dict[str, float]) -> dict[str, dict]:
    """Accuracy per MATH subject and per level, where the problems carry them."""
    out: dict[str, dict] = {}
    for name in ("subject", "level"):
        groups: dict[str, list[float]] = {}
        for p in problems:
            value = getattr(p, name)
            if value and p.id in score:
                groups.setdefault(value, []).append(score[p.id])
        if groups:
            out[name] = {
                v: {"n": len(xs), "accuracy": sum(xs) / len(xs)}
                for v, xs in sorted(groups.items(), key=lambda kv: _natural(kv[0]))
            }
    return out


def _natural(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


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
    samples: int = 1,
    fewshot: int | None = None,
    fewshot_pool: list[Problem] | None = None,
    task: TaskConfig | str | None = None,
    batch_size: int = 1,
    ranks: parallel.Ranks | None = None,
) -> EvalSummary:
    """Sample ``samples`` answers per problem with ``sampler`` and grade them.

    Args:
        model: causal LM (see :func:`power_smc`).
        tokenizer: a `transformers` tokenizer or :class:`longseq.hub.TextCodec`.
        problems: from :func:`longseq.power.load_problems`.
        sampler: the method and its settings (default: Power-SMC, alpha 4, N 16).
        out: JSONL results file, appended to as answers finish; a rerun with the same
            settings skips the answers it holds. None keeps results in memory only.
        chat: use the tokenizer's chat template (None: when it has one).
        template, instruction: prompt text (see :func:`longseq.power.build_prompt`).
        code_timeout: seconds per program for the code grader.
        run_info: extra settings recorded in the results file (model, data, ...).
        samples: answers per problem (each its own random stream); the summary then
            has pass@k for k = 1, 2, 4, ... up to ``samples`` and maj@``samples``.
        fewshot: worked examples shown before each problem (None: the task's, else
            0): the first problems of ``fewshot_pool`` (default: ``problems``) with a
            worked solution, never the problem itself. With a pool and
            ``fewshot=None``, all of the pool.
        task: a :class:`longseq.power.task.TaskConfig` or a task name: its plain
            template and stop strings apply to plain prompts unless ``template`` is
            given, and its ``fewshot`` when ``fewshot`` is None. (Its
            ``max_new_tokens`` is the sampler's to take: ``SamplerConfig(...,
            max_new_tokens=task.max_new_tokens)``.)
        batch_size: answers decoded together as one batch. Each keeps its own seed,
            so the answers are those of ``batch_size=1`` (up to the rounding of a
            padded forward pass); the time of a batch is shared out evenly among its
            answers, and ``max_time`` applies to each batch.
        ranks: the processes sharing the work (default: ``torch.distributed``'s group
            when initialized, e.g. under ``torchrun``, else this process alone). Each
            rank samples every K-th answer still to do and writes it to its own
            ``out`` rank file; the files are merged into ``out`` at the end, the same
            file and summary as one process gives (see :mod:`longseq.power.parallel`).
    """
    cfg = sampler or SamplerConfig()
    if not problems:
        raise ValueError("no problems to evaluate")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if code_timeout <= 0:
        raise ValueError(f"code_timeout must be > 0 seconds, got {code_timeout}")
    if fewshot is not None and fewshot < 0:
        raise ValueError(f"fewshot must be >= 0, got {fewshot}")
    task = load_task(task) if isinstance(task, str | Path) else task
    eos = eos_ids(model, tokenizer)
    use_chat = None if chat is None else bool(chat)
    _, _, mode = build_prompt(problems[0], tokenizer, use_chat, template, instruction)
    if task is not None and mode == "plain":
        template = template if template is not None else task.plain_template
        stops = [s for s in task.stop if s not in cfg.stop_strings]
        cfg = replace(cfg, stop_strings=[*cfg.stop_strings, *stops])
    n_shots = fewshot if fewshot is not None else (task.fewshot if task else 0)
    pool = problems if fewshot_pool is None else fewshot_pool
    whole_pool = fewshot_pool is not None and fewshot is None and not (task and task.fewshot)
    if whole_pool:
        n_shots = len(fewshot_examples(pool, None))
    shots_of = {}
    if n_shots:
        for p in problems:
            shots_of[p.id] = fewshot_examples(pool, None if whole_pool else n_shots, p)
            if not whole_pool and len(shots_of[p.id]) < n_shots:
                have = len(fewshot_examples(pool, None))
                raise ValueError(
                    f"fewshot={n_shots} but the examples hold {have} problem(s) with a "
                    "worked solution, and a problem is never shown its own"
                )
    delims = (task.target_delimiter, task.fewshot_delimiter) if task else (None, "\n\n")
    kinds = sorted({p.kind for p in problems})
    run = {
        "sampler": cfg.used(),
        "grader": kinds,
        "grader_version": GRADER_VERSION,
        "template": mode,
        "template_text": template,
        "instruction": instruction if mode == "chat" else None,
        "samples": samples,
        "fewshot": n_shots,
        "task": task.name if task else None,
        **(run_info or {}),
    }
    if "code" in kinds:
        run["code_timeout"] = code_timeout
    if n_shots:
        run["fewshot_examples"] = [p.id for p in fewshot_examples(pool, n_shots + 1)]
        run["fewshot_delimiters"] = list(delims) if mode == "plain" else None
    path = Path(out) if out is not None else None
    ranks = ranks or parallel.current()
    # several processes, or the rank files of one to resume: each rank writes its own
    shared = ranks.world_size > 1 or (path is not None and bool(parallel.rank_files(path)))
    if shared and path is None:
        raise ValueError("a data-parallel evaluation needs a results file (out)")
    run = json.loads(json.dumps(run))
    done: dict[tuple[str, int], dict] = {}
    write_to = path
    if path is not None and not shared:
        path.parent.mkdir(parents=True, exist_ok=True)
        done = _read_results(path, run)
        if not done:
            path.write_text(json.dumps({"run": run}) + "\n")
    elif shared:
        path.parent.mkdir(parents=True, exist_ok=True)
        done, _ = _read_all(path, run)
        ranks.barrier()  # every rank has read the files before any writes
        write_to = parallel.rank_file(path, ranks.rank, ranks.world_size)
        if not _read_results(write_to, run):
            head = {"run": run, "rank": ranks.rank, "world_size": ranks.world_size}
            write_to.write_text(json.dumps(head) + "\n")
    keys = [(p.id, j) for p in problems for j in range(samples)]
    records = {k: done[k] for k in keys if k in done}
    notes: set[str] = set()
    mine = parallel.shard([k for k in keys if k not in records], ranks)
    todo_of: dict[str, list[int]] = {}
    for pid, j in mine:
        todo_of.setdefault(pid, []).append(j)
    correct = sum(r["correct"] for r in records.values())
    total = len(keys) if ranks.world_size == 1 else len(mine)
    label = cfg.method if ranks.world_size == 1 else f"{cfg.method} rank 0/{ranks.world_size}"
    with progress_bar(label, total, enabled=progress and ranks.rank == 0) as advance:
        advance(total - len(mine))
        work = []  # (problem, sample, prompt ids, seed) of each answer this rank samples
        for p in problems:
            if p.id not in todo_of:
                continue
            ids, _, _ = build_prompt(
                p, tokenizer, use_chat, template, instruction, shots_of.get(p.id), *delims
            )
            for j in todo_of[p.id]:
                seed = problem_seed(cfg.seed, p.id if j == 0 else f"{p.id}#{j}")
                work.append((p, j, ids, seed))
        for (p, j), res in _answers(model, tokenizer, work, cfg, eos, batch_size, notes):
            completion = _decode(tokenizer, res.pop("tokens"))
            ok, pred = grade(p.kind, completion, p, code_timeout, chat=mode == "chat")
            rec = {
                "id": p.id,
                "sample": j,
                "kind": p.kind,
                "correct": bool(ok),
                "prediction": pred,
                "gold": p.answer if p.kind != "code" else "(tests)",
                "completion": completion,
                **{k: getattr(p, k) for k in ("subject", "level") if getattr(p, k)},
                **res,
            }
            records[(p.id, j)] = rec
            correct += rec["correct"]
            if write_to is not None:
                with write_to.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
            advance(description=f"{label} ({correct}/{len(records)} right)")
    if shared:
        ranks.barrier()  # every rank has written its answers
        done, lines = _read_all(path, run)
        records = {k: done[k] for k in keys}
        notes = set().union(*ranks.all_gather(sorted(notes)))  # and every rank has read
        if ranks.rank == 0:
            _merge(path, run, keys, lines)
        ranks.barrier()  # the merged file is there when evaluate returns, on every rank
    return _summarize(problems, records, samples, cfg, mode, path, notes, n_shots, task)


def _summarize(problems, records, samples, cfg, mode, path, notes, n_shots, task) -> EvalSummary:
    per = {p.id: [records[(p.id, j)] for j in range(samples)] for p in problems}
    n = len(problems)
    score = {pid: sum(r["correct"] for r in rs) / samples for pid, rs in per.items()}
    accuracy = sum(score.values()) / n
    lo, hi = wilson_interval(accuracy * n, n)
    passes, maj = {}, None
    if samples > 1:
        for k in _ks(samples):
            c = [sum(r["correct"] for r in rs) for rs in per.values()]
            passes[f"pass@{k}"] = sum(pass_at_k(samples, ci, k) for ci in c) / n
        if all(p.kind != "code" for p in problems):
            votes = [majority(rs) for rs in per.values()]
            maj = sum(bool(v and v["correct"]) for v in votes) / n
    answers = [r for rs in per.values() for r in rs]
    mean = lambda key: sum(r.get(key, 0.0) for r in answers) / len(answers)  # noqa: E731
    return EvalSummary(
        method=cfg.method,
        settings=cfg.describe(),
        n=n,
        correct=sum(r["correct"] for r in answers),
        accuracy=accuracy,
        ci_low=lo,
        ci_high=hi,
        new_tokens=mean("new_tokens"),
        decoded_tokens=mean("decoded_tokens"),
        seconds=mean("seconds"),
        cpu_seconds=mean("cpu_seconds"),
        template=mode,
        out=str(path) if path is not None else None,
        notes=sorted(notes),
        samples=samples,
        pass_at_k=passes,
        maj_at_k=maj,
        by_subject=_breakdown(problems, score),
        fewshot=n_shots,
        task=task.name if task else None,
    )


def breakdown_table(summary: EvalSummary) -> Table | None:
    """Accuracy per subject and per level (MATH), or None when there are none."""
    if not summary.by_subject:
        return None
    table = Table(title=f"{summary.method}: accuracy per subject and level")
    for col in ("field", "value", "n", "accuracy"):
        table.add_column(col, justify="right" if col in ("n", "accuracy") else "left")
    for name, groups in summary.by_subject.items():
        for value, st in groups.items():
            table.add_row(name, value, str(st["n"]), f"{100 * st['accuracy']:.1f}%")
    return table


def summary_table(summaries: list[EvalSummary], title: str = "evaluation") -> Table:
    """A rich table, one row per sampler; values fold rather than being cut. With
    several samples per problem, pass@k and maj@k at the largest k are added."""
    table = Table(title=title)
    multi = any(s.samples > 1 for s in summaries)
    right = ("accuracy", "95% CI", "n", "tokens", "decoded", "s/problem", "CPU s")
    right += ("pass@k", "maj@k") if multi else ()
    for col in ("method", "settings", *right):
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for s in summaries:
        row = [
            s.method,
            s.settings,
            f"{100 * s.accuracy:.1f}%",
            f"{100 * s.ci_low:.0f}-{100 * s.ci_high:.0f}%",
            str(s.n),
            f"{s.new_tokens:.1f}",
            f"{s.decoded_tokens:.0f}",
            f"{s.seconds:.3f}",
            f"{s.cpu_seconds:.3f}",
        ]
        if multi:
            k = s.samples
            row.append(f"{100 * s.pass_at_k[f'pass@{k}']:.1f}% (k={k})" if k > 1 else "-")
            row.append(f"{100 * s.maj_at_k:.1f}% (k={k})" if s.maj_at_k is not None else "-")
        table.add_row(*row)
    return table
