from typer.testing import CliRunner

from longseq.cli import app

runner = CliRunner()


def test_help_lists_power_group():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "power" in res.output


def _commands(group, path=()):
    for name, cmd in getattr(group, "commands", {}).items():
        yield (*path, name), cmd
        yield from _commands(cmd, (*path, name))


def test_help_reads_plainly():
    """No "<bool>" after flags, no "{prompt}" in usage lines, and each docstring's first
    paragraph is one flowing sentence rather than broken where the source line ends."""
    import typer

    root = typer.main.get_command(app)
    paths = [()] + [p for p, _ in _commands(root)]
    assert ("power", "demo") in paths and ("streaming", "generate") in paths
    for path in paths:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, path
        assert "{" not in res.output, path
    res = runner.invoke(app, ["power", "--help"], env={"COLUMNS": "200"})
    assert any("best-of-N, MH and Power-SMC on held-out" in line for line in res.output.split("\n"))
    res = runner.invoke(app, ["streaming", "generate", "--help"], env={"COLUMNS": "200"})
    assert "generate [OPTIONS] PROMPT" in res.output


def test_checkpoints_lists_full_sha256_and_rounded_sizes():
    from longseq import hub

    res = runner.invoke(app, ["checkpoints"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    # the sha256 column is the last one; rich folds it over several lines at 80 columns
    last = [line.split("│")[-2].strip() for line in res.output.splitlines() if "│" in line]
    joined = "".join(last)
    for name, entry in hub.registry().items():
        assert entry["sha256"] in joined, name
        assert hub.format_size(hub.weights_file(name).stat().st_size) in res.output


def test_sizes_are_rounded_not_truncated():
    from longseq.hub import format_size

    assert format_size(955_150) == "1.0 MB"
    assert format_size(1_961_422) == "2.0 MB"
    assert format_size(1_807_088) == "1.8 MB"
    assert format_size(12_345) == "12 kB"


def test_threads_option_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        res = runner.invoke(app, ["--threads", "1", "checkpoints"])
        assert res.exit_code == 0, res.output
        assert torch.get_num_threads() == 1
        res = runner.invoke(app, ["--threads", "0", "checkpoints"])
        assert res.exit_code == 2
    finally:
        torch.set_num_threads(before)
    assert "--threads" in runner.invoke(app, ["--help"]).output


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    import os

    from longseq import utils

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for load, expected in ((0.0, 2), (0.4, 2), (1.0, 1), (1.7, 1), (6.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert utils.default_threads() == expected, load


def test_threads_has_an_upper_bound(monkeypatch):
    import torch

    from longseq import utils
    from longseq.utils import max_threads

    monkeypatch.setattr(utils, "usable_cores", lambda: 2)
    assert max_threads() == 16

    before = torch.get_num_threads()
    res = runner.invoke(app, ["--threads", "100000", "checkpoints"])
    assert res.exit_code == 2
    assert f"threads must be between 1 and {max_threads()}" in res.output
    assert torch.get_num_threads() == before  # refused before torch was touched
    res = runner.invoke(app, ["checkpoints"], env={"LONGSEQ_THREADS": "4096"})
    assert res.exit_code == 2 and "got 4096" in res.output


def test_progress_prints_lines_when_not_a_terminal(capsys):
    from longseq.utils import progress_bar

    with progress_bar("steps", 4, every=0) as advance:
        for _ in range(3):
            advance()
        advance(1, description="last step")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "steps: 0/4 (0%)",
        "steps: 1/4 (25%)",
        "steps: 2/4 (50%)",
        "steps: 3/4 (75%)",
        "last step: 4/4 (100%)",
    ]
    assert "left" in lines[1] and "left" not in lines[-1]
    with progress_bar("quiet", 100, every=3600) as advance:
        for _ in range(100):
            advance()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("quiet: 100/100")  # start and end only
