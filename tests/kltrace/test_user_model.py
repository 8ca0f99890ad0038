"""Users' frame-pair models: the protocol check names what is wrong, and the CLI loads a
model given as module:Class or file.py:Class."""

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from longseq.cli import app
from longseq.data.flowworld import sample_world
from longseq.kltrace import check_model, load_tracer, trace_points
from longseq.kltrace.tracing import load_user_model
from longseq.media import write_image

# A user's model: frame 1 is frame 0 moved by a fixed whole-pixel shift; each slot's
# distribution over a random codebook is a softmax of minus the distance to the patch
# frame 0 puts there. `OUTPUT` selects a (deliberately wrong) output format.
MODEL_SOURCE = """
import torch


class Shift:
    image_size, patch = 32, 4
    shift = (4, 0)  # (dx, dy) pixels of the model input
    OUTPUT = "logprobs"

    def __init__(self):
        self.codebook = torch.rand(64, 48, generator=torch.Generator().manual_seed(0))

    def frame1_logprobs(self, frame0, frame1, revealed):
        moved = frame0.roll((self.shift[1], self.shift[0]), (1, 2)) / 255
        p = moved.reshape(-1, 8, 4, 8, 4, 3).transpose(2, 3).reshape(-1, 64, 48)
        logits = -20 * torch.cdist(p, self.codebook[None].expand(len(p), -1, -1))
        if self.OUTPUT == "probs":
            return logits.softmax(-1)
        if self.OUTPUT == "logits":
            return logits
        if self.OUTPUT == "transposed":
            return logits.log_softmax(-1).transpose(1, 2)
        if self.OUTPUT == "short":
            return logits.log_softmax(-1)[:, :40]
        if self.OUTPUT == "int":
            return logits.long()
        if self.OUTPUT == "crash":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return logits.log_softmax(-1)


def make_shift():
    return Shift()


class Probs(Shift):
    OUTPUT = "probs"
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_frames.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import user_frames

    return importlib.reload(user_frames)


def _model(module, output):
    m = module.Shift()
    m.OUTPUT = output
    return m


def test_a_correct_model_passes_and_traces_its_motion(user_module):
    model = check_model(_model(user_module, "logprobs"))
    f0 = sample_world(0, 32, 2).render()[0]
    pts = np.array([[10.0, 12.0], [16.5, 20.5]])
    res = trace_points(model, f0, f0, pts)
    # the model moves frame 0 by 4 px right, whatever frame 1 shows
    np.testing.assert_allclose(res.targets["kl"], pts + [4, 0], atol=1.5)


@pytest.mark.parametrize(
    "output, words",
    [
        ("probs", "probabilities, not log-probabilities"),
        ("logits", "unnormalised logits"),
        ("transposed", "transposed"),
        ("short", "short: 40 of the 64 slots"),
        ("int", "float log-probabilities"),
        ("crash", "RuntimeError: mat1 and mat2"),
    ],
)
def test_wrong_outputs_are_named_in_one_line(user_module, output, words):
    with pytest.raises(TypeError, match=words) as e:
        check_model(_model(user_module, output))
    assert "\n" not in str(e.value)
    if output == "transposed":  # K == n_slots above; with another K the shape tells
        m = _model(user_module, output)
        m.codebook = torch.rand(100, 48)
        with pytest.raises(TypeError, match=r"\(2, 100, 64\).*transposed"):
            check_model(m)
    if output == "crash":
        return  # the model's own error, raised as it is while tracing
    # tracing checks every forward pass's output the same way
    f0 = sample_world(0, 32, 2).render()[0]
    with pytest.raises(TypeError, match=words):
        trace_points(_model(user_module, output), f0, f0, np.array([[8.0, 8.0]]))


def test_missing_members_and_bad_codebook_are_named(user_module):
    class NoCodebook:
        image_size, patch = 32, 4

        def frame1_logprobs(self, frame0, frame1, revealed):
            return None

    with pytest.raises(TypeError, match="lacks codebook"):
        check_model(NoCodebook())
    m = _model(user_module, "logprobs")
    m.codebook = torch.rand(64, 47)
    with pytest.raises(TypeError, match=r"codebook must be \(K, patch\*patch\*3\) = \(K, 48\)"):
        check_model(m)
    m.codebook = np.zeros((64, 48))
    with pytest.raises(TypeError, match="codebook must be a float torch.Tensor"):
        check_model(m)


def test_load_user_model_from_module_and_file(user_module, tmp_path):
    assert isinstance(load_user_model("user_frames:Shift"), user_module.Shift)
    assert isinstance(load_user_model("user_frames:make_shift"), user_module.Shift)
    model, cfg = load_tracer(f"{tmp_path / 'user_frames.py'}:Shift")
    assert type(model).__name__ == "Shift" and cfg.n_masks >= 1
    with pytest.raises(TypeError, match="probabilities"):
        load_user_model("user_frames:Probs")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        load_user_model("user_frames:Nope")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_user_model("no_such_module_xyz:Model")
    with pytest.raises(ValueError, match="does not exist"):
        load_user_model(f"{tmp_path / 'missing.py'}:Model")
    with pytest.raises(ValueError, match="module:Name"):
        load_user_model("user_frames:")


@pytest.fixture
def frames(tmp_path):
    video = sample_world(2, 32, 2, split="test").render()
    p0, p1 = tmp_path / "f0.png", tmp_path / "f1.png"
    write_image(p0, video[0])
    write_image(p1, video[1])
    return p0, p1


def test_cli_traces_with_a_model_file(user_module, frames, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    spec = f"{tmp_path / 'user_frames.py'}:Shift"
    args = ["kltrace", "flow", str(frames[0]), str(frames[1]), "--points", "10,14;18,22"]
    res = runner.invoke(app, [*args, "--model", spec, "--scales", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = (out / "flow.json").read_text()
    rec = json.loads(text)
    flows = [(p["flow_x"], p["flow_y"]) for p in rec["points"]]
    np.testing.assert_allclose(flows, [(4, 0), (4, 0)], atol=1.5)
    # the default settings have no refinement limits: strict JSON writes them as null
    assert "Infinity" not in text and rec["config"]["max_motion"] is None
    # the fit readout on a user's model, chosen from the command line
    res = runner.invoke(
        app, [*args, "--model", spec, "--scales", "1", "--readout", "fit", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "flow.json").read_text())
    assert rec["config"]["readout"] == "fit"
    flows = [(p["flow_x"], p["flow_y"]) for p in rec["points"]]
    np.testing.assert_allclose(flows, [(4, 0), (4, 0)], atol=1.5)
    res = runner.invoke(app, [*args, "--model", spec, "--readout", "peak", "--out", str(out)])
    assert res.exit_code == 2 and "readout must be one of" in res.output
    assert "Traceback" not in res.output
    # holding the motion needs a model that exposes it: named in one line
    res = runner.invoke(app, [*args, "--model", spec, "--hold-motion", "--out", str(out)])
    assert res.exit_code == 2 and "--hold-motion needs a model with a motion(" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1


def test_cli_names_a_wrong_model_in_one_line(user_module, frames, tmp_path):
    runner = CliRunner()
    args = ["kltrace", "flow", str(frames[0]), str(frames[1]), "--out", str(tmp_path / "o")]
    for spec, words in [
        (f"{tmp_path / 'user_frames.py'}:Probs", "returned probabilities"),
        (f"{tmp_path / 'user_frames.py'}:Missing", "has no 'Missing'"),
        ("not_a_module_xyz:Model", "cannot import"),
    ]:
        res = runner.invoke(app, [*args, "--model", spec])
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
        assert res.output.strip().startswith("error:") and res.output.count("\n") == 1
    bad = tmp_path / "broken.py"
    bad.write_text(textwrap.dedent("import torch\nraise ImportError('needs torchvision')\n"))
    res = runner.invoke(app, [*args, "--model", f"{bad}:Model"])
    assert res.exit_code == 2 and "cannot run" in res.output and "torchvision" in res.output
