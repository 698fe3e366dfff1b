"""Datasets as uint8 tensors: CIFAR-10/100 through torchvision, NumPy ``.npz`` arrays, and image-folder trees
(``{train,test}/<class>/*.png|jpg``, as a directory or a .zip/.tar/.tar.gz/.tar.xz archive). An ``.npz`` holds uint8
``x_train``/``x_test`` and integer class indices ``y_train``/``y_test`` (0..C-1), optionally ``label_names``; an
archive's declared member sizes are checked against the ``MAX_*`` limits before anything is read.

Every source is decoded once and cached as uncompressed ``.npy`` files (under ``$ALLCONV_CACHE`` or
``~/.cache/allconv``), so the second run starts in well under a second.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tarfile
import urllib.error
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import AllconvError
from .image import load_image  # noqa: F401  (re-exported: allconv.data.load_image predates allconv.image)

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")
NAMED = ("cifar10", "cifar100")
CACHE_VERSION = 3  # 2: labels are validated; 3: folder images decoded by allconv.image (alpha on grey, 16-bit)
MAX_CLASSES = 1000
MAX_IMAGE_BYTES = 64 << 20  # an archive's image member may declare at most this uncompressed (no image needs more)
MAX_ARCHIVE_BYTES = 8 << 30  # all of an archive's members together
MAX_RATIO = 100  # declared uncompressed bytes per archive byte, checked once the total passes MAX_IMAGE_BYTES


@dataclass
class Splits:
    """Train and test images (uint8, N x 3 x H x W), labels (int64) and class names."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    name: str


def cache_root() -> Path:
    return Path(os.environ.get("ALLCONV_CACHE") or Path.home() / ".cache" / "allconv")


def torchvision_root() -> Path:
    """Where ``allconv`` asks torchvision to keep (and download) CIFAR: ``$ALLCONV_DATA_ROOT`` or the cache."""
    return Path(os.environ.get("ALLCONV_DATA_ROOT") or cache_root() / "datasets")


def find_offline_cifar10() -> Path | None:
    """The offline CIFAR-10 copy: ``$ALLCONV_CIFAR10``, else ``../shared/data/cifar10.npz`` beside the repository."""
    return find_offline("cifar10")


def find_offline(name: str) -> Path | None:
    """An offline ``.npz`` of ``cifar10``/``cifar100``: ``$ALLCONV_CIFAR10``/``$ALLCONV_CIFAR100``, else
    ``../shared/data/<name>.npz`` beside the repository (CIFAR-100's is made by ``../shared/data/cifar100/unpack.py``)."""
    for p in (os.environ.get(f"ALLCONV_{name.upper()}"), REPO.parent / "shared" / "data" / f"{name}.npz"):
        if p and Path(p).is_file():
            return Path(p)
    return None


def load(source: str | Path | None = None, *, cache_dir: str | Path | None = None, download: bool = False) -> Splits:
    """Load a dataset by name (``cifar10``, ``cifar100``: torchvision's folder when present, else the offline copy
    ``find_offline`` names) or path (``.npz``, folder or archive); ``None`` = CIFAR-10."""
    cache = Path(cache_dir) if cache_dir else cache_root() / "arrays"
    name = "cifar10" if source is None else str(source)
    offline = find_offline(name) if name in NAMED else None
    if offline is not None and not _torchvision_present(name) and not download:
        return _cached(offline, cache, lambda: _from_npz(offline))
    if name in NAMED:
        return _cached(torchvision_root() / name, cache, lambda: _from_torchvision(name, download), stamp=False)
    path = Path(name).expanduser()
    if not path.exists():
        raise AllconvError(f"dataset {name!r} not found; give cifar10, cifar100, an .npz file, an image folder or "
                           "an archive of one")
    if path.suffix == ".npz":
        return _cached(path, cache, lambda: _from_npz(path))
    if path.is_dir() or name.endswith(ARCHIVE_SUFFIXES):
        return _cached(path, cache, lambda: _from_folder(path))
    raise AllconvError(f"{path}: not a dataset; give an .npz file, an image folder, or a "
                       f"{'/'.join(ARCHIVE_SUFFIXES)} archive of one")


def split_validation(x: torch.Tensor, y: torch.Tensor, n_val: int = 5000,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``n_val`` seeded random training images: ``(x_train, y_train, x_val, y_val)``."""
    if not 0 <= n_val < len(x):
        raise AllconvError(f"validation size {n_val} must be between 0 and {len(x) - 1} (the training set size - 1)")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train], y[train], x[val], y[val]


# --- sources -----------------------------------------------------------------------------------------------------

def _torchvision_present(name: str) -> bool:
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    return (torchvision_root() / name / folder).is_dir()


def _from_torchvision(name: str, download: bool) -> Splits:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = torchvision_root() / name
    if not download and not _torchvision_present(name):
        raise AllconvError(f"{name} is not in {root}; pass --download to fetch it with torchvision, or --data with "
                           "an .npz file or image folder")
    try:
        tr, te = (cls(str(root), train=t, download=download) for t in (True, False))
    except (OSError, http.client.HTTPException, RuntimeError, EOFError, tarfile.TarError) as e:
        if download:  # urllib's URLError (no network, DNS, refused), timeouts, HTTP errors, a bad checksum
            raise AllconvError(f"could not download {name} ({_reason(e)}); check the network, or pass --data with "
                               "an offline .npz / image folder") from None
        raise AllconvError(f"{name} in {root} is unreadable ({_reason(e)}); delete the folder and pass "
                           "--download") from None
    x = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))  # noqa: E731
    y = lambda d: torch.as_tensor(d.targets, dtype=torch.int64)  # noqa: E731
    return Splits(x(tr), y(tr), x(te), y(te), list(tr.classes), name)


def _reason(e: BaseException) -> str:
    """An exception as a short one-line reason (for URLError its own reason, without the "<urlopen error>")."""
    why: object = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError) else e
    text = str(why).strip()
    return text.splitlines()[0][:100] if text else type(e).__name__


def _from_npz(path: Path) -> Splits:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(s) for s in z["label_names"]] if "label_names" in z.files else None
    except KeyError as e:
        raise AllconvError(f"{path}: missing array {e}; an .npz dataset needs x_train, y_train, x_test, y_test") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # EOFError: an empty file
        raise AllconvError(f"{path}: not a readable .npz file ({_reason(e)}); re-create it with np.savez") from None
    xs = [_nchw(arrays[k], path) for k in ("x_train", "x_test")]
    ys = [_labels(arrays[f"y_{k}"], path, k) for k in ("train", "test")]
    for x, y, k in zip(xs, ys, ("train", "test")):
        if len(x) != len(y):
            raise AllconvError(f"{path}: x_{k} has {len(x)} images but y_{k} has {len(y)} labels")
        if not len(y):
            raise AllconvError(f"{path}: x_{k} and y_{k} are empty; the {k} split needs at least one image")
    return Splits(xs[0], ys[0], xs[1], ys[1], _classes(ys[0], ys[1], names, path), path.stem)


def _labels(a: np.ndarray, path: Path, split: str) -> torch.Tensor:
    """A label array as int64; float, bool or string labels are refused rather than truncated."""
    if not np.issubdtype(a.dtype, np.integer):
        raise AllconvError(f"{path}: y_{split} holds {a.dtype} labels; store integer class indices 0..C-1 "
                           "(e.g. y.astype(np.int64))")
    y = torch.from_numpy(a.astype(np.int64).ravel())
    if len(y) and int(y.min()) < 0:
        raise AllconvError(f"{path}: y_{split} has label {int(y.min())}; labels must be class indices 0..C-1")
    return y


def _classes(y_train: torch.Tensor, y_test: torch.Tensor, names: list[str] | None, path: Path) -> list[str]:
    """The class names: ``label_names``, else "0".."C-1" for C = max label + 1, refusing labels that do not fit."""
    top, split = max((int(y_train.max()), "train"), (int(y_test.max()), "test"))
    if names is not None:
        if top >= len(names):
            raise AllconvError(f"{path}: y_{split} has label {top} but label_names lists only {len(names)} classes "
                               f"(0..{len(names) - 1}); fix the label or add its name")
        return names
    n, used = top + 1, len(torch.unique(torch.cat([y_train, y_test])))
    if n > MAX_CLASSES:
        raise AllconvError(f"{path}: y_{split} has label {top}, which would make {n} classes (at most "
                           f"{MAX_CLASSES}); labels must be class indices 0..C-1")
    if n > 2 * used:  # so most of 0..C-1 never occurs in either split: one stray value, not a real class
        raise AllconvError(f"{path}: y_{split} has label {top}, which would make {n} classes but the labels hold only "
                           f"{used} distinct values; fix that label, or store label_names listing every class")
    return [str(i) for i in range(n)]


def _nchw(a: np.ndarray, path: Path) -> torch.Tensor:
    if a.ndim != 4 or a.dtype != np.uint8 or 3 not in (a.shape[1], a.shape[3]):
        raise AllconvError(f"{path}: images must be uint8 N x H x W x 3 (or N x 3 x H x W), got {a.dtype} {a.shape}")
    if a.shape[3] == 3 and a.shape[1] != 3:
        a = a.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(a))


def _from_folder(path: Path) -> Splits:
    """An image-folder tree ``{train,test}/<class>/<images>`` from a directory or an archive; each split's images
    come out square at the width of its first image (the others center-cropped and resized)."""
    splits: dict[str, dict[str, list[tuple[str, Callable[[], bytes]]]]] = {"train": {}, "test": {}}
    for rel, read in list_files(path):
        place = _place(rel)
        if place is not None:
            splits[place[0]].setdefault(place[1], []).append((rel, read))
    classes = sorted(set(splits["train"]) | set(splits["test"]))
    if not splits["train"] or not splits["test"]:
        raise AllconvError(f"{path}: no train/<class>/<image> and test/<class>/<image> files found; an image folder "
                           "needs both splits")
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        items = [(c, rel, read) for c in classes for rel, read in sorted(splits[split].get(c, []))]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            imgs = list(pool.map(lambda it: _decode(it[1], it[2]), items))
        size = imgs[0].shape[-1]
        imgs = [im if im.shape[-1] == size and im.shape[-2] == size else
                load_image(im.permute(1, 2, 0).numpy(), size) for im in imgs]
        out += [torch.stack(imgs), torch.tensor([classes.index(c) for c, _, _ in items], dtype=torch.int64)]
    return Splits(out[0], out[1], out[2], out[3], classes, path.name.split(".")[0])


def _place(rel: str) -> tuple[str, str] | None:
    """``(split, class)`` of an image file at ``.../{train,test}/<class>/<image>``, else None (the file is ignored)."""
    parts = Path(rel).parts
    if len(parts) >= 3 and parts[-3] in ("train", "test") and rel.lower().endswith(IMAGE_SUFFIXES):
        return parts[-3], parts[-2]
    return None


def _decode(rel: str, read: Callable[[], bytes]) -> torch.Tensor:
    try:
        blob = read()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, tarfile.TarError) as e:
        raise AllconvError(f"{rel}: unreadable ({_reason(e)}); the archive or file is damaged") from None
    try:
        return load_image(blob, size=None)
    except AllconvError as e:
        raise AllconvError(f"{rel}: {e}") from None


def list_files(path: Path, wanted: Callable[[str], bool] | None = None) -> list[tuple[str, Callable[[], bytes]]]:
    """Every file of a folder or archive as ``(relative name, read)``. Archive members' declared sizes are checked
    before anything is read; a tar's ``wanted`` members (default: images in the ``{train,test}/<class>/`` layout) are
    read in one pass (it has no cheap random access), zip members on demand."""
    wanted = wanted or (lambda n: _place(n) is not None)
    if path.is_dir():
        return [(str(p.relative_to(path)), p.read_bytes) for p in sorted(path.rglob("*")) if p.is_file()]
    check = _size_check(path, wanted)
    try:
        if path.name.endswith(".zip"):
            z = zipfile.ZipFile(path)
            infos = [i for i in z.infolist() if not i.is_dir()]
            for i in infos:
                check(i.filename, i.file_size)
            return [(i.filename, lambda n=i.filename: z.read(n)) for i in infos]
        blobs: dict[str, bytes] = {}
        with tarfile.open(path, "r:*") as t:
            for m in t:
                if m.isfile():
                    check(m.name, m.size)
                    if wanted(m.name):
                        blobs[m.name] = t.extractfile(m).read()  # type: ignore[union-attr]
        return [(n, lambda b=b: b) for n, b in blobs.items()]
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise AllconvError(f"{path}: unreadable archive ({_reason(e)})") from None


def _size_check(path: Path, wanted: Callable[[str], bool]) -> Callable[[str, int], None]:
    """A check to call with each archive member's name and declared uncompressed size before anything is read: it
    refuses what no image dataset needs (zip bombs) by the limits above."""
    on_disk, total = max(path.stat().st_size, 1), 0

    def check(name: str, size: int) -> None:
        nonlocal total
        if size > MAX_IMAGE_BYTES and wanted(name):
            raise AllconvError(f"{path}: member {name} declares {_size(size)} uncompressed but no image needs more "
                               f"than {_size(MAX_IMAGE_BYTES)}; the archive is damaged or a zip bomb")
        total += size
        if total > MAX_ARCHIVE_BYTES:
            raise AllconvError(f"{path}: members declare over {_size(MAX_ARCHIVE_BYTES)} uncompressed; keep only "
                               "the train/ and test/ images in it, or use a smaller dataset")
        if total > MAX_IMAGE_BYTES and total > MAX_RATIO * on_disk:
            raise AllconvError(f"{path}: members declare {_size(total)} uncompressed from {_size(on_disk)} on disk "
                               f"(over {MAX_RATIO}x), which looks like a zip bomb; if it really holds such images, "
                               "store them as PNG")
    return check


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


# --- cache -------------------------------------------------------------------------------------------------------

def _cached(path: Path, cache: Path, make: Callable[[], Splits], stamp: bool = True) -> Splits:
    """Return the cached arrays for ``path`` if its size and mtime are unchanged, else decode and cache them."""
    key_src = [str(path.resolve()), CACHE_VERSION]
    if stamp:
        st = path.stat()
        key_src += [st.st_size, st.st_mtime_ns]
    entry = cache / hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]
    try:
        meta = json.loads((entry / "meta.json").read_text())
        # copy-on-write maps: pages are read when touched (the app never touches most of x_train), and writes stay
        # private to this process
        arrays = [torch.from_numpy(np.load(entry / f"{k}.npy", allow_pickle=False, mmap_mode="c")) for k in _KEYS]
        return Splits(*arrays, classes=meta["classes"], name=meta["name"])
    except (OSError, ValueError, KeyError):
        pass
    splits = make()
    _write_cache(entry, splits)
    return splits


_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _write_cache(entry: Path, s: Splits) -> None:
    """Best effort (a read-only home must not stop training): write into a temp dir, then rename into place."""
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for k in _KEYS:
            np.save(tmp / f"{k}.npy", getattr(s, k).numpy())
        (tmp / "meta.json").write_text(json.dumps({"classes": s.classes, "name": s.name}))
        os.replace(tmp, entry) if not entry.exists() else None
    except OSError:
        pass
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()

