"""Datasets: the shared CIFAR-10 archive, the cache, .npz / folder / archive sources, single images, bad input."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allconv import data
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar(cifar10_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> data.Splits:
    return data.load(cifar10_npz, cache_dir=tmp_path_factory.mktemp("cache"))


def test_shared_archive_counts_per_class(cifar: data.Splits) -> None:
    assert cifar.x_train.shape == (50000, 3, 32, 32) and cifar.x_train.dtype == torch.uint8
    assert cifar.x_test.shape == (10000, 3, 32, 32)
    assert cifar.classes == CIFAR10_CLASSES
    assert torch.bincount(cifar.y_train).tolist() == [5000] * 10
    assert torch.bincount(cifar.y_test).tolist() == [1000] * 10


def test_shared_archive_matches_raw_arrays(cifar: data.Splits, cifar10_test_arrays: tuple) -> None:
    x, y = cifar10_test_arrays
    assert torch.equal(cifar.x_test[:100], torch.from_numpy(x[:100]).permute(0, 3, 1, 2))
    assert torch.equal(cifar.y_test, torch.from_numpy(y))


def test_standardize_gives_published_stats(cifar: data.Splits) -> None:
    pre = Preprocess.fit("standardize", cifar.x_train)
    assert torch.allclose(pre.tensors()["mean"].flatten(), torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-4)
    assert torch.allclose(pre.tensors()["std"].flatten(), torch.tensor([0.2470, 0.2435, 0.2616]), atol=1e-4)


def test_second_load_comes_from_cache(cifar10_npz: Path, tmp_path: Path) -> None:
    first = data.load(cifar10_npz, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    t0 = time.perf_counter()
    second = data.load(cifar10_npz, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 5  # generous: a cache hit reads 4 .npy files, a miss decompresses 170 MB
    assert torch.equal(first.x_train, second.x_train) and second.classes == first.classes


def test_validation_split_is_seeded_and_disjoint() -> None:
    x = torch.arange(100).view(100, 1, 1, 1).expand(100, 3, 2, 2).to(torch.uint8)
    y = torch.arange(100) % 10
    a = data.split_validation(x, y, 20, seed=0)
    b = data.split_validation(x, y, 20, seed=0)
    c = data.split_validation(x, y, 20, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    train_ids, val_ids = set(a[0][:, 0, 0, 0].tolist()), set(a[2][:, 0, 0, 0].tolist())
    assert len(train_ids) == 80 and len(val_ids) == 20 and not train_ids & val_ids
    with pytest.raises(AllconvError, match="validation size"):
        data.split_validation(x, y, 100)


def _npz(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), y_train=np.arange(n) % 3,
             x_test=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), y_test=np.arange(4) % 3)
    return path


def test_npz_source(tmp_path: Path) -> None:
    s = data.load(_npz(tmp_path / "toy.npz"), cache_dir=tmp_path / "c")
    assert s.x_train.shape == (12, 3, 8, 8) and s.y_test.tolist() == [0, 1, 2, 0] and s.name == "toy"
    assert s.y_train.dtype == torch.int64


def _folder(root: Path) -> dict[str, bytes]:
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for ci, cls in enumerate(("cat", "dog")):
            for i in range(n):
                buf = io.BytesIO()
                mode = "L" if i == 1 else "RGB"  # grayscale files are converted to RGB
                Image.new(mode, (6, 6), color=40 * ci + i if mode == "L" else (40 * ci, i, 9)).save(buf, "PNG")
                files[f"{split}/{cls}/{i:04d}.png"] = buf.getvalue()
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return files


def test_image_folder_and_archives(tmp_path: Path) -> None:
    files = _folder(tmp_path / "toy")
    direct = data.load(tmp_path / "toy", cache_dir=tmp_path / "c")
    assert direct.classes == ["cat", "dog"] and direct.x_train.shape == (6, 3, 6, 6)
    assert direct.y_train.tolist() == [0, 0, 0, 1, 1, 1] and direct.y_test.tolist() == [0, 0, 1, 1]
    with zipfile.ZipFile(tmp_path / "toy.zip", "w") as z:
        for rel, blob in files.items():
            z.writestr(rel, blob)
    with tarfile.open(tmp_path / "toy.tar.xz", "w:xz") as t:
        t.add(tmp_path / "toy", arcname=".")
    for archive in ("toy.zip", "toy.tar.xz"):
        s = data.load(tmp_path / archive, cache_dir=tmp_path / "c")
        assert torch.equal(s.x_train, direct.x_train) and torch.equal(s.y_test, direct.y_test), archive


def test_load_image_any_mode_and_size(tmp_path: Path) -> None:
    Image.new("RGBA", (50, 20), (10, 200, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (7, 7), 99).save(tmp_path / "g.jpg")
    rgba = data.load_image(tmp_path / "a.png")
    assert rgba.shape == (3, 32, 32) and rgba.dtype == torch.uint8 and rgba[1].float().mean() > 150
    gray = data.load_image((tmp_path / "g.jpg").read_bytes(), size=16)
    assert gray.shape == (3, 16, 16) and (gray[0] == gray[2]).all()


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope.npz", "not found"),
    (lambda p: _write(p / "x.txt", b"hi"), "not a dataset"),
    (lambda p: _write(p / "bad.npz", b"garbage"), "not a readable .npz"),
    (lambda p: np.savez(p / "k.npz", x_train=np.zeros((1, 2, 2, 3), np.uint8)) or p / "k.npz", "missing array"),
    (lambda p: _write(p / "bad.zip", b"PK\x03\x04junk"), "unreadable archive"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no train/<class>/<image>"),
])
def test_bad_sources_give_one_line(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(AllconvError, match=match) as e:
        data.load(make(tmp_path), cache_dir=tmp_path / "c")
    assert "\n" not in str(e.value)


def test_corrupt_image_in_folder_names_the_file(tmp_path: Path) -> None:
    _folder(tmp_path / "toy")
    (tmp_path / "toy/train/cat/0002.png").write_bytes(b"not a png")
    with pytest.raises(AllconvError, match=r"train/cat/0002.png.*cannot read image"):
        data.load(tmp_path / "toy", cache_dir=tmp_path / "c")


def test_unreadable_image() -> None:
    with pytest.raises(AllconvError, match="cannot read image"):
        data.load_image(b"\x00\x01 not an image")


def test_named_dataset_without_download_is_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "tv"))
    with pytest.raises(AllconvError, match="--download"):
        data.load("cifar100", cache_dir=tmp_path / "c")
