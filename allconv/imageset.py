"""A folder or archive of pictures as one uint8 batch at a model's input size: what Figure 2 scans for any model.

``allconv.data`` reads datasets for our 32x32 nets (``{train,test}/<class>/`` trees, labels required). Here any tree
of pictures will do: every image file under the folder (or in the .zip/.tar archive), sorted by path, hidden files
skipped; a tree in the ``{train,test}/<class>/`` layout gives only the asked split. Each picture is decoded as
``allconv.image`` does (upright, RGB, transparency on grey, 16-bit scaled), then brought to the model's input by the
caller's ``fit`` (e.g. torchvision's short side to 256, center crop 224). A file that cannot be read is skipped and
reported, not fatal. ``MAX_BYTES`` bounds the batch's memory before anything is decoded (``limit`` takes the first N
files). The batch is cached under ``$ALLCONV_CACHE/imagesets``, keyed by the tree's files (names, sizes, times) and
the fit, so the second scan of a folder starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .data import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, cache_root, list_files
from .errors import AllconvError
from .image import load_image

MAX_BYTES = 2 << 30  # the decoded batch (N x 3 x S x S bytes) may take at most this much memory
VERSION = 1


@dataclass
class ImageSet:
    """``images`` uint8 (N, 3, S, S); ``names[i]``: image i's path inside the folder; ``split``: the split taken from a
    ``{train,test}/`` tree ("" for any other tree); ``skipped``: "name: why" per file that could not be read."""

    images: torch.Tensor
    names: list[str]
    name: str
    split: str = ""
    skipped: list[str] = field(default_factory=list)


def load_imageset(path: str | Path, size: int, fit: Callable[[torch.Tensor], torch.Tensor], fit_key: str, *,
                  split: str = "test", limit: int | None = None, progress: bool = True,
                  cache_dir: str | Path | None = None) -> ImageSet:
    """The pictures under ``path`` (folder or archive), each ``fit`` from its decoded (3, H, W) uint8 to (3, size,
    size). ``fit_key`` names the fit in the cache key (e.g. ``"resize256-crop224"``)."""
    root = Path(path).expanduser()
    if not (root.is_dir() or (root.is_file() and root.name.lower().endswith(ARCHIVE_SUFFIXES))):
        raise AllconvError(f"--data {path}: not an image folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive of "
                           "pictures; give one (a model other than ours scans pictures, not .npz or CIFAR)")
    files, split = _select(list_files(root, _is_picture), split)
    if not files:
        raise AllconvError(f"--data {path}: no pictures ({'/'.join(IMAGE_SUFFIXES)}) found in it")
    files = files[:limit] if limit else files
    need = len(files) * 3 * size * size
    if need > MAX_BYTES:
        most = MAX_BYTES // (3 * size * size)
        raise AllconvError(f"--data {path}: {len(files)} pictures at {size}x{size} need {need / 2**30:.1f} GiB, over "
                           f"the {MAX_BYTES >> 30} GiB limit; scan at most {most} with --limit {most}")
    entry = Path(cache_dir or cache_root() / "imagesets") / _key(root, [n for n, _ in files], size, fit_key)
    cached = _read_cache(entry)
    if cached is not None:
        return cached
    out = _decode_all(root, files, size, fit, progress)
    out.split = split
    _write_cache(entry, out)
    return out


def _is_picture(name: str) -> bool:
    parts = Path(name).parts
    return name.lower().endswith(IMAGE_SUFFIXES) and not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _select(files: list[tuple[str, Callable[[], bytes]]], split: str) -> tuple[list[tuple[str, Callable[[], bytes]]],
                                                                           str]:
    """Pictures only, sorted, and the split: in a ``{train,test}/<class>/`` tree only ``split``'s, else all ("")."""
    files = sorted((f for f in files if _is_picture(f[0])), key=lambda f: f[0])
    layout = [f for f in files if len(Path(f[0]).parts) >= 3 and Path(f[0]).parts[-3] in ("train", "test")]
    if layout:
        return [f for f in layout if Path(f[0]).parts[-3] == split], split
    return files, ""


def _decode_all(root: Path, files: list[tuple[str, Callable[[], bytes]]], size: int,
                fit: Callable[[torch.Tensor], torch.Tensor], progress: bool) -> ImageSet:
    """Decode and fit every file (threads: PIL releases the GIL), skipping the unreadable ones."""
    def one(item: tuple[str, Callable[[], bytes]]) -> torch.Tensor | str:
        rel, read = item
        try:
            img = fit(load_image(read(), size=None))
        except (AllconvError, OSError, EOFError, zipfile.BadZipFile, zlib.error, tarfile.TarError) as e:
            return f"{rel}: {' '.join(str(e).split())[:120] or type(e).__name__}"
        if tuple(img.shape) != (3, size, size):
            raise AllconvError(f"the fit gave {tuple(img.shape)} for {rel}, not (3, {size}, {size})")
        return img

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(tqdm(pool.map(one, files), total=len(files), unit="img", desc="reading pictures",
                            disable=None if progress else True, leave=False))
    good = [(rel, r) for (rel, _), r in zip(files, results) if torch.is_tensor(r)]
    skipped = [r for r in results if isinstance(r, str)]
    if not good:
        raise AllconvError(f"--data {root}: none of its {len(files)} pictures could be read (first: {skipped[0]})")
    images = torch.stack([r for _, r in good])  # type: ignore[misc]
    return ImageSet(images, [rel for rel, _ in good], root.name.split(".")[0], skipped=skipped)


# --- cache ---------------------------------------------------------------------------------------------------------

def _key(root: Path, names: list[str], size: int, fit_key: str) -> str:
    """The tree (its path, and each chosen file's size and time; an archive's own), the fit and the format."""
    if root.is_dir():
        stats = [(n, (st := (root / n).stat()).st_size, st.st_mtime_ns) for n in names]
    else:
        st = root.stat()
        stats = [names, st.st_size, st.st_mtime_ns]  # type: ignore[list-item]
    blob = json.dumps([str(root.resolve()), stats, size, fit_key, VERSION])  # names include the split's folder
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_cache(entry: Path) -> ImageSet | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        images = torch.from_numpy(np.load(entry / "images.npy", allow_pickle=False))
        return ImageSet(images, meta["names"], meta["name"], meta["split"], meta["skipped"])
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(entry: Path, s: ImageSet) -> None:
    """Best effort (a read-only home or a full disk must not stop the scan): a temp dir renamed into place."""
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "images.npy", s.images.numpy())
        (tmp / "meta.json").write_text(json.dumps({"names": s.names, "name": s.name, "split": s.split,
                                                     "skipped": s.skipped}))
        if not entry.exists():
            os.replace(tmp, entry)
    except OSError:
        pass
    finally:
        if tmp.exists():
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
