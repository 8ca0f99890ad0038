"""The wheel is the product: everything the package reads at run time is in its package
data, and an installed copy works from a folder outside the repository."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import longseq
from longseq.data.flowworld import sample_world
from longseq.media import write_image

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(longseq.__file__).parent


def _package_data_globs() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return meta["tool"]["setuptools"]["package-data"]["longseq"]


def _data_files() -> set[str]:
    """Every file of the package that is not Python source or a cache."""
    return {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


def test_package_data_globs_cover_every_data_file():
    covered = {str(p.relative_to(PACKAGE)) for g in _package_data_globs() for p in PACKAGE.glob(g)}
    missing = sorted(_data_files() - covered)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
    assert "checkpoints/registry.json" in covered


def test_checkpoints_fails_without_a_registry(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from longseq import hub
    from longseq.cli import app

    monkeypatch.setattr(hub, "REGISTRY_FILE", tmp_path / "registry.json")
    res = CliRunner().invoke(app, ["checkpoints"])
    assert res.exit_code == 2
    assert "registry.json is missing" in res.output


def test_checkpoints_reports_a_corrupted_file(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from longseq import hub
    from longseq.cli import app

    reg = hub.registry()
    name = sorted(reg)[0]
    bad = {name: {**reg[name], "sha256": "0" * 64}}
    (tmp_path / "registry.json").write_text(json.dumps(bad))
    monkeypatch.setattr(hub, "REGISTRY_FILE", tmp_path / "registry.json")
    res = CliRunner().invoke(app, ["checkpoints"], env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "corrupted" in res.output and name in res.output


def test_wheel_works_outside_the_repository(tmp_path):
    """Build the wheel from a copy of the sources (no build/ in the repository), unpack it
    in a temporary folder and run the CLI from there."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path / "dist")],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("longseq-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    reg = json.loads((site / "longseq/checkpoints/registry.json").read_text())
    assert reg
    for entry in reg.values():
        weights = site / "longseq/checkpoints" / entry["path"] / "model.safetensors"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == entry["sha256"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200", "LONGSEQ_THREADS": "1"}

    def cli(*args):
        code = "import longseq, sys; from longseq.cli import app; print(longseq.__file__); app()"
        return subprocess.run(
            [sys.executable, "-c", code, *args], cwd=work, env=env, capture_output=True, text=True
        )

    res = cli("checkpoints")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[0].startswith(str(site))  # the unpacked copy, not src/
    for name in reg:
        assert name in res.stdout
    assert "corrupted" not in res.stdout and "missing" not in res.stdout
    res = cli("shuffle", "demo", "--images", "40")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "shuffle-vim-shapes" in res.stdout and "recorded at training" in res.stdout
    res = cli("power", "sample", "12+34+5=", "--method", "temp", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in work.iterdir()) == []  # nothing written where it ran
    # KL-tracing with the shipped model's tracing settings, read from the wheel's config
    video = sample_world(3, 48, 2, split="test").render()
    frames = [tmp_path / "f0.png", tmp_path / "f1.png"]
    for path, frame in zip(frames, video, strict=True):
        write_image(path, frame)
    out = tmp_path / "flow"
    res = cli("kltrace", "flow", *map(str, frames), "--points", "20,20", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    config = json.loads((out / "flow.json").read_text())["config"]
    assert config["hold_motion"] is True and config["readout"] == "fit"
    # StreamingT2V with the first-chunk base and its critic, both loaded from the wheel
    gif = tmp_path / "first.gif"
    args = ("--frames", "8", "--steps", "2", "--no-enhance", "--scale", "1", "-o", str(gif))
    res = cli(
        "streaming",
        "generate",
        "a circle bounces slowly",
        "--first-chunk",
        "streaming-first",
        *args,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 frames of 16x16 written" in res.stdout
