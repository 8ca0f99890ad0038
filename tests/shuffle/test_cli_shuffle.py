from typer.testing import CliRunner

from longseq.cli import app

runner = CliRunner()


def test_shuffle_train_then_demo_on_the_result(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "shuffle",
            "train",
            "--out",
            str(out),
            "--depth",
            "2",
            "--dim",
            "16",
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--batch-size",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists()
    grid = tmp_path / "grid.png"
    res = runner.invoke(
        app, ["shuffle", "demo", "--model", str(out), "--images", "40", "--grid", str(grid)]
    )
    assert res.exit_code == 0, res.output
    assert "fresh images" in res.output and grid.exists()


def test_shuffle_train_rejects_bad_options(tmp_path):
    res = runner.invoke(app, ["shuffle", "train", "--out", str(tmp_path), "--schedule", "cos"])
    assert res.exit_code == 2 and "schedule" in res.output
    res = runner.invoke(app, ["shuffle", "train", "--out", str(tmp_path), "--p-max", "2"])
    assert res.exit_code == 2 and "p-max" in res.output


def test_bad_grid_and_lr_fail_before_any_work(tmp_path):
    res = runner.invoke(app, ["shuffle", "demo", "--grid", "/nonexistent/g.png"])
    assert res.exit_code == 2 and "/nonexistent does not exist" in res.output
    res = runner.invoke(app, ["shuffle", "demo", "--grid", str(tmp_path / "g.txt")])
    assert res.exit_code == 2 and "--grid must end in .png" in res.output
    res = runner.invoke(app, ["shuffle", "train", "--out", str(tmp_path), "--lr", "-1"])
    assert res.exit_code == 2 and "--lr must be > 0" in res.output
    assert not (tmp_path / "metrics.jsonl").exists()
