"""streaming generate: each model in its role, guidance checked before any work, and
Ctrl-C keeps the frames made so far, which --resume continues."""

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
    return runner.invoke(app, ["streaming", "generate", PROMPT, *args], env={"COLUMNS": "300"})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
        (["--guidance", "-5"], "--guidance must be >= 0, got -5"),
        (["--anchor-guidance", "inf"], "--anchor-guidance must be a finite number"),
        (["--enhancer", "streaming-t2v"], "is a chunk-conditioned video generator, not an"),
        (["--enhancer", "streaming-frame-encoder"], "is not a video UNet"),
        (["--model", "streaming-enhancer"], "is the enhancer, not a video generator"),
        (["--model", "streaming-frame-encoder"], "not a StreamingT2V video model"),
        (["--resume", "missing.npy"], "--resume: cannot read missing.npy"),
        (["--guidance-interval", "0.6"], "--guidance-interval takes LO,HI"),
        (["--guidance-interval", "a,b"], "--guidance-interval takes LO,HI"),
        (["--guidance-interval", "0.6,0.2"], "--guidance-interval needs 0 <= LO < HI <= 1"),
    ],
)
def test_generate_refuses_before_writing(tmp_path, args, message):
    res = generate(*args, "-o", "sub/v.gif")
    assert res.exit_code == 2, res.output
    assert message in res.output and res.output.count("\n") == 1, res.output
    assert list(tmp_path.iterdir()) == []  # not even the folder of --out


def test_pipeline_refuses_nan_guidance():
    from longseq.streaming import StreamingT2VPipeline

    pipe = StreamingT2VPipeline.from_pretrained("streaming-t2v", None)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        pipe("a circle bounces slowly", 4, guidance_scale=float("nan"))


def test_ctrl_c_keeps_the_frames_and_resume_continues_them(tmp_path, monkeypatch):
    from longseq.media import read_video
    from longseq.streaming import StreamingT2VPipeline

    real, calls = StreamingT2VPipeline._chunk, []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(StreamingT2VPipeline, "_chunk", interrupted)
    args = ["--frames", "20", "--steps", "2", "--no-enhance", "--scale", "1", "-o", "v.gif"]
    res = generate(*args)
    assert res.exit_code == 130, res.output
    kept = np.load(tmp_path / "v.partial.npy")
    assert kept.shape == (8 + 4, 16, 16, 3)  # the first chunk (8) and one more (4 new)
    assert read_video(tmp_path / "v.gif").shape == kept.shape
    assert "--resume" in res.output
    monkeypatch.setattr(StreamingT2VPipeline, "_chunk", real)
    res = generate(*args, "--resume", "v.partial.npy")
    assert res.exit_code == 0, res.output
    video = read_video(tmp_path / "v.gif")
    assert video.shape == (20, 16, 16, 3)
    # the kept frames open the video (GIF palettes may move a level or two)
    assert np.abs(video[:12].astype(int) - kept.astype(int)).mean() < 2


def test_first_candidates_reach_the_scorer(tmp_path, monkeypatch):
    from longseq.streaming.critic import CaptionCritic

    real, seen = CaptionCritic.__call__, []

    def spy(self, candidates, prompt):
        seen.append((len(candidates), prompt))
        return real(self, candidates, prompt)

    monkeypatch.setattr(CaptionCritic, "__call__", spy)
    args = ["--frames", "8", "--steps", "2", "--no-enhance", "--scale", "1", "-o", "v.gif"]
    first = ("--first-chunk", "streaming-first")
    assert generate(*args, *first, "--first-candidates", "3").exit_code == 0
    assert generate(*args, *first).exit_code == 0  # streaming-first's default: 2
    assert generate(*args, *first, "--first-candidates", "1").exit_code == 0  # no choice
    assert generate(*args).exit_code == 0  # the model's own base: one sample, no scorer
    assert seen == [(3, PROMPT), (2, PROMPT)]
    res = generate(*args, "--first-candidates", "2")
    assert res.exit_code == 2 and "needs a first_chunk_scorer" in res.output, res.output
    # later chunks: 16 frames are the first chunk (8) and two more (4 new frames each)
    seen.clear()
    longer = ["--frames", "16", *args[2:]]
    res = generate(*longer, *first, "--first-candidates", "1", "--chunk-candidates", "3")
    assert res.exit_code == 0, res.output
    assert seen == [(3, PROMPT), (3, PROMPT)]
    res = generate(*longer, "--chunk-candidates", "2", "-o", "never.gif")
    assert (
        res.exit_code == 2
        and "--chunk-candidates chooses among chunks by a scorer, and "
        "streaming-t2v has none: give --first-chunk streaming-first"
        in res.output
    ), res.output
    assert res.output.count("\n") == 1 and not (tmp_path / "never.gif").exists()


def test_a_clip_folder_scores_the_first_chunks(tmp_path, monkeypatch):
    from longseq.streaming import ClipScorer

    from .test_critic import tiny_clip_folder

    folder = tiny_clip_folder(tmp_path / "clip")
    real, seen = ClipScorer.__call__, []

    def spy(self, candidates, prompt):
        seen.append(len(candidates))
        return real(self, candidates, prompt)

    monkeypatch.setattr(ClipScorer, "__call__", spy)
    args = ["--frames", "8", "--steps", "2", "--no-enhance", "--scale", "1", "-o", "v.gif"]
    res = generate(*args, "--first-scorer", str(folder), "--first-candidates", "3")
    assert res.exit_code == 0, res.output
    assert seen == [3]
    for bad, message in (
        (["--first-scorer", "nowhere"], "--first-scorer: nowhere is not a CLIP folder"),
        (
            ["--first-scorer", str(folder), "--first-candidates", "1"],
            "give --first-candidates or --chunk-candidates 2",
        ),
    ):
        res = generate(*args, *bad)
        assert res.exit_code == 2 and message in res.output, res.output
        assert res.output.count("\n") == 1, res.output
