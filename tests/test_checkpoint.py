"""Checkpoints: round trip, fp16 shipping, atomic writes, and one-line errors for every kind of bad file."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from allconv import checkpoint as ckpt
from allconv.errors import AllconvError
from allconv.models import create
from allconv.preprocess import Preprocess


def _meta(model: str = "strided-cnn-a", **kw) -> ckpt.Meta:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return ckpt.Meta(model=model, classes=[str(i) for i in range(10)], preprocess=Preprocess.fit("standardize", x),
                     protocol="fast", epoch=3, epochs=5, metrics={"test_acc": 0.5}, dropout=False, **kw)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = create("strided-cnn-a", dropout=False, batchnorm=True).eval()
    net.conv1.bn.running_mean.uniform_()  # buffers travel too
    return ckpt.save(tmp_path / "run", net, _meta(batchnorm=True)), net


def test_round_trip_run_dir(saved: tuple[Path, torch.nn.Module]) -> None:
    path, net = saved
    run = path.parent
    assert (run / "meta.json").is_file() and json.loads((run / "meta.json").read_text())["model"] == "strided-cnn-a"
    model, meta = ckpt.load(run)
    assert not model.training and meta.epoch == 3 and meta.batchnorm and meta.metrics["test_acc"] == 0.5
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), net(x))
    raw = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(meta.preprocess(raw), _meta().preprocess(raw))


def test_fp16_single_file(tmp_path: Path) -> None:
    net = create("all-cnn-c", dropout=False).eval()
    path = ckpt.save(tmp_path / "all-cnn-c.safetensors", net, _meta("all-cnn-c"), dtype=torch.float16)
    assert path.stat().st_size < 3_000_000 and (tmp_path / "all-cnn-c.json").is_file()
    model, _ = ckpt.load(path)
    assert next(model.parameters()).dtype == torch.float32
    w0, w1 = net.conv1.conv.weight, model.conv1.conv.weight
    assert torch.allclose(w0, w1, rtol=1e-3, atol=1e-4) and not torch.equal(w0, w1)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    ckpt.write_bytes(target, b"old")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp file left behind


class _HalfWrite:
    """A file whose first write puts half its bytes on disk and then fails, like a full disk or a kill mid-write."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view[: len(view) // 2])
        self.f.flush()
        raise OSError(28, "No space left on device (injected)")

    def __enter__(self) -> "_HalfWrite":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def test_save_that_fails_halfway_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_net = create("strided-cnn-a", dropout=False).eval()
    path = ckpt.save(tmp_path / "net.safetensors", old_net, _meta())
    old_bytes, before = path.read_bytes(), sorted(os.listdir(tmp_path))
    real_open = io.open

    def half_writing_open(file, mode="r", *a, **k):  # every way of opening the weights file (or a temp beside it)
        f = real_open(file, mode, *a, **k)
        writing = any(c in mode for c in "wax+")
        return _HalfWrite(f) if writing and "net.safetensors" in os.fspath(file) else f

    monkeypatch.setattr(io, "open", half_writing_open)  # what pathlib's write_bytes / open use
    monkeypatch.setattr(builtins, "open", half_writing_open)
    torch.manual_seed(1)
    with pytest.raises(OSError, match="injected"):
        ckpt.save(path, create("strided-cnn-a", dropout=False), _meta())
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes, "a failed save damaged the existing checkpoint (not written atomically)"
    model, meta = ckpt.load(path)
    assert meta.epoch == 3 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                      old_net.state_dict().values()))
    assert sorted(os.listdir(tmp_path)) == before  # no temp file left behind


def _truncated(p: Path, saved: Path) -> Path:
    blob = saved.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    return p


def _pickle(p: Path, saved: Path) -> Path:
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return p


def _torch_save(p: Path, saved: Path) -> Path:
    torch.save({"w": torch.zeros(2)}, p)
    return p


def _foreign(p: Path, saved: Path) -> Path:
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    return p


def _garbage(p: Path, saved: Path) -> Path:
    p.write_bytes(b"\x07" * 64)
    return p


def _wrong_arch(p: Path, saved: Path) -> Path:
    header_meta = _meta("all-cnn-c").to_json()
    tensors, header = ckpt.read_tensors(saved)
    header["meta"] = json.dumps(header_meta)
    save_file(tensors, str(p), metadata=header)
    return p


@pytest.mark.parametrize("make, match", [
    (_truncated, "corrupt or truncated"),
    (_pickle, "never unpickles"),
    (_torch_save, "never unpickles"),
    (_foreign, "not an allconv checkpoint"),
    (_garbage, "corrupt or truncated"),
    (_wrong_arch, "do not match a all-cnn-c"),
])
def test_bad_files_give_one_line(tmp_path: Path, saved: tuple[Path, torch.nn.Module], make, match: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_unpickling(*a, **k):
        raise AssertionError("something tried to unpickle")

    bad = make(tmp_path / "bad.safetensors", saved[0])
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    with pytest.raises(AllconvError, match=match) as e:
        ckpt.load(bad)
    assert "\n" not in str(e.value) and "bad.safetensors" in str(e.value)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(AllconvError, match="checkpoint not found"):
        ckpt.load(tmp_path / "nothing.safetensors")
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(AllconvError, match="not found"):
        ckpt.load(tmp_path / "emptyrun")


def test_default_checkpoint_prefers_shipped_then_newest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "SHIPPED_DIR", tmp_path / "none")
    assert ckpt.default_checkpoint(tmp_path / "runs") is None
    net = create("strided-cnn-a", dropout=False)
    ckpt.save(tmp_path / "runs" / "old", net, _meta())
    ckpt.save(tmp_path / "runs" / "new", net, _meta())
    os.utime(tmp_path / "runs/old/model.safetensors", (1, 1))
    assert ckpt.default_checkpoint(tmp_path / "runs") == tmp_path / "runs" / "new"
    monkeypatch.setattr(ckpt, "SHIPPED_DIR", tmp_path / "ship")
    shipped = ckpt.save(tmp_path / "ship" / "all-cnn-c.safetensors", net, _meta())
    assert ckpt.default_checkpoint(tmp_path / "runs") == shipped


def test_export_folds_batchnorm_into_a_small_file(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, net = saved
    shipped = ckpt.export(path.parent, tmp_path / "ship" / "strided-cnn-a.safetensors")
    model, meta = ckpt.load(shipped)
    assert not meta.batchnorm and meta.config.get("folded_batchnorm") and meta.metrics["params"] == 839_242
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x), rtol=2e-2, atol=2e-3)  # fp16 weights


def test_meta_json_beside_a_run_is_not_a_safetensors_file(saved: tuple[Path, torch.nn.Module]) -> None:
    run = saved[0].parent
    with pytest.raises(AllconvError, match=r"meta.json is not a safetensors file \(it looks like JSON\); pass "
                       rf"{run / 'model.safetensors'} instead$") as e:
        ckpt.load(run / "meta.json")
    assert "\n" not in str(e.value)


def test_json_beside_a_single_file_checkpoint_names_the_safetensors(tmp_path: Path) -> None:
    path = ckpt.save(tmp_path / "net.safetensors", create("strided-cnn-a", dropout=False), _meta())
    with pytest.raises(AllconvError, match=rf"net.json is not a safetensors file \(it looks like JSON\); pass {path} "
                       "instead"):
        ckpt.load(tmp_path / "net.json")


@pytest.mark.parametrize("name, blob, kind", [
    ("config.json", b'  {"lr": 0.1}\n', "JSON"),
    ("notes.txt", "weights are elsewhere — ask\n".encode(), "text"),
    ("net.safetensors", b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
])
def test_other_files_are_not_safetensors(tmp_path: Path, name: str, blob: bytes, kind: str) -> None:
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(AllconvError, match=rf"{name} is not a safetensors file \(it looks like {kind}\); pass the "
                       r"\.safetensors checkpoint \(for a \.json beside one, the \.safetensors of the same name\)$"):
        ckpt.load(tmp_path / name)


@pytest.mark.parametrize("keep", [0, 5, 40])
def test_truncated_inside_the_header_is_still_corrupt(tmp_path: Path, saved: tuple[Path, torch.nn.Module],
                                                      keep: int) -> None:
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(saved[0].read_bytes()[:keep])
    with pytest.raises(AllconvError, match="cut.safetensors is corrupt or truncated"):
        ckpt.load(bad)


@pytest.mark.parametrize("first", [b"\x80", b"PK"])
def test_a_safetensors_header_length_that_looks_like_a_pickle_still_loads(tmp_path: Path, first: bytes) -> None:
    """The header length's bytes come first: 0x..80 reads like a pickle, 0x4B50 ("PK") like a zip. A file shaped
    like safetensors is read as one (1 file in 256 was refused as a pickle before)."""
    from allconv.checkpoint import read_tensors, save_tensors

    path = tmp_path / "w.safetensors"
    for pad in range(0, 20000, 8):
        save_tensors(path, {"w": torch.arange(3.0)}, {"pad": "x" * pad})
        if path.read_bytes().startswith(first):
            break
    else:
        raise AssertionError(f"no padding made the header length start with {first!r}")
    tensors, header = read_tensors(path)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and len(header["pad"]) == pad
