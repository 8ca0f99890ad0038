"""Reasoning problems from local files, and the prompts a model sees for them.

:func:`load_problems` reads a JSONL or Parquet file, or a directory written by
`datasets`' ``save_to_disk`` (when `datasets` is installed), or the name of a sample
shipped with the package (``SAMPLES``). Nothing is downloaded. Each record becomes
a :class:`Problem` of one of four kinds, recognised by its fields:

=========  ====================================================  ===========
kind       fields (as in the public sets)                        grader
=========  ====================================================  ===========
``code``   ``prompt``, ``test``, ``entry_point`` (HumanEval)      run tests
``mc``     ``Question``, ``Correct Answer``, ``Incorrect Answer   letter
           1..3`` (GPQA; choices shuffled per problem, stable),
           or ``question``, ``choices``, ``answer`` (index/letter)
``exact``  ``question``, ``answer`` with ``#### N`` (GSM8K), or   number
           ``question``/``prompt`` and a numeric ``answer``
``math``   ``problem``, ``answer`` (MATH / MATH500)               math-verify
=========  ====================================================  ===========

:func:`build_prompt` renders a problem through the tokenizer's chat template when it
has one (``apply_chat_template``, with a short instruction per kind), else as plain
text (the problem alone, or a user template such as ``"Question: {problem}\\nAnswer:"``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from longseq.power.graders import EXTRA_HINT, MissingExtra

KINDS = ("math", "mc", "exact", "code")
SAMPLES = ("arith", "math", "gsm8k", "gpqa", "humaneval")
LETTERS = "ABCDEFGHIJ"

# instructions added to the user message when the prompt goes through a chat template
INSTRUCTIONS = {
    "math": "Solve the problem. Reason step by step, and put your final answer within \\boxed{}.",
    "exact": "Solve the problem. Reason step by step, and end with 'The answer is N', "
    "where N is the final number.",
    "mc": "Answer the multiple-choice question. Reason step by step, and end with "
    "'The answer is (X)', where X is the letter of the correct choice.",
    "code": "Complete the following Python function. Give the whole function in one "
    "```python code block.",
}


@dataclass
class Problem:
    id: str
    kind: str  # math | mc | exact | code
    question: str  # the text the model is asked (choices included for mc)
    answer: str  # reference: answer, letter, number, or test code (code)
    entry_point: str = ""  # code: the function the tests call
    choices: list[str] = field(default_factory=list)  # mc, in the order shown
    solution: str = ""  # a worked answer, shown when the problem is a few-shot example
    subject: str = ""  # MATH's subject (or type), when the record has one
    level: str = ""  # MATH's level, when the record has one


def sample_path(name: str, fmt: str = "jsonl") -> Path:
    """Path of a shipped sample file (``arith``, ``math``, ``gsm8k``, ``gpqa``, ``humaneval``;
    ``arith`` also as Parquet)."""
    path = Path(str(resources.files("longseq.power") / "data" / f"{name}.{fmt}"))
    if not path.exists():
        raise ValueError(f"no shipped sample {name}.{fmt}; samples: {', '.join(SAMPLES)}")
    return path


def read_records(source: str | Path, split: str | None = None) -> list[dict]:
    """Rows of a JSONL / Parquet file, a `datasets` directory, or a shipped sample name."""
    src = str(source)
    if src in SAMPLES:
        return read_records(sample_path(src))
    path = Path(src)
    if not path.exists():
        raise ValueError(
            f"{src!r} is neither a file, a datasets directory, nor a shipped sample "
            f"({', '.join(SAMPLES)})"
        )
    if path.is_dir():
        try:
            import datasets
        except ImportError as e:
            raise MissingExtra(
                f"{path} is a directory: reading a datasets folder needs the datasets "
                "package (pip install datasets), or give a .jsonl / .parquet file"
            ) from e
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds)
            pick = split or ("test" if "test" in ds else names[0] if len(names) == 1 else None)
            if pick not in ds:
                raise ValueError(f"{path} holds splits {names}: choose one with split=")
            ds = ds[pick]
        return [dict(r) for r in ds]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise MissingExtra(f"reading Parquet needs pyarrow: {EXTRA_HINT}") from e
        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text()
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {i + 1}: not valid JSON ({e})") from e
        return rows
    raise ValueError(f"{path}: unknown file type {path.suffix!r} (use .jsonl, .json or .parquet)")


def detect_kind(record: dict) -> str:
    keys = set(record)
    if {"test", "entry_point"} <= keys:
        return "code"
    if {"Correct Answer", "Incorrect Answer 1"} <= keys or {"choices", "answer"} <= keys:
        return "mc"
    if "answer" in keys and "####" in str(record["answer"]):
        return "exact"
    if {"problem", "answer"} <= keys:
        return "math"
    if ("question" in keys or "prompt" in keys) and "answer" in keys:
        try:
            float(str(record["answer"]).replace(",", ""))
            return "exact"
        except ValueError:
            return "math"
    raise ValueError(
        f"cannot tell the problem kind from the fields {sorted(keys)}; expected HumanEval "
        "(prompt/test/entry_point), GPQA (Question/Correct Answer/...), GSM8K "
        "(question/answer with ####) or MATH (problem/answer) fields"
    )


def _record_id(record: dict, i: int) -> str:
    for key in ("id", "task_id", "unique_id", "Record ID", "idx"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return f"row-{i}"


def _shuffled(choices: list[str], key: str) -> list[int]:
    """A permutation of the choices fixed by the problem id (same on every run)."""
    scored = [(hashlib.sha256(f"{key}/{i}".encode()).hexdigest(), i) for i in range(len(choices))]
    return [i for _, i in sorted(scored)]


def _problem(record: dict, i: int, kind: str) -> Problem:
    p = _bare_problem(record, i, kind)
    p.subject = str(record.get("subject", record.get("type", "")) or "")
    level = record.get("level", "")
    p.level = str(level).removeprefix("Level ").strip() if level not in (None, "") else ""
    return p


def _bare_problem(record: dict, i: int, kind: str) -> Problem:
    pid = _record_id(record, i)
    if kind == "code":
        return Problem(
            pid,
            kind,
            record["prompt"],
            record["test"],
            record["entry_point"],
            solution=str(record.get("canonical_solution", "") or ""),
        )
    if kind == "mc":
        if "Correct Answer" in record:
            question = record["Question"].strip()
            options = [record["Correct Answer"]] + [
                record[f"Incorrect Answer {k}"]
                for k in (1, 2, 3)
                if f"Incorrect Answer {k}" in record
            ]
            order = _shuffled(options, pid)
            choices = [str(options[j]).strip() for j in order]
            letter = LETTERS[order.index(0)]
            why = str(record.get("Explanation", "") or "").strip()
        else:
            question = str(record.get("question", record.get("prompt", ""))).strip()
            choices = [str(c).strip() for c in record["choices"]]
            ans = record["answer"]
            letter = LETTERS[int(ans)] if str(ans).isdigit() else str(ans).strip().upper()
            why = str(record.get("solution", record.get("explanation", "")) or "").strip()
        if not question:
            raise ValueError(f"record {pid}: the question is empty")
        shown = question + "\n\n" + "\n".join(f"({LETTERS[k]}) {c}" for k, c in enumerate(choices))
        solution = (why + "\n" if why else "") + f"The answer is ({letter})."
        return Problem(pid, kind, shown, letter, choices=choices, solution=solution)
    text = record.get("problem", record.get("question", record.get("prompt")))
    if text is None:
        raise ValueError(f"record {pid}: no problem/question/prompt field")
    if not str(text).strip():
        raise ValueError(f"record {pid}: the problem text is empty")
    answer = str(record["answer"])
    if kind == "exact" and "####" in answer:  # GSM8K: the worked answer ends in #### N
        solution = answer
    elif record.get("solution"):
        solution = str(record["solution"])
    elif kind == "math":
        solution = f"The final answer is $\\boxed{{{answer}}}$."
    else:
        solution = f"The answer is {answer}."
    return Problem(pid, kind, str(text), answer, solution=solution)


def load_problems(
    source: str | Path,
    kind: str = "auto",
    limit: int | None = None,
    split: str | None = None,
) -> list[Problem]:
    """Problems from a local file, a `datasets` directory or a shipped sample name.

    ``kind`` forces the grader (``math``, ``mc``, ``exact``, ``code``); ``auto`` reads
    it from each record's fields. ``limit`` keeps the first problems.
    """
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {list(KINDS)}, got {kind!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    records = read_records(source, split)
    if not records:
        raise ValueError(f"{source}: no problems")
    records = records[:limit] if limit else records
    problems = [
        _problem(r, i, detect_kind(r) if kind == "auto" else kind) for i, r in enumerate(records)
    ]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: problem ids are not unique")
    return problems


def _hf_tokenizer(tokenizer):
    """The `transformers` tokenizer inside a :class:`longseq.hub.TextCodec`, or itself."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def has_chat_template(tokenizer) -> bool:
    tok = _hf_tokenizer(tokenizer)
    return bool(getattr(tok, "chat_template", None)) and hasattr(tok, "apply_chat_template")


def build_prompt(
    problem: Problem,
    tokenizer,
    chat: bool | None = None,
    template: str | None = None,
    instruction: str | None = None,
    fewshot: list[Problem] | None = None,
    target_delimiter: str | None = None,
    fewshot_delimiter: str = "\n\n",
) -> tuple[list[int], str, str]:
    """(token ids, prompt text, "chat" or "plain") for ``problem``.

    ``chat=None`` uses the tokenizer's chat template when it has one. The chat user
    message is ``template`` (default ``"{problem}\\n\\n{instruction}"``) with the
    kind's instruction (``INSTRUCTIONS``, or ``instruction``); plain text is
    ``template`` (default ``"{problem}"``). ``fewshot`` examples come first, each with
    its worked solution: as earlier user / assistant turns in chat mode, as
    ``template`` + ``target_delimiter`` + solution blocks joined by
    ``fewshot_delimiter`` in plain mode (``target_delimiter`` None: a space, or
    nothing after a template that ends in white space; a code example is its prompt
    followed by its solution).
    """
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat and not has_chat_template(tokenizer):
        raise ValueError("chat=True but the tokenizer has no chat template")
    shots = list(fewshot or [])
    if use_chat:
        messages = []
        for ex in [*shots, problem]:
            instr = INSTRUCTIONS[ex.kind] if instruction is None else instruction
            body = (template or "{problem}\n\n{instruction}").format(
                problem=ex.question, instruction=instr
            )
            messages.append({"role": "user", "content": body.strip()})
            if ex is not problem:
                messages.append({"role": "assistant", "content": _shown_solution(ex)})
        tok = _hf_tokenizer(tokenizer)
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        return ids, text, "chat"

    def shown(p: Problem) -> str:
        instr = INSTRUCTIONS[p.kind] if instruction is None else instruction
        return (template or "{problem}").format(problem=p.question, instruction=instr)

    parts = []
    for ex in shots:
        sep = target_delimiter
        if sep is None:
            sep = "" if ex.kind == "code" or shown(ex).endswith(("\n", " ")) else " "
        parts.append(shown(ex) + sep + ex.solution.strip("\n") + fewshot_delimiter)
    text = "".join(parts) + shown(problem)
    return list(tokenizer.encode(text)), text, "plain"


def _shown_solution(p: Problem) -> str:
    if p.kind == "code":
        return f"```python\n{p.question}{p.solution}```"
    return p.solution


def fewshot_examples(
    pool: list[Problem], n: int | None, exclude: Problem | None = None
) -> list[Problem]:
    """The first ``n`` problems of ``pool`` that have a worked solution (all when
    ``n`` is None), leaving out any with the question of ``exclude`` (a problem is
    never shown its own solution)."""
    found = [p for p in pool if p.solution and (exclude is None or p.question != exclude.question)]
    return found if n is None else found[:n]


def encode_prompt(text: str, tokenizer, chat: bool | None = None) -> tuple[list[int], str, str]:
    """(token ids, prompt text, "chat" or "plain") for free text, the way
    :func:`build_prompt` renders a problem: through the tokenizer's chat template as the
    user message when it has one (``chat=None``) or when ``chat=True``, else as is."""
    return build_prompt(Problem("prompt", "exact", text, ""), tokenizer, chat, "{problem}")
