"""Datasets: the shared CIFAR-10 archive, the cache, .npz / folder / archive sources, single images, bad input."""

from __future__ import annotations

import io
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allconv import data
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess
from datakit import toy_npz as _npz

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
    x_tr, _, x_val, y_val = data.split_validation(x, y, 0)  # --val-size 0: train on every image
    assert torch.equal(x_tr, x) and len(x_val) == len(y_val) == 0


def test_a_bare_validation_split_is_the_trainers() -> None:
    from allconv.config import TrainConfig

    x, y = torch.arange(6000).view(6000, 1, 1, 1).to(torch.int32), torch.arange(6000) % 10
    cfg = TrainConfig()
    bare, trainers = data.split_validation(x, y), data.split_validation(x, y, cfg.val_size, cfg.seed)
    assert len(bare[2]) == 5000 and all(torch.equal(u, v) for u, v in zip(bare, trainers))


def _images_npz(root: Path, x: np.ndarray) -> Path:
    np.savez(root / "i.npz", x_train=x, y_train=np.arange(len(x)) % 2, x_test=x, y_test=np.arange(len(x)) % 2)
    return root / "i.npz"


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 4, 3)], ids=["NCHW", "both-3-means-NCHW"])
def test_npz_images_in_nchw_load_as_they_are(tmp_path: Path, shape: tuple[int, ...]) -> None:
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    assert np.array_equal(data.load(_images_npz(tmp_path, x), cache_dir=tmp_path / "c").x_train.numpy(), x)


def test_a_folder_takes_its_first_images_width(tmp_path: Path) -> None:
    """Every image comes out square at the first image's width; the others are center-cropped and resized, whichever
    side matches (3 wide as well: the channel count is not a side). Files that are not images at <split>/<class>/
    are ignored."""
    for root, sizes in (("f", [(8, 6), (6, 6), (6, 8)]), ("three", [(3, 3), (3, 5), (5, 3)])):
        for i, size in enumerate(sizes):
            (tmp_path / root / "train" / "cat").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (9, 9, 9)).save(tmp_path / root / "train" / "cat" / f"{i}.png")
        (tmp_path / root / "test" / "cat").mkdir(parents=True)
        Image.new("RGB", (10, 10), (9, 9, 9)).save(tmp_path / root / "test" / "cat" / "0.png")
    _write(tmp_path / "f" / "train" / "cat" / "notes.txt", b"not an image")
    Image.new("RGB", (3, 3)).save(tmp_path / "f" / "train" / "loose.png")  # no class folder
    s = data.load(tmp_path / "f", cache_dir=tmp_path / "c")
    assert s.x_train.shape == (3, 3, 8, 8) and s.x_test.shape == (1, 3, 10, 10)
    assert data.load(tmp_path / "three", cache_dir=tmp_path / "c").x_train.shape == (3, 3, 3, 3)


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


def test_folder_images_decode_transparency_and_16_bit_alike(tmp_path: Path) -> None:
    """A dataset folder decodes its images as allconv.image does: transparent pixels grey, 16-bit levels scaled."""
    for split in ("train", "test"):
        (tmp_path / "toy" / split / "a").mkdir(parents=True)
        Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "toy" / split / "a" / "clear.png")
        Image.fromarray(np.full((8, 8), 25700, np.uint16)).save(tmp_path / "toy" / split / "a" / "grey16.png")
    s = data.load(tmp_path / "toy", cache_dir=tmp_path / "c")
    assert (s.x_train[0] == 128).all() and (s.x_test[1] == 100).all()  # old decode: black, and 255 by clipping


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope.npz", "not found"),
    (lambda p: _write(p / "x.txt", b"hi"), "not a dataset"),
    (lambda p: _write(p / "bad.npz", b"garbage"), "not a readable .npz"),
    (lambda p: _write(p / "empty.npz", b""), "not a readable .npz"),
    (lambda p: _write(p / "cut.npz", _npz(p / "whole.npz").read_bytes()[:300]), "not a readable .npz"),
    (lambda p: np.savez(p / "k.npz", x_train=np.zeros((1, 2, 2, 3), np.uint8)) or p / "k.npz", "missing array"),
    (lambda p: _write(p / "bad.zip", b"PK\x03\x04junk"), "unreadable archive"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no train/<class>/<image>"),
    (lambda p: _folder(p / "toy") and shutil.rmtree(p / "toy" / "test") or p / "toy", "needs both splits"),
    (lambda p: _images_npz(p, np.zeros((2, 8, 8, 3), np.float32)), r"must be uint8 .* got float32 \(2, 8, 8, 3\)"),
    (lambda p: _images_npz(p, np.zeros((2, 8, 8), np.uint8)), r"must be uint8 .* got uint8 \(2, 8, 8\)"),
    (lambda p: _images_npz(p, np.zeros((2, 8, 8, 4), np.uint8)), r"must be uint8 .* got uint8 \(2, 8, 8, 4\)"),
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
    with pytest.raises(AllconvError, match=r"^cifar100 is not in .*; pass --download to fetch it with torchvision"):
        data.load("cifar100", cache_dir=tmp_path / "c")


def test_the_offline_copy_is_the_one_the_environment_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cifar10", "cifar100"):
        monkeypatch.setenv(f"ALLCONV_{name.upper()}", str(_npz(tmp_path / f"{name}.npz")))
    assert data.find_offline_cifar10() == data.find_offline("cifar10") == tmp_path / "cifar10.npz"
    assert data.find_offline("cifar100") == tmp_path / "cifar100.npz"


def test_a_reason_is_one_short_line() -> None:
    assert data._reason(RuntimeError("first line " + "x" * 200 + "\nsecond")) == ("first line " + "x" * 200)[:100]
    assert data._reason(EOFError()) == "EOFError"
    assert data._reason(urllib.error.URLError(OSError(-3, "no DNS"))) == "[Errno -3] no DNS"


def test_a_broken_torchvision_folder_says_to_delete_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "tv"))
    (tmp_path / "tv" / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)  # present, but holds no batches
    with pytest.raises(AllconvError, match=r"^cifar10 in .* is unreadable \(.*\); delete the folder and pass "
                                           r"--download$"):
        data.load("cifar10", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_a_torchvision_folder_is_read_with_its_own_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                          folder: str) -> None:
    """torchvision's CIFAR10 / CIFAR100 (stand-ins here: the real ones check their files' md5 sums) as NCHW Splits."""
    from torchvision import datasets

    def stand_in(tag: str) -> type:
        class Stand:
            def __init__(self, root: str, train: bool, download: bool) -> None:
                self.data = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)[: 2 if train else 1]
                self.targets, self.classes = [3] * len(self.data), [f"{tag}{i}" for i in range(10)]
        return Stand

    monkeypatch.setattr(datasets, "CIFAR10", stand_in("ten"))
    monkeypatch.setattr(datasets, "CIFAR100", stand_in("hundred"))
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "tv"))
    (tmp_path / "tv" / name / folder).mkdir(parents=True)
    s = data.load(name, cache_dir=tmp_path / "c")
    assert s.classes[0] == ("ten0" if name == "cifar10" else "hundred0")
    assert s.x_train.shape == (2, 3, 32, 32) and len(s.x_test) == 1 and s.y_train.tolist() == [3, 3]
    assert s.x_train[1, 2, 0, 1] == (32 * 32 * 3 + 3 + 2) % 256  # pixel (0, 1) of image 1, blue: NHWC to NCHW


def test_named_dataset_download_without_network_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "tv"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's download calls
    with pytest.raises(AllconvError, match=r"^could not download cifar10 \(.*name resolution\); check the network, "
                       r"or pass --data with an offline .npz / image folder$") as e:
        data.load("cifar10", cache_dir=tmp_path / "c", download=True)
    assert "\n" not in str(e.value)


# --- labels ------------------------------------------------------------------------------------------------------

def _labelled(path: Path, y_train, y_test=(0, 1), **extra) -> Path:
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    np.savez(path, x_train=np.zeros((len(y_train), 4, 4, 3), np.uint8), y_train=y_train,
             x_test=np.zeros((len(y_test), 4, 4, 3), np.uint8), y_test=y_test, **extra)
    return path


@pytest.mark.parametrize("y_train, y_test, extra, match", [
    ([0.0, 1.0, 2.0], [0, 1], {}, r"y_train holds float64 labels; store integer class indices"),
    ([True, False], [0, 1], {}, r"y_train holds bool labels"),
    ([0, 1, -1], [0, 1], {}, r"y_train has label -1; labels must be class indices 0..C-1"),
    ([0, 1, 2, 0], [0, 999], {}, r"y_test has label 999, which would make 1000 classes but the labels hold only 4"),
    ([0, 1, 2, 9], [0, 1], {}, r"y_train has label 9, which would make 10 classes but the labels hold only 4"),
    (list(range(1001)), [0, 1], {}, r"y_train has label 1000, which would make 1001 classes \(at most 1000\)"),
    ([0, 1, 3], [0, 1], {"label_names": np.array(["a", "b", "c"])},
     r"y_train has label 3 but label_names lists only 3 classes \(0..2\)"),
    (np.zeros(0, np.int64), [0, 1], {}, r"x_train and y_train are empty"),
])
def test_bad_labels_are_refused(tmp_path: Path, y_train, y_test, extra, match: str) -> None:
    with pytest.raises(AllconvError, match=match) as e:
        data.load(_labelled(tmp_path / "l.npz", y_train, y_test, **extra), cache_dir=tmp_path / "c")
    assert "\n" not in str(e.value) and "l.npz" in str(e.value)


def test_labels_with_a_gap_or_spare_names_are_fine(tmp_path: Path) -> None:
    gap = data.load(_labelled(tmp_path / "gap.npz", np.array([0, 1, 3], np.uint8), [2, 3]), cache_dir=tmp_path / "c")
    assert gap.classes == ["0", "1", "2", "3"] and gap.y_train.dtype == torch.int64
    half = data.load(_labelled(tmp_path / "half.npz", [0, 3], [3, 0]), cache_dir=tmp_path / "c")
    assert half.classes == ["0", "1", "2", "3"]  # 4 classes, 2 of them used: as many unused as used is allowed
    named = data.load(_labelled(tmp_path / "n.npz", [0, 1], [1, 0], label_names=np.array(["a", "b", "c"])),
                      cache_dir=tmp_path / "c")
    assert named.classes == ["a", "b", "c"]


# --- archive limits ------------------------------------------------------------------------------------------------

def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return path


def test_archive_limits_are_inclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member of exactly the image cap, members totalling exactly the archive cap, and exactly MAX_RATIO x the
    archive's bytes on disk (an empty file counts as 1 byte) pass; one byte more is refused."""
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 100)
    monkeypatch.setattr(data, "MAX_RATIO", 200)
    arc, empty = _write(tmp_path / "a.zip", bytes(1000)), _write(tmp_path / "e.zip", b"")
    cases = [(arc, True, 100, "declares 101 bytes uncompressed but no image needs more than 100 bytes"),
             (arc, False, 200_000, r"declare 195.3 KiB uncompressed from 1000 bytes on disk \(over 200x\)"),
             (empty, False, 200, r"declare 201 bytes uncompressed from 1 bytes on disk")]
    for path, image, limit, refusal in cases:
        check = data._size_check(path, lambda _name, image=image: image)
        check("train/cat/0.png", limit)
        with pytest.raises(AllconvError, match=refusal):
            check("train/cat/1.png", 1) if not image else data._size_check(path, lambda _n: True)("x.png", limit + 1)
    monkeypatch.setattr(data, "MAX_RATIO", 50)  # the ratio counts only once the total passes the image cap
    check = data._size_check(empty, lambda _name: False)
    check("a", 100)
    with pytest.raises(AllconvError, match=r"declare 101 bytes uncompressed from 1 bytes on disk \(over 50x\)"):
        check("b", 1)
    monkeypatch.setattr(data, "MAX_RATIO", 10**9)
    monkeypatch.setattr(data, "MAX_ARCHIVE_BYTES", 300_000)
    check = data._size_check(arc, lambda _name: False)
    check("a", 300_000)
    with pytest.raises(AllconvError, match="members declare over 293.0 KiB uncompressed"):
        check("b", 1)


def test_sizes_are_named_in_binary_units() -> None:
    assert [data._size(n) for n in (1023, 1024, 1 << 20, 3 << 30)] == ["1023 bytes", "1.0 KiB", "1.0 MiB", "3.0 GiB"]


def test_zip_member_declaring_gigabytes_is_refused_before_reading(tmp_path: Path) -> None:
    blob = _zip(tmp_path / "a.zip", {"train/cat/0.bmp": b"x" * 100, "test/cat/0.bmp": b"y" * 100}).read_bytes()
    huge = (3 << 30).to_bytes(4, "little")
    local, central = blob.index(b"PK\x03\x04"), blob.index(b"PK\x01\x02")  # patch the first member's sizes
    blob = blob[:local + 22] + huge + blob[local + 26:central + 24] + huge + blob[central + 28:]
    with pytest.raises(AllconvError, match=r"member train/cat/0.bmp declares 3.0 GiB uncompressed but no image "
                       r"needs more than 64.0 MiB; the archive is damaged or a zip bomb"):
        data.load(_write(tmp_path / "bomb.zip", blob), cache_dir=tmp_path / "c")


def test_zip_member_over_the_image_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    path = _zip(tmp_path / "z.zip", {"train/cat/big.bmp": bytes(2 << 20), "test/cat/0.png": b"x"})
    with pytest.raises(AllconvError, match=r"member train/cat/big.bmp declares 2.0 MiB"):
        data.load(path, cache_dir=tmp_path / "c")


def test_zip_with_absurd_compression_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    path = _zip(tmp_path / "z.zip", {f"train/cat/{i}.bmp": bytes(900 << 10) for i in range(3)})
    with pytest.raises(AllconvError, match=r"members declare 1.8 MiB uncompressed from [\d.]+ KiB on disk "
                       r"\(over 100x\), which looks like a zip bomb"):
        data.load(path, cache_dir=tmp_path / "c")


def test_archive_over_the_total_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_ARCHIVE_BYTES", 1 << 20)
    rng = np.random.default_rng(0)
    path = _zip(tmp_path / "z.zip", {f"train/cat/{i}.bmp": rng.bytes(600 << 10) for i in range(2)})
    with pytest.raises(AllconvError, match=r"members declare over 1.0 MiB uncompressed; keep only the train/ and "
                       r"test/ images"):
        data.load(path, cache_dir=tmp_path / "c")


def test_tar_gz_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as t:
        for i in range(3):
            info = tarfile.TarInfo(f"train/cat/{i}.bmp")
            info.size = 900 << 10
            t.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(AllconvError, match=r"b.tar.gz: members declare 1.8 MiB uncompressed .* zip bomb"):
        data.load(tmp_path / "b.tar.gz", cache_dir=tmp_path / "c")


def test_tar_reads_only_the_images_it_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path / "toy")
    (tmp_path / "toy" / "notes.bin").write_bytes(bytes(2 << 20))  # over the (lowered) image limit, but not an image
    with tarfile.open(tmp_path / "toy.tar", "w") as t:
        t.add(tmp_path / "toy", arcname="toy")
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    read: list[str] = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m))
    s = data.load(tmp_path / "toy.tar", cache_dir=tmp_path / "c")
    assert s.x_train.shape == (6, 3, 6, 6) and len(read) == 10 and all(n.endswith(".png") for n in read)


def test_damaged_zip_member_names_the_member(tmp_path: Path) -> None:
    files = _folder(tmp_path / "toy")
    with zipfile.ZipFile(tmp_path / "toy.zip", "w") as z:  # stored: the member's bytes lie in the file as they are
        for rel, blob in files.items():
            z.writestr(rel, blob)
    raw = bytearray((tmp_path / "toy.zip").read_bytes())
    at = raw.index(files["train/dog/0001.png"]) + 40
    raw[at] ^= 0xFF
    (tmp_path / "toy.zip").write_bytes(raw)
    with pytest.raises(AllconvError, match=r"^train/dog/0001.png: unreadable \(Bad CRC-32.*\); the archive or file "
                       r"is damaged$"):
        data.load(tmp_path / "toy.zip", cache_dir=tmp_path / "c")
