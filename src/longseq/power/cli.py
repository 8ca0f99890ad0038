"""The ``longseq power`` commands (Power-SMC)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from longseq import hub, lm
from longseq.cliutils import (
    App,
    check_number,
    check_output_file,
    check_template,
    check_unique,
    console,
    fail,
    write_text,
)


def _check_decoding(alpha, top_p, max_time, stop, min_new_tokens, max_new_tokens) -> None:
    """The decoding options power sample and power eval share, checked before any work."""
    check_number(alpha, "--alpha", 0, low_open=True)
    check_number(top_p, "--top-p", 0, 1, low_open=True)
    check_number(max_time, "--max-time", 0, low_open=True)
    if stop and any(s == "" for s in stop):
        fail("--stop is empty: an empty stop string would stop before the first token")
    if max_new_tokens is not None and min_new_tokens > max_new_tokens:
        fail(
            f"--min-new-tokens ({min_new_tokens}) is more than --max-new-tokens ({max_new_tokens})"
        )


app = App(
    help="Power-SMC: sample p(y|x)^alpha with sequential Monte Carlo.",
)

DTYPES = ("float32", "bfloat16", "float16")


def load_model(model: str, device: str | None, dtype: str):
    """(model, codec, device) as ``power sample`` and ``power eval`` load them: on the
    device asked for (default: cuda when present), weights cast to ``dtype``. Raises
    ValueError / CheckpointError with a one-line message."""
    import torch

    from longseq.utils import default_device

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    dev = default_device(device)
    lm_model, codec, _ = hub.load_causal_lm(model, dev)
    return lm_model.to(getattr(torch, dtype)), codec, dev


@app.command("demo")
def power_demo(
    model: str = typer.Option("power-arith-gpt", help="shipped checkpoint name or directory"),
    problems: int = typer.Option(48, min=1, help="held-out problems"),
    alpha: float = typer.Option(4.0, help="power exponent"),
    particles: int = typer.Option(16, min=1, help="SMC particles / best-of-N samples"),
    block_size: int = typer.Option(4, min=1, help="SMC resampling check interval (tokens)"),
    ramp_tokens: int = typer.Option(16, min=0, help="SMC exponent ramp length (tokens)"),
    mh_blocks: int = typer.Option(4, min=1, help="MH: blocks the answer is built in"),
    mh_steps: int = typer.Option(10, min=0, help="MH: steps after each block"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when present)"),
    json_out: Path = typer.Option(None, "--json", help="also write the table as JSON here"),
) -> None:
    """Accuracy and wall time of temperature 1, temperature 1/alpha, best-of-N, MH and
    Power-SMC on held-out 3-term additions, with the shipped model."""
    from longseq.data.arith import ArithTask, CharTokenizer
    from longseq.power.demo import evaluate_methods
    from longseq.utils import default_device

    check_number(alpha, "--alpha", 0, low_open=True)
    check_output_file(json_out, "--json")
    try:
        dev = default_device(device)
        lm_model, _, extra = hub.load_causal_lm(model, dev)
    except (hub.CheckpointError, ValueError) as e:
        fail(str(e))
    task_cfg = {k: v for k, v in extra.get("task", {}).items() if k != "name"}
    if extra.get("task", {}).get("name") != "arith":
        fail(f"{model!r} was not trained on the arithmetic task; the demo needs one that was")
    task, tok = ArithTask(**task_cfg), CharTokenizer(extra["tokenizer"]["chars"])
    probs = task.sample_problems(problems, "test", seed=seed + 777)
    console.print(
        f"[bold]Power-SMC demo[/]: {problems} held-out problems like "
        f"[cyan]{probs[0].prompt}[/] (answer {probs[0].answer}); model {model}, "
        f"alpha={alpha:g}, device {dev}"
    )
    if problems > 1000:
        console.print(
            f"[yellow]note:[/] {problems:,} problems: SMC and best-of-N decode "
            f"{problems * particles:,} sequences in one batch, and MH runs {problems:,} chains "
            "one after the other; the time and memory grow in proportion (48 problems take "
            "seconds); the progress lines below give the time left after each method",
            soft_wrap=True,
        )
    res = evaluate_methods(
        lm_model,
        tok,
        task,
        probs,
        alpha=alpha,
        n_particles=particles,
        block_size=block_size,
        ramp_tokens=ramp_tokens,
        mh_blocks=mh_blocks,
        mh_steps=mh_steps,
        seed=seed,
    )
    base = next(r.seconds for r in res if r.method == "temp-1")
    table = Table(title="held-out accuracy (one answer per problem)")
    for col in ("method", "settings", "accuracy", "wall s", "x temp-1 time"):
        table.add_column(col, justify="right" if col not in ("method", "settings") else "left")
    for r in res:
        table.add_row(
            r.method,
            r.settings,
            f"{100 * r.accuracy:.1f}%",
            f"{r.seconds:.2f}",
            f"{r.seconds / base:.1f}x",
        )
    console.print(table)
    if json_out:
        write_text(json_out, json.dumps([r.to_dict() for r in res], indent=2), "--json")
        console.print(f"wrote {json_out}")


@app.command("sample")
def power_sample(
    prompt: str = typer.Argument(..., help="prompt text, e.g. '47+85+23='"),
    model: str = typer.Option(
        "power-arith-gpt", help="shipped name, our checkpoint dir, or a transformers model dir"
    ),
    method: str = typer.Option("smc", help="smc | temp (temperature 1/alpha) | best-of-n | mh"),
    alpha: float = typer.Option(4.0, help="power exponent (temp uses temperature 1/alpha)"),
    particles: int = typer.Option(16, min=1),
    max_new_tokens: int = typer.Option(
        None,
        min=1,
        help="default: 256, or what the model's context leaves if less; larger values "
        "are lowered to that, with a note",
    ),
    block_size: int = typer.Option(4, min=1),
    ramp_tokens: int = typer.Option(16, min=0, help="exponent ramp length (0 = constant)"),
    top_k: int = typer.Option(None, min=1, help="restrict each token to the k most probable"),
    top_p: float = typer.Option(None, help="restrict each token to the nucleus of mass top_p"),
    min_new_tokens: int = typer.Option(0, min=0, help="no EOS before this many new tokens"),
    stop: list[str] = typer.Option(None, help="stop string (repeatable)"),
    max_time: float = typer.Option(None, help="stop decoding after this many seconds"),
    chat: bool = typer.Option(
        None, "--chat/--no-chat", help="use the tokenizer's chat template (default: if it has one)"
    ),
    dtype: str = typer.Option("float32", help="model weights: float32 | bfloat16 | float16"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
    show: int = typer.Option(8, min=0, help="particles to list (smc)"),
) -> None:
    """Sample one completion of PROMPT (and, for smc, show the weighted particles).

    As in ``power eval``, PROMPT goes through the tokenizer's chat template when it has
    one, and a particle ends at any EOS id of the tokenizer or of the model's generation
    config."""
    import warnings

    import torch

    from longseq.power import best_of_n, mh_power_sample, power_smc, sample
    from longseq.power.evaluation import eos_ids
    from longseq.power.problems import encode_prompt
    from longseq.power.smc import ContextClampWarning

    if method not in ("smc", "temp", "best-of-n", "mh"):
        fail(f"--method must be one of smc, temp, best-of-n, mh; got {method!r}")
    if not prompt:
        fail("PROMPT is empty: give the text to continue, e.g. '47+85+23='")
    _check_decoding(alpha, top_p, max_time, stop, min_new_tokens, max_new_tokens)
    try:
        lm_model, codec, _ = load_model(model, device, dtype)
        ids = torch.tensor(encode_prompt(prompt, codec, chat)[0], dtype=torch.long)
        if max_new_tokens is None:
            ctx = lm.context_length(lm_model)
            max_new_tokens = 256 if ctx is None else max(1, min(256, ctx - len(ids)))
        if min_new_tokens > max_new_tokens:
            raise ValueError(
                f"--min-new-tokens ({min_new_tokens}) is more than the {max_new_tokens} new "
                "tokens this model's context leaves"
            )
        kw = dict(
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids(lm_model, codec) or None,
            seed=seed,
            top_k=top_k,
            top_p=top_p,
            min_new_tokens=min_new_tokens,
            stop_strings=stop or None,
            tokenizer=codec,
            max_time=max_time,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContextClampWarning)
            if method == "smc":
                out = power_smc(
                    lm_model,
                    ids,
                    alpha=alpha,
                    n_particles=particles,
                    block_size=block_size,
                    ramp_tokens=ramp_tokens,
                    progress=True,
                    **kw,
                )
                text = codec.decode(out.sample[len(ids) :])
            elif method == "temp":
                out = sample(lm_model, ids, n=1, temperature=1 / alpha, **kw)
                text = codec.decode(out.sequences[0, len(ids) :])
            elif method == "best-of-n":
                out = best_of_n(lm_model, ids, n=particles, **kw)
                text = codec.decode(out.sequences[len(ids) :])
            else:
                out = mh_power_sample(lm_model, ids, alpha=alpha, progress=True, **kw)
                text = codec.decode(out.sequence[len(ids) :])
    except (hub.CheckpointError, ValueError, TypeError, RuntimeError) as e:
        fail(str(e))
    for w in caught:
        if issubclass(w.category, ContextClampWarning):
            console.print(f"[yellow]note:[/] {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    console.print(f"[bold]{prompt}[/][green]{text}[/]")
    if getattr(out, "stopped_by_time", False):
        console.print(
            f"[yellow]note:[/] --max-time {max_time:g} s ran out; the output is cut there"
        )
    if method == "smc" and show:
        table = Table(title=f"particles (log Z ≈ {out.log_z:.3f}, {out.n_resamples} resamplings)")
        for col in ("weight", "log p(y|x)", "completion"):
            table.add_column(col)
        order = out.log_weights.argsort(descending=True)[:show]
        for i in order.tolist():
            table.add_row(
                f"{out.weights[i]:.3f}",
                f"{out.seq_logprobs[i]:.2f}",
                codec.decode(out.sequences[i, len(ids) :]),
            )
        console.print(table)


@app.command("eval")
def power_eval(
    data: str = typer.Argument(
        ...,
        help="problems: a .jsonl or .parquet file, a datasets folder, or a shipped sample "
        "(arith, math, gsm8k, gpqa, humaneval)",
    ),
    model: str = typer.Option(
        "power-arith-gpt", help="shipped name, our checkpoint dir, or a transformers model dir"
    ),
    method: list[str] = typer.Option(
        ["smc"], help="temp-1 | temp-alpha | best-of-n | mh | smc (repeatable)"
    ),
    kind: str = typer.Option(
        "auto", help="grader: auto (from the fields) | math | mc | exact | code"
    ),
    limit: int = typer.Option(None, min=1, help="evaluate the first N problems only"),
    split: str = typer.Option(None, help="split of a datasets folder (default: test)"),
    alpha: float = typer.Option(4.0, help="power exponent (temp-alpha: temperature 1/alpha)"),
    particles: int = typer.Option(16, min=1, help="SMC particles / best-of-N samples"),
    block_size: int = typer.Option(64, min=1, help="SMC: ESS check interval (tokens)"),
    ramp_tokens: int = typer.Option(0, min=0, help="SMC: exponent ramp length (tokens)"),
    kappa: float = typer.Option(0.5, help="SMC: resample when ESS < kappa * N"),
    mh_blocks: int = typer.Option(16, min=1, help="MH: blocks the answer is built in"),
    mh_steps: int = typer.Option(10, min=0, help="MH: steps after each block"),
    max_new_tokens: int = typer.Option(
        None,
        min=1,
        help="default: the task's, else 1024; lowered, with a note, to what the model's "
        "context leaves",
    ),
    min_new_tokens: int = typer.Option(0, min=0, help="no EOS before this many new tokens"),
    top_k: int = typer.Option(None, min=1, help="restrict each token to the k most probable"),
    top_p: float = typer.Option(None, help="restrict each token to the nucleus of mass top_p"),
    stop: list[str] = typer.Option(
        None, help="stop string (repeatable; with --task, added to the task's for plain prompts)"
    ),
    max_time: float = typer.Option(None, help="seconds per problem before decoding stops"),
    chat: bool = typer.Option(
        None, "--chat/--no-chat", help="use the tokenizer's chat template (default: if it has one)"
    ),
    template: str = typer.Option(
        None,
        help="prompt as a Python format string with the field problem (and, in chat mode, "
        "instruction); default: the problem alone",
    ),
    instruction: str = typer.Option(None, help="chat instruction (default: one per grader)"),
    code_timeout: float = typer.Option(10.0, help="seconds per program (code grader)"),
    task: str = typer.Option(
        None,
        help="task settings: math | gsm8k | gpqa | humaneval, or a .toml file (grader, "
        "max new tokens, stop strings, plain template, few-shot count)",
    ),
    samples: int = typer.Option(
        1, min=1, help="answers per problem; the summary adds pass@k and maj@k"
    ),
    fewshot: int = typer.Option(
        None, min=0, help="worked examples before each problem (default: the task's, else 0)"
    ),
    fewshot_file: Path = typer.Option(
        None,
        help="problems file whose worked solutions are the few-shot examples "
        "(default: the evaluated data, each problem's own left out)",
    ),
    out: Path = typer.Option(
        None, help="results folder, one METHOD.jsonl each (default: power-eval/DATA-MODEL)"
    ),
    dtype: str = typer.Option("float32", help="model weights: float32 | bfloat16 | float16"),
    batch_size: int = typer.Option(
        1, min=1, help="problems decoded together (same answers as 1, each its own seed)"
    ),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Accuracy of one or more samplers on reasoning problems, one answer per problem
    (or --samples K, with pass@k and maj@k).

    Results are written as they come (OUT/METHOD.jsonl); rerunning the same command
    skips the problems already done. Prompts go through the tokenizer's chat template
    when it has one. Example: longseq power eval arith --method temp-1 --method smc
    --block-size 4 --ramp-tokens 16

    Under torchrun (torchrun --nproc-per-node K -m longseq power eval ...) the answers
    are shared out over the K processes, each on cuda:LOCAL_RANK when CUDA is present;
    each writes OUT/METHOD.rankR-of-K.jsonl, and rank 0 merges them into OUT/METHOD.jsonl,
    the file one process writes.
    """

    import torch

    from longseq.cliutils import make_folder
    from longseq.power import parallel
    from longseq.power.evaluation import (
        METHODS,
        SamplerConfig,
        breakdown_table,
        evaluate,
        summary_table,
    )
    from longseq.power.graders import MissingExtra, require_math_verify
    from longseq.power.problems import load_problems
    from longseq.power.task import load_task
    from longseq.utils import default_device, launched, local_rank, setup_distributed

    if launched() and os.environ.get("RANK", "0") != "0":
        console.quiet = True  # rank 0 speaks for all (every rank meets the same errors)
    bad = [m for m in method if m not in METHODS]
    if bad:
        fail(f"--method must be among {', '.join(METHODS)}; got {', '.join(bad)}")
    check_unique(method, "--method")
    if dtype not in DTYPES:
        fail(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    _check_decoding(alpha, top_p, max_time, stop, min_new_tokens, max_new_tokens)
    check_number(kappa, "--kappa", 0, 1)
    check_number(code_timeout, "--code-timeout", 0, low_open=True)
    check_template(template, "--template", ("problem", "instruction"), "problem")
    if split is not None and not Path(data).is_dir():
        fail(f"--split chooses a split of a datasets folder; {data} is not a folder")
    try:
        task_cfg = load_task(task) if task is not None else None
        if task_cfg is not None:
            kind = task_cfg.kind if kind == "auto" else kind
            max_new_tokens = max_new_tokens or task_cfg.max_new_tokens
        problems = load_problems(data, kind=kind, limit=limit, split=split)
        pool = None
        if fewshot_file is not None:
            pool = load_problems(fewshot_file, kind=kind)
        elif (fewshot if fewshot is not None else task_cfg.fewshot if task_cfg else 0) > 0:
            pool = load_problems(data, kind=kind, split=split)  # the whole set
        if any(p.kind == "math" for p in problems):
            require_math_verify()
        configs = [
            SamplerConfig(
                method=m,
                alpha=alpha,
                n_particles=particles,
                max_new_tokens=max_new_tokens or 1024,
                block_size=block_size,
                ramp_tokens=ramp_tokens,
                kappa=kappa,
                mh_blocks=mh_blocks,
                mh_steps=mh_steps,
                min_new_tokens=min_new_tokens,
                top_k=top_k,
                top_p=top_p,
                stop_strings=list(stop or []),
                max_time=max_time,
                seed=seed,
            )
            for m in method
        ]
        if launched() and default_device(device) == torch.device("cuda"):
            device = f"cuda:{local_rank()}"  # one GPU per process
        lm_model, codec, dev = load_model(model, device, dtype)
        setup_distributed(dev)
        ranks = parallel.current()
    except (MissingExtra, hub.CheckpointError, ValueError, TypeError, RuntimeError) as e:
        fail(str(e))
    stem = Path(data).stem if Path(data).exists() else data
    folder = out or Path("power-eval") / f"{stem}-{Path(model).name}"
    make_folder(folder, "--out")
    kinds = sorted({p.kind for p in problems})
    spread = f" x {ranks.world_size} processes" if ranks.world_size > 1 else ""
    console.print(
        f"[bold]power eval[/]: {len(problems)} problems ({', '.join(kinds)}) from {data}; "
        f"model {model}, device {dev}{spread}; results in {folder}/"
    )
    summaries, noted = [], set()
    for cfg in configs:
        try:
            s = evaluate(
                lm_model,
                codec,
                problems,
                cfg,
                out=folder / f"{cfg.method}.jsonl",
                chat=chat,
                template=template,
                instruction=instruction,
                code_timeout=code_timeout,
                run_info={"model": model, "data": str(data), "dtype": dtype},
                batch_size=batch_size,
                samples=samples,
                fewshot=fewshot,
                fewshot_pool=pool,
                task=task_cfg,
                ranks=ranks,
            )
        except (MissingExtra, ValueError, TypeError) as e:
            fail(str(e))
        summaries.append(s)
        for note in s.notes:
            if note not in noted:
                console.print(f"[yellow]note:[/] {note}")
                noted.add(note)
    template_used = summaries[0].template
    per = "one answer" if samples == 1 else f"{samples} answers"
    console.print(
        summary_table(summaries, title=f"{data}: {per} per problem ({template_used} prompts)")
    )
    for s in summaries:
        table = breakdown_table(s)
        if table is not None:
            console.print(table)
    if ranks.rank == 0:
        write_text(
            folder / "summary.json",
            json.dumps([s.to_dict() for s in summaries], indent=2) + "\n",
            "--out",
        )
    if ranks.world_size > 1:
        torch.distributed.destroy_process_group()
