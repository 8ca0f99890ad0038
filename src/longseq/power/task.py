"""Per-task evaluation settings, from a small TOML file.

    from longseq.power.task import load_task
    task = load_task("gsm8k")  # shipped: math, gsm8k, gpqa, humaneval; or a .toml path

A task file sets the grader (``kind``), ``max_new_tokens``, ``stop`` strings (for
plain prompts only: a chat turn ends with the model's EOS), the
plain-text prompt (``plain_template``, used when there is no chat template), the
number of ``fewshot`` examples and, for plain prompts, the ``target_delimiter``
between an example's question and its solution (default: a space) and the
``fewshot_delimiter`` after each example (default: a blank line). Every key is optional; settings given explicitly
(to :func:`longseq.power.evaluate` or on the command line) win over the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

TASKS = ("math", "gsm8k", "gpqa", "humaneval")


@dataclass
class TaskConfig:
    name: str
    kind: str = "auto"
    max_new_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    plain_template: str | None = None
    fewshot: int = 0
    target_delimiter: str | None = None  # between a few-shot question and its solution
    fewshot_delimiter: str = "\n\n"  # after each few-shot example


def task_path(name: str) -> Path:
    return Path(str(resources.files("longseq.power") / "tasks" / f"{name}.toml"))


def load_task(source: str | Path) -> TaskConfig:
    """A shipped task by name (``TASKS``) or a ``.toml`` file of the same keys."""
    src = str(source)
    path = task_path(src) if src in TASKS else Path(src)
    if not path.is_file():
        raise ValueError(f"no task {src!r}: shipped tasks are {', '.join(TASKS)}, or a .toml file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from e
    known = {f.name for f in fields(TaskConfig)} - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    types = {"kind": str, "max_new_tokens": int, "plain_template": str, "fewshot": int}
    types |= {"target_delimiter": str, "fewshot_delimiter": str}
    for key, want in types.items():
        if key in raw and not isinstance(raw[key], want):
            raise ValueError(f"{path}: {key} must be a {want.__name__}, got {raw[key]!r}")
    if "stop" in raw and not (
        isinstance(raw["stop"], list) and all(isinstance(x, str) for x in raw["stop"])
    ):
        raise ValueError(f"{path}: stop must be a list of strings")
    if raw.get("max_new_tokens", 1) < 1 or raw.get("fewshot", 0) < 0:
        raise ValueError(f"{path}: max_new_tokens must be >= 1 and fewshot >= 0")
    return TaskConfig(name=path.stem, **raw)
