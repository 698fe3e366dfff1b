"""What a saved Figure 2 scan is of, by content: the checkpoint's bytes and the scanned images' bytes.

A scan's file name comes from these digests, not from paths or file times, so a scan made on one machine is found on
any other: the scans shipped in ``checkpoints/scans/`` open the Layer view of a shipped net at once on a fresh
clone, and a copied or re-downloaded checkpoint still finds its scans. A torchvision model is named by its label
(its weights come from torchvision, by name).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch

from allconv.checkpoint import model_file
from allconv.errors import AllconvError

from . import zoo


@lru_cache(maxsize=64)
def checkpoint(stamp: str) -> str:
    """The sha256 of the weights file a stamp (``sources.stamp``: path, size, mtime) names; a new file has a new stamp,
    so caching by stamp never serves an old digest. A torchvision label is its own identity."""
    if zoo.is_label(stamp):
        return stamp
    path = model_file(Path(stamp.rsplit(":", 2)[0]))
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        raise AllconvError(f"checkpoint not readable: {path.name} (moved or deleted? pick it again)") from None


def images(batch: torch.Tensor) -> str:
    """The sha256 of a batch of images (their dtype, shape and values): about 20 ms for CIFAR-10's test split."""
    a = batch.detach().cpu().contiguous().numpy()
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return "sha256:" + h.hexdigest()
