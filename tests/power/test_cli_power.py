import json

from typer.testing import CliRunner

from longseq.cli import app

runner = CliRunner()


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


def test_bad_output_and_device_fail_before_any_work():
    res = runner.invoke(app, ["power", "demo", "--json", "/nonexistent/dir/x.json"])
    assert res.exit_code == 2 and "/nonexistent/dir does not exist" in res.output
    assert "accuracy" not in res.output  # nothing was run
    res = runner.invoke(app, ["power", "sample", "1+1=", "--device", "bogus"])
    assert res.exit_code == 2 and "'bogus' is not a torch device" in res.output


def test_empty_prompt_is_rejected():
    res = runner.invoke(app, ["power", "sample", ""])
    assert res.exit_code == 2 and "PROMPT is empty" in res.output
