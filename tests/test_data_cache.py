"""The array cache: a second load maps the cached .npy files instead of decoding the source again, a changed source is
decoded again, and an interrupted cache write never stops a later one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from allconv import data
from datakit import toy_npz as _npz


def test_second_load_comes_from_cache(cifar10_npz: Path, tmp_path: Path) -> None:
    first = data.load(cifar10_npz, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    t0 = time.perf_counter()
    second = data.load(cifar10_npz, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 5  # generous: a cache hit reads 4 .npy files, a miss decompresses 170 MB
    assert torch.equal(first.x_train, second.x_train) and second.classes == first.classes


def test_second_load_reads_the_cache_not_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _npz(tmp_path / "toy.npz")
    first = data.load(src, cache_dir=tmp_path / "c")

    def no_decoding(path: Path) -> data.Splits:
        raise AssertionError(f"{path} was decoded again: the array cache was not read")

    monkeypatch.setattr(data, "_from_npz", no_decoding)
    second = data.load(src, cache_dir=tmp_path / "c")
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(second, k), getattr(first, k)), k
    assert (second.classes, second.name) == (first.classes, first.name)


def test_a_changed_source_is_decoded_again(tmp_path: Path) -> None:
    src = _npz(tmp_path / "toy.npz", n=12)
    assert len(data.load(src, cache_dir=tmp_path / "c").x_train) == 12
    _npz(src, n=9)  # rewritten in place: another size and mtime
    assert len(data.load(src, cache_dir=tmp_path / "c").x_train) == 9


def test_cached_arrays_are_private_file_maps(tmp_path: Path) -> None:
    """A cache hit maps the .npy files copy-on-write (pages read only when touched: the app never touches most of the
    training split): the tensors are writable, and a write changes neither the cache nor the next load."""
    src = _npz(tmp_path / "toy.npz")
    data.load(src, cache_dir=tmp_path / "c")
    hit = data.load(src, cache_dir=tmp_path / "c")
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the cache's x_train.npy is mapped into this process, not read into its heap
        assert any(line.endswith("/x_train.npy") for line in maps.read_text().splitlines())
    before = hit.x_train.clone()
    hit.x_train += 1
    assert torch.equal(data.load(src, cache_dir=tmp_path / "c").x_train, before)


def test_a_temp_folder_left_by_a_killed_write_does_not_stop_the_next(tmp_path: Path) -> None:
    """A write killed halfway leaves ``<entry>.tmp<pid>``; a later process given the same pid still writes the cache
    (and the leftover goes)."""
    src = _npz(tmp_path / "toy.npz")
    data.load(src, cache_dir=tmp_path / "c")
    entry = next((tmp_path / "c").iterdir())
    for f in entry.iterdir():
        f.unlink()
    entry.rmdir()
    leftover = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    leftover.mkdir()
    (leftover / "x_train.npy").write_bytes(b"half a file")
    data.load(src, cache_dir=tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [entry.name]
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "x_test.npy", "x_train.npy", "y_test.npy",
                                                       "y_train.npy"]
