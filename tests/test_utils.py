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
    import numpy as np

    from longseq.utils import process_memory_mib, reset_peak_memory

    before = process_memory_mib()
    assert before["peak"] >= before["rss"] > 0
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = process_memory_mib()
    assert during["rss"] - before["rss"] > 48 and during["peak"] >= during["rss"]
    del block
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
