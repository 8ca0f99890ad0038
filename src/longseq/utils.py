"""Small shared helpers: seeding, device choice, progress bars, timing, torchrun."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when present, else CPU."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(
                f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
            ) from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_safetensors(
    tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, leaving the file readable as any other new file.

    (safetensors writes a private temporary file and renames it, so the weights would be
    readable by their owner only, mode 600; here they get 666 less the umask.)"""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def max_threads() -> int:
    """The most CPU threads :func:`set_threads` accepts: 4 per usable core, at least 16.
    (More only wait for each other; torch crashed at 100000 threads and hung at 4096.)"""
    return max(16, 4 * usable_cores())


def default_threads() -> int:
    """CPU threads for torch: the cores this process may use that are not already busy
    (the 1-minute load average), at least 1.

    Torch's default, one thread per core, is the fastest on an idle machine; when other
    processes keep cores busy its threads wait for each other, and the small models of this
    package then ran 3x (KL-tracing) to 100x (StreamingT2V chunks) slower than on 1 thread.
    """
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads to ``threads``; None chooses :func:`default_threads` unless
    ``OMP_NUM_THREADS`` already says how many (then torch's own setting stays). Returns the
    number in force."""
    if threads is not None:
        if not 1 <= threads <= max_threads():
            raise ValueError(
                f"threads must be between 1 and {max_threads()} (4 per core, at least "
                f"16), got {threads}"
            )
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), default_threads()))
    return torch.get_num_threads()


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the CUDA work queued on ``device`` (nothing to wait for elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object],
    device: torch.device | str | None = None,
    repeats: int = 1,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, read
    on ``clock`` (wall time; ``time.process_time`` for this process's CPU time), with
    ``device``'s queued CUDA work waited for before and after each call."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timed needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        times.append(clock() - t0)
    return statistics.median(times)


def describe_device(device: torch.device | str | None = None, threads: int | None = None) -> str:
    """What a benchmark ran on, for its results: the GPU's name on CUDA, else
    ``CPU (<processor>, <threads> thread(s))`` (``threads``: torch's count unless given)."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type != "cpu":
        return dev.type
    threads = torch.get_num_threads() if threads is None else threads
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"CPU ({cpu}, {threads} thread{'s' if threads != 1 else ''})"


def write_results(out: str | os.PathLike, results: dict, markdown: str) -> None:
    """A benchmark's results: ``out`` with ``.json`` (``results``, indented) and ``.md``
    (``markdown``), the folder created when missing."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")


class RemainingColumn(ProgressColumn):
    """Time left at the average pace since the start, as soon as one step is done.

    (rich's own column estimates the speed from the last 30 s only, so with steps slower
    than that, such as video chunks on a CPU, it never shows more than ``-:--:--``.)"""

    def render(self, task) -> Text:
        if task.finished:
            return Text("0:00:00", style="progress.remaining")
        if not task.completed or task.total is None or not task.elapsed:
            return Text("eta …", style="progress.remaining")
        left = task.elapsed / task.completed * (task.total - task.completed)
        h, rem = divmod(int(round(left)), 3600)
        return Text(f"{h}:{rem // 60:02d}:{rem % 60:02d}", style="progress.remaining")


def progress_columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        RemainingColumn(),
    )


def _clock(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


#: seconds between two progress lines when the output is not a terminal
PROGRESS_EVERY = float(os.environ.get("LONGSEQ_PROGRESS_EVERY", "10"))


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, every: float | None = None):
    """Progress of ``total`` steps; yields a callable ``advance(n=1, description=None)`` (a
    new description replaces the label).

    In a terminal (or notebook) it is a rich bar. Otherwise (output piped to a log file,
    CI) it prints a plain line when it starts, then every ``every`` seconds (default
    :data:`PROGRESS_EVERY`, env ``LONGSEQ_PROGRESS_EVERY``) and at each tenth of the
    steps (at most one a second), with the steps done, the time elapsed and the time
    left at the average pace, and once at the end."""
    if not enabled:
        yield lambda n=1, description=None: None
        return
    from rich import get_console

    console = get_console()
    if console.is_terminal or console.is_jupyter:
        with Progress(*progress_columns(), transient=True) as prog:
            task = prog.add_task(description, total=total)

            def advance(n: int = 1, description: str | None = None) -> None:
                if description is None:
                    prog.advance(task, n)
                else:
                    prog.update(task, advance=n, description=description)

            yield advance
        return
    import time

    every = PROGRESS_EVERY if every is None else every
    state = {"done": 0, "label": description, "last": time.perf_counter(), "printed": -1}
    start = state["last"]

    def line() -> None:
        done, elapsed = state["done"], time.perf_counter() - start
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        left = ""
        if 0 < done < total:
            left = f", about {_clock(elapsed / done * (total - done))} left"
        print(
            f"{state['label']}: {done}/{total}{pct}, {_clock(elapsed)} elapsed{left}",
            flush=True,
        )
        state["last"], state["printed"] = time.perf_counter(), done

    def advance(n: int = 1, description: str | None = None) -> None:
        state["done"] += n
        if description is not None:
            state["label"] = description
        since = time.perf_counter() - state["last"]
        tenth = total and state["done"] * 10 // total != max(state["printed"], 0) * 10 // total
        if state["done"] != state["printed"] and (
            since >= every or (tenth and since >= min(1.0, every))
        ):
            line()

    line()
    yield advance
    if state["done"] != state["printed"]:
        line()


def process_memory_mib() -> dict[str, float]:
    """This process's resident memory now (``rss``) and its peak so far (``peak``), MiB,
    read from ``/proc/self/status`` (Linux); NaN where that file does not exist."""
    out = {"rss": math.nan, "peak": math.nan}
    try:
        with open("/proc/self/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        for key, field in (("rss", "VmRSS:"), ("peak", "VmHWM:")):
            if line.startswith(field):
                out[key] = int(line.split()[1]) / 1024
    return out


def reset_peak_memory() -> None:
    """Make the peak resident memory of :func:`process_memory_mib` the current one
    (Linux ``/proc/self/clear_refs``), so a later peak is the peak of what runs after."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def warmup_cosine_lr(
    step: int, base_lr: float, warmup: int, total: int, floor: float = 0.05
) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor * base_lr`` at
    ``total`` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    frac = min((step - warmup) / max(1, total - warmup), 1.0)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def optimizer_step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, model: torch.nn.Module, clip: float = 1.0
) -> None:
    """Backward ``loss``, clip the gradient norm of ``model`` to ``clip`` and step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _rng_state(generator: torch.Generator | None) -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def save_training_state(
    path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator | None = None,
) -> None:
    """Everything needed to resume: model, optimizer, the step (or epoch) reached, and the
    random streams (torch's global one and ``generator``, e.g. the data order's), so that
    a resumed run draws what an uninterrupted one would have drawn."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}
    state["rng"] = _rng_state(generator)
    # written beside, then renamed: an interruption while saving keeps the previous state
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(
    path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    device,
    generator: torch.Generator | None = None,
) -> int:
    """Restore a :func:`save_training_state` file if it exists (random streams included,
    when it has them); return the step reached (0 when there is no file)."""
    from pathlib import Path

    if not Path(path).exists():
        return 0
    st = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    rng = st.get("rng")
    if rng is not None:
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if generator is not None and "generator" in rng:
            generator.set_state(rng["generator"].cpu())
    return int(st.get("step", st.get("epoch", 0)))


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether ``torchrun`` / ``accelerate launch`` started this process as one of
    several (``WORLD_SIZE`` > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def local_rank() -> int:
    """This process's place on its machine under ``torchrun`` (``LOCAL_RANK``; 0 without)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group ``torchrun`` (or ``accelerate launch``) describes in the
    environment (``env://``) when this process is one of several, and return the device
    this process works on.

    ``device`` is where this process's model runs: None for CUDA when present, else CPU;
    a CUDA device without an index (``"cuda"``) becomes ``cuda:LOCAL_RANK`` under
    ``torchrun``, one GPU per process. The group is NCCL on CUDA (this process's GPU made
    the current one), gloo on CPU. Without ``torchrun``'s environment nothing is
    initialized and the device is :func:`default_device`'s. A group already initialized
    is kept. Errors a user can hit (a variable ``torchrun`` sets missing, no
    ``torch.distributed``) are one-line ``ValueError``s."""
    dev = default_device(device)
    if not launched():
        return dev
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank())
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch is built without torch.distributed")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start with torchrun "
                "--nproc-per-node K or accelerate launch"
            )
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return dev
