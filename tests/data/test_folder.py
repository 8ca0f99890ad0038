import numpy as np
import pytest
import torch
from PIL import Image

from longseq.data.folder import load_image_folder, read_image, scan_image_folder


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_images_are_read_as_rgb_and_resized(tmp_path):
    # a 20 x 12 (width x height) image: left half red, right half blue
    img = np.zeros((12, 20, 3), np.uint8)
    img[:, :10] = (255, 0, 0)
    img[:, 10:] = (0, 0, 255)
    write_png(tmp_path / "a.png", img)
    x = read_image(tmp_path / "a.png", 8)
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
    assert (x[:, :, :3] == torch.tensor([255, 0, 0])[:, None, None]).all()
    assert (x[:, :, 5:] == torch.tensor([0, 0, 255])[:, None, None]).all()
    # grayscale and RGBA files become three channels
    write_png(tmp_path / "g.png", np.full((5, 5), 77))
    assert (read_image(tmp_path / "g.png", 4) == 77).all()
    Image.new("RGBA", (6, 6), (10, 20, 30, 128)).save(tmp_path / "t.png")
    assert read_image(tmp_path / "t.png", 3)[:, 0, 0].tolist() == [10, 20, 30]


def make_folder(root, counts):
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", np.full((6, 6, 3), 10 * k + i))
    return root


def test_split_holds_out_each_class_with_a_fixed_seed(tmp_path):
    root = make_folder(tmp_path / "d", {"b": 10, "a": 5, "c": 2})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    data = load_image_folder(root, 4, val_fraction=0.2)
    assert data["classes"] == ["a", "b", "c"]  # sorted folder names
    (xt, yt), (xv, yv) = data["train"], data["val"]
    assert torch.bincount(yv).tolist() == [1, 2, 1]  # 20% of each, at least one
    assert torch.bincount(yt).tolist() == [4, 8, 1]
    # every image once, in one split (pixel value 10 * class + index identifies it)
    ids = sorted(xt[:, 0, 0, 0].tolist() + xv[:, 0, 0, 0].tolist())
    assert ids == list(range(15)) + [20, 21]  # b: 0-9, a: 10-14, c: 20-21
    again = load_image_folder(root, 4, val_fraction=0.2)
    assert torch.equal(again["val"][0], xv)
    other = load_image_folder(root, 4, val_fraction=0.2, seed=1)
    assert not torch.equal(other["val"][0], xv)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "has no class subfolders"),
        ({"only": 3}, r"one class only \('only'\)"),
        ({"a": 3, "b": 0}, "class folder .*b has no image files"),
    ],
)
def test_layout_errors(tmp_path, layout, message):
    root = make_folder(tmp_path / "d", layout)
    root.mkdir(exist_ok=True)
    for name, n in layout.items():
        if n == 0:
            (root / name).mkdir()
    with pytest.raises(ValueError, match=message):
        scan_image_folder(root)


def test_unreadable_file_and_missing_folder(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image_folder(root, 4)
    with pytest.raises(ValueError, match="is not a folder"):
        scan_image_folder(tmp_path / "nowhere")
    root2 = make_folder(tmp_path / "e", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="too few images for a validation split"):
        load_image_folder(root2, 4)
