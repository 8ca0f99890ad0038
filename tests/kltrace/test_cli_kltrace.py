import json

import numpy as np
import pytest
from typer.testing import CliRunner

from longseq import hub
from longseq.cli import app
from longseq.data.flowworld import sample_world
from longseq.kltrace import DEFAULT_MODEL
from longseq.media import write_image

runner = CliRunner()
needs_model = pytest.mark.skipif(
    DEFAULT_MODEL not in hub.registry(), reason=f"{DEFAULT_MODEL} checkpoint not shipped"
)


@pytest.fixture
def frames(tmp_path):
    video = sample_world(2, 48, 2, split="test").render()
    p0, p1 = tmp_path / "f0.png", tmp_path / "f1.png"
    write_image(p0, video[0])
    write_image(p1, video[1])
    return p0, p1


@needs_model
def test_flow_writes_png_and_json(frames, tmp_path):
    out = tmp_path / "out"
    args = ["kltrace", "flow", str(frames[0]), str(frames[1]), "--points", "10,12;30.5,20"]
    opts = ["--masks", "1", "--scales", "1", "--passes", "1", "--out", str(out)]
    res = runner.invoke(app, [*args, *opts])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "flow.json").read_text())
    assert rec["config"]["passes"] == 1
    assert [(p["x"], p["y"]) for p in rec["points"]] == [(10.0, 12.0), (30.5, 20.0)]
    for p in rec["points"]:
        assert p["flow_x"] == pytest.approx(p["target_x"] - p["x"])
        assert 0 <= p["target_x"] <= 48 and 0 <= p["target_y"] <= 48
    assert rec["sequences_per_point"] == 1.5  # two perturbed rows share one clean row
    assert (out / "flow.png").stat().st_size > 0
    assert rec["config"]["hold_motion"] is True  # the shipped model's setting
    res = runner.invoke(app, [*args, *opts, "--free-motion"])
    assert res.exit_code == 0, res.output
    free = json.loads((out / "flow.json").read_text())
    assert free["config"]["hold_motion"] is False
    assert [p["flow_x"] for p in free["points"]] != [p["flow_x"] for p in rec["points"]]


@needs_model
def test_flow_rejects_bad_input(frames, tmp_path):
    f0, f1 = frames
    res = runner.invoke(app, ["kltrace", "flow", str(f0), str(tmp_path / "nope.png")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["kltrace", "flow", str(f0), str(f1), "--points", "1;2"])
    assert res.exit_code == 2 and "--points" in res.output
    res = runner.invoke(app, ["kltrace", "flow", str(f0), str(f1), "--points", "99,3"])
    assert res.exit_code == 2 and "outside" in res.output
    small = tmp_path / "small.png"
    write_image(small, np.zeros((20, 20, 3), np.uint8))
    res = runner.invoke(app, ["kltrace", "flow", str(small), str(small), "--points", "3,3"])
    assert res.exit_code == 2 and "smaller" in res.output
    res = runner.invoke(app, ["kltrace", "flow", str(f0), str(f1), "--scales", "2"])
    assert res.exit_code == 2 and "scales" in res.output
    res = runner.invoke(app, ["kltrace", "flow", str(f0), str(f1), "--model", "power-arith-gpt"])
    assert res.exit_code == 2 and "not a frame-pair" in res.output


@needs_model
def test_bench_small_writes_json(tmp_path):
    out = tmp_path / "b.json"
    args = ["kltrace", "bench", "--clips", "1", "--points", "3", "--frames", "2"]
    res = runner.invoke(app, [*args, "--masks", "1", "--scales", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())
    assert set(rec) == {"kl", "rgb", "farneback", "dis"}


def test_bench_table_fits_80_columns_without_cutting_anything():
    from rich.console import Console

    from longseq.kltrace.cli import _metrics_table

    keys = ["epe", "average_pts_within_thresh", "occlusion_accuracy", "average_jaccard"]
    m = {k: 0.123 for k in [*keys, "sec_per_point", *(f"pts_within_{d}" for d in (1, 2, 4, 8, 16))]}
    console = Console(width=80, record=True)
    console.print(_metrics_table({"kl": m, "rgb": m, "farneback": m, "dis": m}, "bench"))
    text = console.export_text()
    assert "…" not in text
    for word in ("metric", "farneback", "ms / point", "EPE (px)", "within 16 px (%)", "12.3"):
        assert word in text


def test_bad_outputs_fail_before_any_tracing(frames, tmp_path):
    res = runner.invoke(app, ["kltrace", "bench", "--json", "/nonexistent/dir/b.json"])
    assert res.exit_code == 2 and "/nonexistent/dir does not exist" in res.output
    afile = tmp_path / "a-file"
    afile.write_text("")
    res = runner.invoke(
        app, ["kltrace", "flow", str(frames[0]), str(frames[1]), "--out", str(afile)]
    )
    assert res.exit_code == 2 and "is a file" in res.output
    res = runner.invoke(app, ["kltrace", "demo", "--out", str(afile)])
    assert res.exit_code == 2 and "is a file" in res.output
