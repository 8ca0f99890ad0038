"""Graders for reasoning evaluations: is a model's completion right?

Every grader first cuts a base model's run-on: what follows a new question
("Question:", "Problem:", "Q:" after a blank line) once an answer has been given
(:func:`before_run_on`).

* ``math`` -- the last non-empty ``\\boxed{...}`` of the completion (else the last
  expression math-verify finds) against the reference answer, compared for
  mathematical equivalence by `math-verify` (``1/2``, ``\\frac12`` and ``0.5``
  agree). A reference list such as ``2, 3`` is compared as a set, and several boxed
  answers (``\\boxed{2}`` and ``\\boxed{3}``) count as one list;
* ``mc`` -- multiple choice (GPQA-style): the letter the completion settles on, read
  in this order: ``\\boxed{C}``, "Final answer: (C)", "The answer is (C)" /
  "Answer: C", "option C", the last "(C)", a letter alone on the last line, the last
  capital letter standing alone. Only capital letters (or a letter in parentheses)
  count, and "A" before a lower-case word is the article, so "The answer is a bit
  subtle" or "A good start" read nothing;
* ``exact`` -- a number (GSM8K-style): the last non-empty ``\\boxed{}``, else the
  number after the first ``####`` (GSM8K's answers end there), else after the last
  "the answer is", else the last number of the completion. Numbers may be fractions (``1/2`` and ``\\frac{1}{2}``
  equal 0.5), carry thousands commas, ``$`` or ``%``, and a Unicode minus ``−``;
* ``code`` -- HumanEval-style: the program (see :func:`code_program`) runs with the
  problem's tests in :func:`longseq.power.sandbox.run_program`, and passes only if
  the tests ran to their end. See that module for what is contained.

:func:`grade` returns ``(correct, prediction)``. A grader whose package is missing
raises :class:`MissingExtra`, naming ``pip install 'longseq[eval]'``.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from fractions import Fraction

from longseq.power.sandbox import run_program

GRADERS = ("math", "mc", "exact", "code")
# raised whenever a grader reads answers differently: results files record it, and a
# rerun does not mix answers graded by two versions
GRADER_VERSION = 2
EXTRA_HINT = "pip install 'longseq[eval]'"
MINUS_SIGNS = "\u2212\u2012\u2013\ufe63\uff0d"  # minus, figure dash, en dash, small/full-width


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


# --- boxed answers and lists ------------------------------------------------------------


def boxed_answers(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order, braces balanced,
    empty ones left out."""
    found = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth = 0
        for j in range(m.end() - 1, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    if text[m.end() : j].strip():
                        found.append(text[m.end() : j].strip())
                    break
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{...}`` (or ``\\fbox{...}``)."""
    boxes = boxed_answers(text)
    return boxes[-1] if boxes else None


def split_list(text: str) -> list[str]:
    """Items of a comma-separated answer, commas inside brackets left alone
    (``2, 3`` has two items; ``(2, 3)`` and ``\\{2, 3\\}`` one)."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items.append(cur.strip())
    return [i for i in items if i]


# a new question after a blank line: where a base model runs on past its answer
_NEW_QUESTION = re.compile(r"\n\s*\n\s*(?:Question|Problem|Q)\s*\d*\s*[:.]")
_HAS_ANSWER = re.compile(r"\\(?:boxed|fbox)\s*\{|####|answer is|answer\s*:", flags=re.I)


def before_run_on(text: str) -> str:
    """``text`` up to the first new question ("Question:", "Problem:", "Q:" after a
    blank line) that follows an answer: what a base model writes after its answer is
    the start of another problem, not a second thought. A restated "Problem:" before
    any answer is kept."""
    for m in _NEW_QUESTION.finditer(text):
        if _HAS_ANSWER.search(text, 0, m.start()):
            return text[: m.start()]
    return text


def grade_math(completion: str, answer: str) -> tuple[bool, str]:
    mv = require_math_verify()
    gold = mv.parse(f"\\boxed{{{answer}}}")
    completion = before_run_on(completion)
    boxes = boxed_answers(completion)
    if not boxes:
        pred = mv.parse(completion)
        shown = str(pred[-1]) if pred else ""
        return bool(gold and pred and mv.verify(gold, pred)), shown
    candidates = [boxes[-1]]
    if len(split_list(answer)) > 1 and len(boxes) > 1:
        distinct = list(dict.fromkeys(boxes))
        candidates.append(", ".join(distinct))
    for shown in candidates:
        pred = mv.parse(f"\\boxed{{{shown}}}")
        if gold and pred and mv.verify(gold, pred):
            return True, shown
    return False, candidates[-1]


# --- numbers -----------------------------------------------------------------------------

_NUM = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?"
_FRAC = r"-?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
_ANSWER = rf"(?:{_FRAC}|{_NUM})"


def normalize_minus(text: str) -> str:
    return text.translate({ord(c): "-" for c in MINUS_SIGNS})


def _to_number(text: str) -> float | None:
    """The first number in ``text`` (a fraction ``a/b`` or ``\\frac{a}{b}`` included)."""
    text = normalize_minus(text).replace("$", "").replace("%", "").replace("\\!", "")
    m = re.search(r"(-?)\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", text)
    if m is not None:
        num, den = _to_number(m.group(2)), _to_number(m.group(3))
        if num is None or not den:
            return None
        return (-1 if m.group(1) else 1) * num / den
    m = re.search(_NUM, text)
    if m is None:
        return None
    parts = m.group(0).replace(",", "").replace(" ", "").split("/")
    try:
        value = Fraction(parts[0])
        if len(parts) == 2:
            value /= Fraction(parts[1])
    except (ValueError, ZeroDivisionError):
        return None
    return float(value)


def extract_number(completion: str) -> str | None:
    """The final numeric answer of a completion (see the module docstring)."""
    text = before_run_on(normalize_minus(completion))
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = re.search(rf"####\s*\$?\s*({_ANSWER})", text)
    if m:  # the first: GSM8K's format ends an answer there
        return m.group(1).strip()
    found = re.findall(rf"answer is[:\s*]*\$?\s*({_ANSWER})", text, flags=re.I)
    if found:  # the last: a second "the answer is" corrects the first
        return found[-1].strip()
    found = re.findall(_ANSWER, text)
    return found[-1] if found else None


def grade_number(completion: str, answer: str) -> tuple[bool, str]:
    gold = _to_number(answer.split("####")[-1])
    pred_text = extract_number(completion)
    pred = _to_number(pred_text) if pred_text is not None else None
    shown = pred_text or ""
    if gold is None or pred is None:
        return False, shown
    return math.isclose(gold, pred, rel_tol=1e-9, abs_tol=1e-9), shown


# --- multiple choice -----------------------------------------------------------------------


def extract_choice(completion: str, n_choices: int = 4) -> str | None:
    """The letter a completion settles on (see the module docstring), or None."""
    letters = "ABCDEFGHIJ"[:n_choices]
    cap = f"[{letters}]"
    any_case = f"[{letters}{letters.lower()}]"
    letter = rf"(?:\(\s*({any_case})\s*\)|\*\*({cap})\*\*|({cap})(?![\w']))"
    completion = before_run_on(completion)
    boxed = last_boxed(completion)
    if boxed is not None:
        m = re.search(rf"(?<![A-Za-z])({any_case})(?![A-Za-z])", boxed.replace("\\text", " "))
        if m:
            return m.group(1).upper()
    for pattern in (
        rf"(?i:final\s+answer)(?:\s+(?i:is))?\s*[:：]?\s*\**\s*{letter}",
        rf"(?i:answer)\s+(?i:is)\s*[:：]?\s*\**\s*(?i:option\s+|choice\s+)?{letter}",
        rf"(?i:answer)\s*[:：]\s*\**\s*(?i:option\s+|choice\s+)?{letter}",
        rf"(?i:\b(?:option|choice))\s*(?i:is\s+)?[:：]?\s*{letter}",
        rf"\(({any_case})\)",
        rf"(?m)^\W*({cap})\W*\Z",
        rf"(?<![\w'])(?!A\s+[a-z])({cap})(?![\w'])",
    ):
        found = list(re.finditer(pattern, completion))
        if found:
            return next(g for g in found[-1].groups() if g).upper()
    return None


def grade_choice(completion: str, answer: str, n_choices: int = 4) -> tuple[bool, str]:
    pred = extract_choice(completion, n_choices)
    return pred is not None and pred == answer.strip().upper(), pred or ""


# --- code ---------------------------------------------------------------------------

# top-level lines that end a plain (non-chat) completion of a function body, as in
# HumanEval; a whole function keeps later ``def`` / ``class`` lines (its helpers)
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n```")
FUNCTION_STOPS = ("\nif __name__", "\nprint(", "\nassert ", "\n```")
PYTHON_FENCES = ("", "python", "py", "python3", "py3", "ipython")

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", flags=re.S)


def code_blocks(text: str) -> list[str]:
    """Python code blocks of ``text``: fences tagged python (any case), py, python3 or
    untagged; an unclosed fence runs to the end (a cut-off answer)."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in PYTHON_FENCES]


def _cut(text: str, stops: tuple[str, ...], start: int = 0) -> str:
    cut = len(text)
    for stop in stops:
        i = text.find(stop, start)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def _defines(code: str, name: str) -> re.Match | None:
    return re.search(rf"(?m)^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code)


def _with_prompt(prompt: str, code: str) -> str:
    """A whole function after the prompt's own lines (its imports and helpers); the
    prompt's bare signature and docstring compile, and the answer redefines it."""
    try:
        compile(prompt, "<prompt>", "exec")
    except SyntaxError:
        prompt = "".join(
            line for line in prompt.splitlines(True) if re.match(r"(import|from)\s", line)
        )
    return prompt + "\n" + code


def definitions(code: str, start: int = 0) -> str:
    """The definitions of a whole-function answer: its imports, functions, classes,
    assignments and ``try`` blocks, without the top-level statements that run the
    model's own examples (calls such as ``print(...)``, ``unittest.main()`` or
    ``sys.exit(0)``, ``assert``, loops, ``raise``, ``if __name__ == "__main__":``).
    Code that does not parse is cut at the first such line after ``start``
    (``FUNCTION_STOPS``) and left for the test run to reject."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return _cut(code, FUNCTION_STOPS, start)
    lines = code.splitlines(keepends=True)
    kept = []
    for node in tree.body:
        if isinstance(node, ast.Expr | ast.Assert | ast.For | ast.AsyncFor | ast.While | ast.Raise):
            continue
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("".join(lines[first - 1 : node.end_lineno]))
    return "\n".join(kept) + "\n"


def code_program(completion: str, problem, chat: bool) -> str:
    """The program to test.

    A code block (in chat mode, or when the completion opens with one) is read first:
    the last block that defines the entry point, after the prompt's own lines, or else
    the prompt followed by the last block (a body). Without a block, a completion that
    defines the entry point at the top level is a whole function; anything else is the
    continuation of the prompt, cut at the first top-level line (``CODE_STOPS``). Of a
    whole function only its :func:`definitions` are kept: the model's own examples
    and test runs are not the problem's tests."""
    entry = problem.entry_point
    blocks = code_blocks(completion) if chat or completion.lstrip().startswith("```") else []
    for block in reversed(blocks):
        m = _defines(block, entry)
        if m:
            return _with_prompt(problem.question, definitions(block, m.end()))
    if blocks:
        return problem.question + _cut(blocks[-1], CODE_STOPS)
    m = _defines(completion, entry)
    if m:
        before = completion[: m.start()].splitlines()
        if all(re.match(r"\s*($|#|@|import\s|from\s)", line) for line in before):
            return _with_prompt(problem.question, definitions(completion, m.end()))
    return problem.question + _cut(completion, CODE_STOPS)


def grade_code(
    completion: str, problem, timeout: float = 10.0, chat: bool = False
) -> tuple[bool, str]:
    """Pass when the problem's tests run to their end in the contained program."""
    program = code_program(completion, problem, chat)
    test = textwrap.dedent(problem.answer)
    source = f"{program}\n\n{test}\n\ncheck({problem.entry_point})\n"
    return run_program(source, timeout)
