import os

import pytest
import torch
from rich.progress import Progress

from longseq.utils import RemainingColumn, default_device


def test_remaining_time_shows_once_one_slow_step_is_done():
    clock = [0.0]
    prog = Progress(get_time=lambda: clock[0])
    task_id = prog.add_task("chunks", total=4)
    task = prog.tasks[0]
    assert RemainingColumn().render(task).plain == "eta …"
    clock[0] = 100.0  # one chunk took 100 s, longer than rich's 30 s speed window
    prog.advance(task_id)
    clock[0] = 101.0
    assert RemainingColumn().render(task).plain == "0:05:03"  # 3 chunks at 101 s each


def test_unknown_device_is_a_value_error():
    with pytest.raises(ValueError, match="'bogus' is not a torch device"):
        default_device("bogus")
    assert default_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_peak_memory_sees_an_allocation_and_resets_after_it_is_freed():
    import mmap

    from longseq.utils import process_memory_mib, reset_peak_memory

    before = process_memory_mib()
    assert before["peak"] >= before["rss"] > 0
    # 64 MiB of fresh pages, each touched (mapped directly: memory the allocator already
    # holds from earlier work would not raise the resident size)
    block = mmap.mmap(-1, 64 * 2**20)
    for i in range(0, len(block), mmap.PAGESIZE):
        block[i] = 1
    during = process_memory_mib()
    assert during["rss"] - before["rss"] > 48 and during["peak"] >= during["rss"]
    block.close()
    reset_peak_memory()
    after = process_memory_mib()
    assert after["peak"] - after["rss"] < 16  # the 64 MiB peak is forgotten


def test_timed_takes_the_median_after_warmup_on_the_clock_given():
    from longseq.utils import timed

    calls = []
    ticks = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # calls of 5, 1 and 3 seconds

    def fn():
        calls.append(1)

    assert timed(fn, "cpu", repeats=3, warmup=2, clock=lambda: next(ticks)) == 3.0
    assert len(calls) == 5  # 2 untimed, 3 timed
    assert timed(fn) >= 0.0
    with pytest.raises(ValueError, match="repeats >= 1"):
        timed(fn, repeats=0)


def test_device_description_names_the_cpu_and_its_threads():
    from longseq.utils import describe_device

    one = describe_device("cpu", threads=1)
    assert one.startswith("CPU (") and one.endswith(", 1 thread)")
    assert describe_device(None, threads=4).endswith(", 4 threads)")
    assert f", {torch.get_num_threads()} thread" in describe_device()


def _without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_without_torchrun_setup_distributed_initializes_nothing(monkeypatch):
    from longseq.utils import dist_info, launched, setup_distributed

    _without_torchrun(monkeypatch)
    assert not launched()
    assert setup_distributed("cpu") == torch.device("cpu")
    assert setup_distributed() == default_device()
    assert not torch.distributed.is_initialized() and dist_info() == (0, 1)


def test_setup_distributed_names_the_missing_torchrun_variables_in_one_line(monkeypatch):
    from longseq.utils import setup_distributed

    _without_torchrun(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError) as err:
        setup_distributed("cpu")
    msg = str(err.value)
    assert "MASTER_ADDR, MASTER_PORT not set" in msg and "torchrun" in msg and "\n" not in msg
    assert not torch.distributed.is_initialized()


def test_setup_distributed_joins_a_two_process_torchrun_group(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    script = tmp_path / "join.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from longseq.utils import dist_info, setup_distributed\n"
        "dev = setup_distributed('cpu')\n"
        "rank, world = dist_info()\n"
        "t = torch.tensor([rank + 1.0])\n"
        "dist.all_reduce(t)\n"
        f"out = {str(tmp_path)!r} + f'/rank{{rank}}.txt'\n"
        "open(out, 'w').write(f'rank {rank} of {world} on {dev}: {t.item():.0f}')\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    run = subprocess.run(
        [*cmd, "2", str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]  # the sum of 1 and 2
    assert lines == ["rank 0 of 2 on cpu: 3", "rank 1 of 2 on cpu: 3"]


def test_write_results_writes_both_files_into_a_new_folder(tmp_path):
    import json

    from longseq.utils import write_results

    out = tmp_path / "new" / "bench"
    write_results(out, {"a": [1, 2.5]}, "| a |\n|---|")
    assert json.loads(out.with_suffix(".json").read_text()) == {"a": [1, 2.5]}
    assert out.with_suffix(".md").read_text() == "| a |\n|---|\n"
