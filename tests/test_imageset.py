"""allconv.imageset: any tree of pictures (flat, nested, or the {train,test}/<class>/ layout; folder, .zip or .tar) at
a model's input size, read as one picture is read (alpha on grey, 16-bit scaled), unreadable files skipped and
named, memory bounded before decoding, and the second load served from the cache."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allconv import imageset
from allconv.errors import AllconvError
from allconv.image import load_image
from vis.sources import resize_crop

FIT = partial(resize_crop, resize=40, size=32)


def _tree(root: Path) -> Path:
    """Pictures of several sizes and modes, plus a broken one, a text file and hidden files."""
    rng = np.random.default_rng(0)
    (root / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)).save(root / "b" / "c.jpg", quality=95)
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(root / "b" / "clear.png")  # fully transparent
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(root / "white16.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not a picture")
    (root / ".hidden.png").write_bytes((root / "a.png").read_bytes())
    return root


def _load(path: Path, tmp: Path, **kw) -> imageset.ImageSet:
    return imageset.load_imageset(path, 32, FIT, "test-fit", progress=False, cache_dir=tmp / "cache", **kw)


def test_any_tree_of_pictures_at_the_model_size(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pics")
    got = _load(root, tmp_path)
    assert got.names == ["a.png", "b/c.jpg", "b/clear.png", "white16.png"] and got.name == "pics" and got.split == ""
    assert got.images.dtype == torch.uint8 and got.images.shape == (4, 3, 32, 32)
    assert len(got.skipped) == 1 and got.skipped[0].startswith("broken.jpg: cannot read image")
    assert torch.equal(got.images[0], FIT(load_image(root / "a.png", size=None)))  # read exactly as --image reads
    assert (got.images[2] == 128).all() and (got.images[3] == 255).all()  # alpha on grey; 16-bit white is white


def test_train_test_layout_gives_the_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(
                    tmp_path / "ds" / split / c / f"{i}.png")
    test = _load(tmp_path / "ds", tmp_path)
    train = _load(tmp_path / "ds", tmp_path, split="train")
    assert test.split == "test" and test.names == [f"test/{c}/{i}.png" for c in ("cat", "dog") for i in range(2)]
    assert train.split == "train" and len(train.names) == 6


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_read_like_the_folder(tmp_path: Path, kind: str) -> None:
    root = _tree(tmp_path / "pics")
    arc = tmp_path / f"pics.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(arc, "w") as z:
            for p in sorted(root.rglob("*")):
                z.write(p, p.relative_to(root))
    else:
        with tarfile.open(arc, "w:gz") as t:
            for p in sorted(root.rglob("*")):
                t.add(p, str(p.relative_to(root)), recursive=False)
    folder, packed = _load(root, tmp_path), _load(arc, tmp_path)
    assert packed.names == folder.names and torch.equal(packed.images, folder.images) and packed.name == "pics"


def test_second_load_comes_from_the_cache_and_a_changed_file_is_reread(tmp_path: Path, monkeypatch) -> None:
    root = _tree(tmp_path / "pics")
    first = _load(root, tmp_path)
    calls: list[int] = []
    real = imageset.load_image
    monkeypatch.setattr(imageset, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _load(root, tmp_path)
    assert calls == [] and torch.equal(again.images, first.images) and again.skipped == first.skipped
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "a.png")  # new content, new size and time
    changed = _load(root, tmp_path)
    assert calls and (changed.images[0] == 0).all()


def test_limit_and_the_memory_bound(tmp_path: Path, monkeypatch) -> None:
    root = _tree(tmp_path / "pics")
    assert _load(root, tmp_path, limit=2).names == ["a.png", "b/c.jpg"]
    monkeypatch.setattr(imageset, "MAX_BYTES", 3 * 32 * 32 * 3)
    with pytest.raises(AllconvError, match=r"5 pictures at 32x32 need .* scan at most 3 with --limit 3$"):
        _load(root, tmp_path)


@pytest.mark.parametrize("case", ["missing", "npz", "empty", "all broken"])
def test_bad_folders_are_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x"
    if case == "npz":
        path = tmp_path / "x.npz"
        path.write_bytes(b"")
    elif case == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("no pictures")
    elif case == "all broken":
        path.mkdir()
        (path / "a.png").write_bytes(b"junk")
    want = {"missing": "not an image folder", "npz": "not an image folder", "empty": "no pictures",
            "all broken": "none of its 1 pictures could be read"}[case]
    with pytest.raises(AllconvError, match=want) as e:
        _load(path, tmp_path)
    assert "\n" not in str(e.value)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
