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
