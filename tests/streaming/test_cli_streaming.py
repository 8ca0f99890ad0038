import json

import numpy as np
import pytest
from typer.testing import CliRunner

from longseq import hub
from longseq.cli import app

pytest.importorskip("diffusers")
pytestmark = pytest.mark.skipif(
    "streaming-t2v" not in hub.registry(), reason="StreamingT2V checkpoints not shipped"
)
runner = CliRunner()
PROMPT = "a triangle wanders quickly"


def generate(*args: str):
    return runner.invoke(app, ["streaming", "generate", PROMPT, *args])


def test_generate_writes_the_asked_length(tmp_path):
    from longseq.media import read_video

    out = tmp_path / "v.gif"
    res = generate("--frames", "13", "--steps", "2", "--scale", "1", "-o", str(out))
    assert res.exit_code == 0, res.output
    video = read_video(out)
    assert video.shape == (13, 32, 32, 3)  # enhanced to the enhancer's 32 px
    res = generate("--frames", "9", "--steps", "2", "--no-enhance", "--scale", "2", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert read_video(out).shape == (9, 32, 32, 3)  # 16 px base chunks, upscaled 2x


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "v.avi"], "--out must end in"),
        (["--frames", "0"], "--frames"),
        (["--blending", "mean"], "--blending"),
        (["--model", "nope"], "neither a shipped checkpoint"),
        (["--model", "power-arith-gpt"], "not a StreamingT2V video model"),
        (["--fps", "0"], "--fps must be a positive number"),
        (["--steps", "0"], "--steps"),
        (["--no-enhance", "--blending", "shared"], "which --no-enhance turns off"),
    ],
)
def test_generate_names_bad_input(tmp_path, args, message):
    res = generate(*args)
    assert res.exit_code == 2
    assert message in res.output


@pytest.mark.slow
def test_demo_writes_videos_and_metrics(tmp_path):
    res = runner.invoke(app, ["streaming", "demo", "--frames", "24", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"prompt", "world clip (32 px)", "base chunks (16 px)", "enhanced (32 px)"}
    assert m["world clip (32 px)"]["object_drift"] == 0
    assert np.isfinite(m["enhanced (32 px)"]["seam_jump_ratio"])
    for f in ("base.gif", "enhanced.mp4", "enhanced.gif", "strip.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_a_prompt_outside_the_world_gets_a_note(tmp_path):
    out = tmp_path / "v.gif"
    args = ["--frames", "1", "--steps", "1", "--no-enhance", "-o", str(out)]
    res = runner.invoke(app, ["streaming", "generate", "a cat playing the piano", *args])
    assert res.exit_code == 0, res.output
    assert "names none of their words" in " ".join(res.output.split())  # rich wraps lines
    assert "names none" not in " ".join(generate(*args).output.split())


def test_bad_demo_options_fail_before_any_work(tmp_path):
    res = runner.invoke(app, ["streaming", "demo", "--frames", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--frames" in res.output
    afile = tmp_path / "a-file"
    afile.write_text("")
    res = runner.invoke(app, ["streaming", "demo", "--out", str(afile)])
    assert res.exit_code == 2 and "is a file" in res.output


def test_a_failed_write_keeps_the_generated_frames(tmp_path, monkeypatch):
    from longseq import media

    def broken_write(path, frames, fps=8, scale=1):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(media, "write_video", broken_write)
    out = tmp_path / "v.gif"
    res = generate("--frames", "3", "--steps", "1", "--no-enhance", "-o", str(out))
    assert res.exit_code == 2
    assert "No space left on device" in res.output and "v.npy" in res.output
    kept = np.load(tmp_path / "v.npy")
    assert kept.shape == (3, 16, 16, 3) and kept.dtype == np.uint8
