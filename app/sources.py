"""Where the app's inputs come from: the checkpoints a user can pick and the image under study.

Pure functions (no Streamlit), so they are tested directly. Checkpoints are named by a short label (a path relative to
the repository when possible) that is stable enough to live in a shareable URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from allconv import checkpoint, rundir
from allconv.data import Splits
from allconv.image import load_image_described
from allconv.errors import AllconvError
from vis.sources import Source, read_image, resize_crop

from . import allow
from .config import MAX_UPLOAD_MB, MAX_UPLOAD_PIXELS, checkpoint_dirs, preferred_checkpoint

REPO = checkpoint.REPO
TRAIN_HINT = ("no trained checkpoint found: train one with `allconv-train --model all-cnn-c` (it writes "
              "runs/<name>/model.safetensors), put a .safetensors file in checkpoints/, set ALLCONV_CHECKPOINT_DIR, "
              "or type a checkpoint path in the sidebar")


def label(path: Path) -> str:
    """A short, URL-friendly name for a checkpoint path: relative to the repository, else to the checkpoint folder
    that holds it (prefixed by the folder's name), so no server path reaches the page."""
    p = Path(path).resolve()
    if p.is_relative_to(REPO):
        return str(p.relative_to(REPO))
    for root in sorted(allow.checkpoint_roots(), key=lambda r: len(str(r)), reverse=True):
        if p.is_relative_to(root):
            return str(Path(root.name) / p.relative_to(root))
    return p.name


def _in_dir(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.safetensors") if not rundir.is_state_file(p.name))
    return [p.parent if p.name == checkpoint.MODEL_FILE else p for p in files] + checkpoint.local_runs(folder)


def checkpoint_choices() -> dict[str, Path]:
    """Every checkpoint on offer, by label: ``ALLCONV_CHECKPOINT``, shipped ones, ``ALLCONV_CHECKPOINT_DIR``, then
    local runs (newest first); a symlink that leads out of the allowed folders is left out."""
    first = preferred_checkpoint()
    found = ([first] if first is not None else []) + checkpoint.shipped()
    for folder in checkpoint_dirs():
        found += _in_dir(folder)
    for root in dict.fromkeys([Path("runs").resolve(), REPO / "runs"]):
        found += checkpoint.local_runs(root)
    return {label(p): p for p in dict.fromkeys(p.resolve() for p in found) if allow.offered(p)}


def default_choice(choices: dict[str, Path]) -> str | None:
    """The label to show first: ``ALLCONV_CHECKPOINT`` if set, else the shipped All-CNN-C, else the newest local run,
    else the first on offer."""
    best = preferred_checkpoint() or checkpoint.default_checkpoint(REPO / "runs")
    if best is not None and label(best) in choices:
        return label(best)
    return next(iter(choices), None)


def resolve(text: str, choices: dict[str, Path]) -> Path:
    """A label from ``choices`` or a user-typed path (to a .safetensors file or a run directory), if the allowlist
    (``app.allow``) holds it."""
    text = text.strip()
    if not text:
        raise AllconvError(TRAIN_HINT)
    return allow.open_checkpoint(text, choices)


def stamp(path: Path) -> str:
    """Identity of a checkpoint file's current contents (path, size, mtime): a new file invalidates caches."""
    f = checkpoint.model_file(path)
    try:
        st = f.stat()
    except OSError:
        raise AllconvError(f"checkpoint not found: {label(path)} (pass a run directory or a .safetensors "
                           "file)") from None
    return f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Picked:
    """The image under study: uint8 (3, H, W) at the net's input size, a cache key, a caption and its true label
    (None if unknown)."""

    image: torch.Tensor
    key: str
    caption: str
    label: int | None = None


def from_upload(name: str, data: bytes, net: Source | None = None) -> Picked:
    """An uploaded file as an RGB image at the net's input (32x32 for ours; a torchvision model's resize and center
    crop, as ``allconv-visualize --image``); too big (bytes or pixels) or not an image -> AllconvError."""
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise AllconvError(f"upload {name!r} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
    _check_pixels(name, data)
    try:
        image, how = read_image(net, data) if net is not None else load_image_described(data, size=32)
    except AllconvError:
        raise AllconvError(f"upload {name!r} is not a readable image; give a PNG, JPEG, BMP, WebP or GIF "
                           "file") from None
    digest = hashlib.sha1(data).hexdigest()[:16]
    return Picked(image, f"upload:{digest}", f"uploaded {name}: {how}")


def fit(picked: Picked, net: Source | None) -> Picked:
    """A dataset image at the net's input size: as it is for our 32x32 nets; for a torchvision model resized as its
    eval transform does (short side, then center crop), and the caption says so."""
    h, w = picked.image.shape[-2:]
    if net is None or (h, w) == (net.size, net.size):
        return picked
    image = resize_crop(picked.image, net.resize or net.size, net.size)
    return dataclasses.replace(picked, image=image, key=f"{picked.key}@{net.size}",
                               caption=f"{picked.caption}, {w}x{h} resized to {net.size}x{net.size} for "
                                       f"{net.display}")


def _check_pixels(name: str, data: bytes) -> None:
    """Refuse an image whose header promises more pixels than we decode (a small file can unpack to gigabytes)."""
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            size, too_big = f"{img.width}x{img.height} pixels", img.width * img.height > MAX_UPLOAD_PIXELS
    except Image.DecompressionBombError:  # PIL refuses it before telling its size
        size, too_big = "far too many pixels", True
    except Exception:  # noqa: BLE001 - unreadable: load_image gives the message
        return
    if too_big:
        raise AllconvError(f"upload {name!r} is {size}; the limit is {MAX_UPLOAD_PIXELS // 10**6} megapixels: "
                           "shrink it first (it is resized to the model's input anyway)")


def class_indices(splits: Splits, split: str, cls: str) -> torch.Tensor:
    """Indices of the split's images of class ``cls`` ("all" = every image)."""
    y = splits.y_test if split == "test" else splits.y_train
    if cls == "all":
        return torch.arange(len(y))
    if cls not in splits.classes:
        raise AllconvError(f"unknown class {cls!r}; choose one of: all, {', '.join(splits.classes)}")
    return (y == splits.classes.index(cls)).nonzero().flatten()


def from_dataset(splits: Splits, source: str, split: str, cls: str, index: int) -> Picked:
    """The ``index``-th image of class ``cls`` in the split."""
    idx = class_indices(splits, split, cls)
    if not 0 <= index < len(idx):
        raise AllconvError(f"index {index} out of range; {split}/{cls} has {len(idx)} images (0..{len(idx) - 1})")
    i = int(idx[index])
    x = splits.x_test if split == "test" else splits.x_train
    y = splits.y_test if split == "test" else splits.y_train
    name = splits.classes[int(y[i])]
    return Picked(x[i], f"data:{source}:{split}:{i}", f"{splits.name} {split} #{i} ({name})", int(y[i]))
