import shutil

import numpy as np
import pytest
import torch
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


def image_folder(root, per_class=6):
    """Two classes told apart by brightness, in files of several sizes and modes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, level in (("bright", 200), ("dark", 40)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = 10 + 3 * i, 24 - 2 * i
            pixels = np.clip(level + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            (img.convert("L") if i % 2 else img).save(root / name / f"{i}.png")
    return root


TINY = ["--depth", "2", "--dim", "16", "--patch", "4", "--img-size", "16"]


def test_shuffle_train_on_a_folder_of_images(tmp_path, monkeypatch):
    import json

    from longseq import hub

    data = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["shuffle", "train", "--data", str(data), "--out", str(out), *TINY]
    res = runner.invoke(app, [*args, "--epochs", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "2 classes, 10 train, 2 validation images" in text
    assert "% validation " in text and "test " not in text
    net, info = hub.load(out)
    assert info.extra["classes"] == ["bright", "dark"]
    assert info.extra["training"]["data"] == str(data)
    assert net.config.num_classes == 2 and net.config.img_size == 16
    result = json.loads((out / "result.json").read_text())
    assert result["test_acc"] is None and 0 <= result["val_acc"] <= 1
    # 2 epochs of 3 steps (10 images, batches of 4) were logged
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # a model of other classes is no shapes classifier: demo says so
    res = runner.invoke(app, ["shuffle", "demo", "--model", str(out), "--images", "8"])
    assert res.exit_code == 2 and "classes" in res.output
    # predict names the class of each file: the model's own argmax on the resized image
    monkeypatch.chdir(data)  # short names in the table
    res = runner.invoke(app, ["shuffle", "predict", "dark", "--model", str(out)])
    assert res.exit_code == 0, res.output
    from PIL import Image

    rows = [line.split("│")[1:4] for line in res.output.splitlines() if ".png" in line]
    assert len(rows) == 6
    for name, cls, prob in rows:
        img = Image.open(data / name.strip()).convert("RGB")
        x = torch.tensor(np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR)))
        x = (x.permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            p = net(x).softmax(-1)[0]
        assert cls.strip() == ["bright", "dark"][int(p.argmax())]
        assert abs(float(prob) - float(p.max())) < 1e-3
    res = runner.invoke(app, ["shuffle", "predict", str(tmp_path / "no.png"), "--model", str(out)])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["shuffle", "predict", str(tmp_path / "empty"), "--model", str(out)])
    assert res.exit_code == 2 and "no image files" in res.output


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.mkdir(), "has no class subfolders"),
        (lambda d: image_folder(d) and shutil.rmtree(d / "dark"), "one class only ('bright')"),
        (
            lambda d: image_folder(d) and (d / "dark" / "x.png").write_bytes(b"\x89PNG broken"),
            "cannot read image",
        ),
    ],
)
def test_folder_errors_are_one_line(tmp_path, make, message):
    data = tmp_path / "data"
    make(data)
    out = tmp_path / "run"
    res = runner.invoke(app, ["shuffle", "train", "--data", str(data), "--out", str(out), *TINY])
    assert res.exit_code == 2, res.output
    # progress lines may come first (reading images); the error is the last line, alone
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: --data:") and message in last
    assert res.output.count("error:") == 1 and "Traceback" not in res.output
    assert not out.exists()  # failed before any work


def test_shuffle_train_a_transformers_vit_with_the_shuffle_patched_in(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    keys = set(transformers.ViTForImageClassification(cfg).state_dict())
    data = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "shuffle",
            "train",
            "--data",
            str(data),
            "--model",
            str(tmp_path / "vit"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--p-max",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "ViTForImageClassification" in text and "2 blocks" in text
    trained = transformers.ViTForImageClassification.from_pretrained(out)
    assert set(trained.state_dict()) == keys  # the same keys: the shuffle adds none
    assert trained.config.id2label == {0: "bright", 1: "dark"}  # a new 2-class head
    before = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit")
    w0, w1 = before.vit.layers[0].mlp.fc1.weight, trained.vit.layers[0].mlp.fc1.weight
    assert not torch.equal(w0, w1)  # trained
    res = runner.invoke(app, ["shuffle", "predict", str(data), "--model", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count("bright") + res.output.count("dark") >= 12  # class names shown
    res = runner.invoke(
        app, ["shuffle", "train", "--model", str(tmp_path), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "not a transformers model folder" in res.output
