import json

from typer.testing import CliRunner

from longseq.cli import app

runner = CliRunner()


def test_help_lists_power_group():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "power" in res.output


def test_power_sample_smc_prints_a_verified_shape():
    res = runner.invoke(app, ["power", "sample", "47+85+23=", "--particles", "8"])
    assert res.exit_code == 0, res.output
    assert "47+85+23=" in res.output
    assert "particles" in res.output


def test_power_demo_small_writes_json(tmp_path):
    out = tmp_path / "demo.json"
    res = runner.invoke(
        app,
        [
            "power",
            "demo",
            "--problems",
            "4",
            "--particles",
            "4",
            "--mh-steps",
            "1",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == [
        "temp-1",
        "temp-1/alpha",
        "best-of-n",
        "mh",
        "smc-no-ramp",
        "smc",
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n_problems"] == 4 for r in rows)


def test_bad_inputs_give_clean_errors():
    res = runner.invoke(app, ["power", "sample", "4*4=", "--particles", "2"])
    assert res.exit_code == 2 and "vocabulary" in res.output
    res = runner.invoke(app, ["power", "sample", "1+1=", "--model", "nope"])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["power", "sample", "1+1=", "--method", "beam"])
    assert res.exit_code == 2 and "--method" in res.output
    res = runner.invoke(app, ["power", "demo", "--alpha", "-1"])
    assert res.exit_code == 2 and "alpha" in res.output


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
