"""Graders for reasoning evaluations: is a model's completion right?

* ``math`` -- the last ``\\boxed{...}`` of the completion (else the last expression
  math-verify finds) against the reference answer, compared for mathematical
  equivalence by `math-verify` (``1/2``, ``\\frac12`` and ``0.5`` agree);
* ``mc`` -- multiple choice (GPQA-style): the letter the completion settles on
  ("The answer is (C)", "Answer: C", ``\\boxed{C}``, else the last standalone letter);
* ``exact`` -- a number (GSM8K-style): the answer after ``####``, in ``\\boxed{}``,
  after "answer is", else the last number of the completion, compared as numbers;
* ``code`` -- HumanEval-style: the program (prompt + completion, or the completion's
  code block for chat models) runs with the problem's tests in a separate Python
  process, in an empty temporary directory, with a timeout, a memory limit, a clean
  environment and sockets disabled. This keeps honest mistakes (endless loops, stray
  files, network calls) contained; it is not a sandbox against hostile code.

:func:`grade` returns ``(correct, prediction)``. A grader whose package is missing
raises :class:`MissingExtra`, naming ``pip install 'longseq[eval]'``.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap

GRADERS = ("math", "mc", "exact", "code")
EXTRA_HINT = "pip install 'longseq[eval]'"


class MissingExtra(ImportError):
    """A grader or a file format needs a package that is not installed."""


def grade(
    kind: str, completion: str, problem, timeout: float = 10.0, chat: bool = False
) -> tuple[bool, str]:
    """(correct, prediction) of ``completion`` for ``problem`` (a
    :class:`longseq.power.problems.Problem`) by the grader named ``kind``; ``chat``:
    the prompt went through a chat template (code is then read from a code block)."""
    if kind == "math":
        return grade_math(completion, problem.answer)
    if kind == "mc":
        return grade_choice(completion, problem.answer, len(problem.choices) or 4)
    if kind == "exact":
        return grade_number(completion, problem.answer)
    if kind == "code":
        return grade_code(completion, problem, timeout, chat)
    raise ValueError(f"unknown grader {kind!r}; choose from {list(GRADERS)}")


def require_math_verify():
    try:
        import math_verify
    except ImportError as e:
        raise MissingExtra(f"the math grader needs the math-verify package: {EXTRA_HINT}") from e
    return math_verify


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def grade_math(completion: str, answer: str) -> tuple[bool, str]:
    mv = require_math_verify()
    boxed = last_boxed(completion)
    pred_text = f"\\boxed{{{boxed}}}" if boxed is not None else completion
    gold = mv.parse(f"\\boxed{{{answer}}}")
    pred = mv.parse(pred_text)
    shown = boxed if boxed is not None else (str(pred[-1]) if pred else "")
    if not gold or not pred:
        return False, shown
    return bool(mv.verify(gold, pred)), shown


_NUM = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def _to_number(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "").replace("%", "").strip()
    m = re.search(_NUM, text)
    if m is None:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def extract_number(completion: str) -> str | None:
    """The final numeric answer of a completion (see the module docstring)."""
    for pattern in (r"####\s*(.+)", r"answer is[:\s]*\$?\s*(" + _NUM + ")"):
        found = re.findall(pattern, completion, flags=re.I)
        if found:
            return found[-1].strip()
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    found = re.findall(_NUM, completion)
    return found[-1] if found else None


def grade_number(completion: str, answer: str) -> tuple[bool, str]:
    gold_text = answer.split("####")[-1]
    gold = _to_number(gold_text)
    pred_text = extract_number(completion)
    pred = _to_number(pred_text) if pred_text is not None else None
    shown = pred_text or ""
    if gold is None or pred is None:
        return False, shown
    return math.isclose(gold, pred, rel_tol=1e-9, abs_tol=1e-9), shown


def extract_choice(completion: str, n_choices: int = 4) -> str | None:
    letters = "ABCDEFGHIJ"[:n_choices]
    cls = f"[{letters}]"
    boxed = last_boxed(completion)
    if boxed is not None:
        m = re.search(rf"\b({cls})\b", boxed.replace("\\text", " "))
        if m:
            return m.group(1)
    for pattern in (
        rf"answer is\s*:?\s*\(?\**\s*({cls})\b",
        rf"answer\s*:\s*\(?\**\s*({cls})\b",
        rf"\(({cls})\)",
        rf"\b({cls})\b",
    ):
        found = re.findall(pattern, completion, flags=re.I if "answer" in pattern else 0)
        if found:
            return found[-1].upper()
    return None


def grade_choice(completion: str, answer: str, n_choices: int = 4) -> tuple[bool, str]:
    pred = extract_choice(completion, n_choices)
    return pred is not None and pred == answer.strip().upper(), pred or ""


# --- code -----------------------------------------------------------------------

# lines that end a plain (non-chat) completion of a function body, as in HumanEval
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")

_GUARD = """
import builtins, os, resource, socket, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while grading")
socket.socket = _no_network
socket.create_connection = _no_network
socket.getaddrinfo = _no_network
del builtins, os, resource, socket, sys
"""


def code_program(completion: str, problem, chat: bool) -> str:
    """The program to test: the chat answer's code block when it defines the entry
    point, else the prompt followed by the completion cut at the first top-level line
    (``CODE_STOPS``)."""
    if chat:
        blocks = re.findall(r"```(?:python|py)?\n(.*?)```", completion, flags=re.S)
        for block in reversed(blocks):
            if re.search(rf"def\s+{re.escape(problem.entry_point)}\s*\(", block):
                return block
        if blocks:
            return problem.question + blocks[-1]
    cut = len(completion)
    for stop in CODE_STOPS:
        i = completion.find(stop)
        if i >= 0:
            cut = min(cut, i)
    return problem.question + completion[:cut]


def run_program(source: str, timeout: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run ``source`` with ``python -I`` in an empty temporary directory; (passed, why)."""
    guard = _GUARD.format(mem=memory_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="longseq-grade-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as f:
            f.write(guard + "\n" + source)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [sys.executable, "-I", path],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"timed out after {timeout:g} s"
    if proc.returncode == 0:
        return True, "passed"
    lines = err.decode(errors="replace").strip().splitlines()
    return False, lines[-1] if lines else f"exit status {proc.returncode}"


def grade_code(
    completion: str, problem, timeout: float = 10.0, chat: bool = False
) -> tuple[bool, str]:
    program = code_program(completion, problem, chat)
    test = textwrap.dedent(problem.answer)
    source = f"{program}\n\n{test}\n\ncheck({problem.entry_point})\n"
    ok, why = run_program(source, timeout)
    return ok, why
