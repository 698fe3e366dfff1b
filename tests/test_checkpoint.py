"""Checkpoints: round trip, fp16 shipping, atomic writes, and one-line errors for every kind of bad file."""

from __future__ import annotations

import builtins
import dataclasses
import gzip
import io
import json
import os
import pickle
import random
import shutil
import subprocess
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

    path, pad = tmp_path / "w.safetensors", _pad_to_start_with(first)
    save_tensors(path, {"w": torch.arange(3.0)}, {"pad": "x" * pad})
    assert path.read_bytes().startswith(first)
    tensors, header = read_tensors(path)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and len(header["pad"]) == pad


def _pad_to_start_with(first: bytes, tensors: dict | None = None) -> int:
    """The padding of a ``pad`` metadata entry that makes the safetensors bytes of ``tensors`` (default
    {"w": arange(3.)}) start with ``first`` (searched in memory: a save per try took 17 s)."""
    from safetensors.torch import save

    tensors = {"w": torch.arange(3.0)} if tensors is None else tensors
    pad = next((n for n in range(0, 20000) if save(tensors, {"pad": "x" * n}).startswith(first)), None)
    assert pad is not None, f"no padding made the header length start with {first!r}"
    return pad


def test_a_safetensors_file_cut_inside_a_header_that_looks_like_a_pickle_is_truncated(tmp_path: Path) -> None:
    """Cut inside its header, a file shaped like safetensors is "corrupt or truncated", not a pickle to re-save."""
    from allconv.checkpoint import read_tensors, save_tensors

    path = tmp_path / "w.safetensors"
    save_tensors(path, {"w": torch.arange(3.0)}, {"pad": "x" * _pad_to_start_with(b"\x80")})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AllconvError, match=r"w.safetensors is corrupt or truncated \(.*\); re-download or retrain it$"):
        read_tensors(path)


def test_metadata_naming_only_the_model_describes_create_defaults() -> None:
    """Metadata that names only the model (a hand-made ``Meta``, or an older checkpoint's JSON without the newer
    fields) rebuilds exactly ``create(model)``: 10 classes, dropout on, no BatchNorm; and it records no training."""
    want = create("strided-cnn-a")
    for meta in (ckpt.Meta(model="strided-cnn-a"), ckpt.Meta.from_json({"model": "strided-cnn-a"}, {})):
        net = ckpt.build(meta)
        assert [(n, type(m)) for n, m in net.named_modules()] == [(n, type(m)) for n, m in want.named_modules()]
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}
        assert (meta.epoch, meta.epochs, meta.preprocess, meta.commit) == (0, 0, None, "")


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_commit_is_the_short_head_of_the_source_checkout_else_empty(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``git_commit`` gives HEAD's short hash (a str, as ``git rev-parse --short`` prints it) of the tree the code runs
    from; "" for a tree that is not a git checkout, and "" when git cannot run at all."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # "plain" below is in no checkout
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    plain.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    monkeypatch.setattr(ckpt, "REPO", repo)
    assert ckpt.git_commit() == head.stdout.strip() != ""
    monkeypatch.setattr(ckpt, "REPO", plain)
    assert ckpt.git_commit() == ""

    def no_git(*a, **k):
        raise FileNotFoundError(2, "No such file or directory: 'git'")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert ckpt.git_commit() == ""


def test_shrinking_to_fp16_keeps_integer_buffers_exact(tmp_path: Path) -> None:
    """``dtype`` shrinks the floating tensors only: BatchNorm's step counter stays int64 and exact (70,000 steps is
    past float16's largest finite value, 65,504)."""
    net = create("strided-cnn-a", dropout=False, batchnorm=True).eval()
    net.conv1.bn.num_batches_tracked.fill_(70_000)
    path = ckpt.save(tmp_path / "net.safetensors", net, _meta(batchnorm=True), dtype=torch.float16)
    tensors, _ = ckpt.read_tensors(path)
    assert tensors["model.conv1.bn.weight"].dtype == torch.float16
    assert tensors["model.conv1.bn.num_batches_tracked"].dtype == torch.int64
    model, _ = ckpt.load(path)
    assert int(model.conv1.bn.num_batches_tracked) == 70_000


def test_a_header_that_ends_exactly_at_the_end_of_the_file_is_well_shaped(tmp_path: Path) -> None:
    """A safetensors file with no tensor bytes (its header runs to its last byte) is read as one, even when its
    header length's first byte is 0x80 like a pickle's: only a header running *past* the end is misshapen."""
    path, pad = tmp_path / "meta-only.safetensors", _pad_to_start_with(b"\x80", {})
    ckpt.save_tensors(path, {}, {"pad": "x" * pad})
    blob = path.read_bytes()
    assert blob.startswith(b"\x80") and int.from_bytes(blob[:8], "little") == len(blob) - 8
    tensors, header = ckpt.read_tensors(path)
    assert tensors == {} and len(header["pad"]) == pad


def test_a_large_gzip_file_is_named_as_gzip(tmp_path: Path) -> None:
    """gzip without a timestamp (``gzip -n``) starts 1f 8b 08 00 00 00 00 00, which reads as a header length of
    559,903: it fits inside a larger file, but the 9th byte is not '{', so the file is still not shaped like
    safetensors and is named as gzip data (a ``model.safetensors.gz`` renamed), not called corrupt."""
    blob = gzip.compress(random.Random(0).randbytes(600_000), mtime=0)
    assert int.from_bytes(blob[:8], "little") == 559_903 < len(blob) - 8 and blob[8:9] != b"{"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(blob)
    with pytest.raises(AllconvError, match=r"model.safetensors is not a safetensors file \(it looks like gzip "
                       r"data\); "):
        ckpt.load(bad)


def _other_format(tensors: dict, header: dict) -> dict:
    return {**header, "format": "allconv/2"}  # a 'meta' field, but another format


def _no_meta(tensors: dict, header: dict) -> dict:
    return {k: v for k, v in header.items() if k != "meta"}  # our format tag, but no metadata


@pytest.mark.parametrize("edit", [_other_format, _no_meta])
def test_a_checkpoint_needs_both_our_format_tag_and_metadata(tmp_path: Path, saved: tuple[Path, torch.nn.Module],
                                                             edit) -> None:
    """Only a file tagged format 'allconv/1' AND carrying metadata is read as a checkpoint: another format with a
    'meta' field, or our tag without metadata, is 'not an allconv checkpoint' in one line."""
    tensors, header = ckpt.read_tensors(saved[0])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=edit(tensors, header))
    with pytest.raises(AllconvError, match=r"bad.safetensors is a safetensors file but not an allconv checkpoint "
                       r"\(no 'allconv/1' metadata\); pass a file written by allconv-train$"):
        ckpt.load(bad)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_missing_from_or_extra_in_a_checkpoint_are_refused(tmp_path: Path,
                                                                   saved: tuple[Path, torch.nn.Module],
                                                                   change: str) -> None:
    """Every weight of the net comes from the file and every weight in the file is used: a checkpoint missing the
    class layer's BatchNorm variance, or holding a tensor the net has no place for, is refused in one line, never
    half loaded."""
    tensors, header = ckpt.read_tensors(saved[0])
    if change == "missing":
        del tensors["model.conv5.bn.running_var"]
    else:
        tensors["model.conv99.conv.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(AllconvError, match=r"bad.safetensors: weights do not match a strided-cnn-a \(") as e:
        ckpt.load(bad)
    assert "\n" not in str(e.value)


def test_available_lists_shipped_nets_then_local_runs_newest_first(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint a user can pick: the shipped files (sorted), then run directories, newest first."""
    monkeypatch.setattr(ckpt, "SHIPPED_DIR", tmp_path / "ship")
    assert ckpt.available(tmp_path / "runs") == []
    net = create("strided-cnn-a", dropout=False)
    ship = [ckpt.save(tmp_path / "ship" / f"{n}.safetensors", net, _meta()) for n in ("b", "a")]
    for n in ("old", "new"):
        ckpt.save(tmp_path / "runs" / n, net, _meta())
    os.utime(tmp_path / "runs/old/model.safetensors", (1, 1))
    assert ckpt.available(tmp_path / "runs") == [ship[1], ship[0], tmp_path / "runs/new", tmp_path / "runs/old"]


def test_export_turns_dropout_off(tmp_path: Path) -> None:
    """A run trained with dropout ships without it: the exported metadata says dropout=False and no BatchNorm, so
    the loaded net has no Dropout layers (a net fine-tuned from it starts without them) and computes the same."""
    torch.manual_seed(0)
    net = create("strided-cnn-a").eval()
    run = ckpt.save(tmp_path / "run", net, dataclasses.replace(_meta(), dropout=True))
    assert ckpt.load(run)[1].dropout
    model, meta = ckpt.load(ckpt.export(run, tmp_path / "strided-cnn-a.safetensors"))
    assert not meta.dropout and not meta.batchnorm
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x), rtol=2e-2, atol=2e-3)  # fp16 weights
