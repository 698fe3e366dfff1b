"""The app's settings, all from environment variables so tests and deployments can point it anywhere.

* ``ALLCONV_DATA``: dataset for browsing and Figure 2 scans (a path or ``cifar10``);
  default: ``allconv.data.load(None)``.
* ``ALLCONV_DATA_ROOT``: folder(s) (``os.pathsep``-separated) under which a visitor may name other datasets (``.npz``
  files, image folders, archives); without it a visitor can pick only the named datasets and ``ALLCONV_DATA``.
* ``ALLCONV_CHECKPOINT``: the checkpoint selected when the page opens (a .safetensors file or run directory);
  default: the shipped ``checkpoints/all-cnn-c.safetensors``, else the newest local run.
* ``ALLCONV_CHECKPOINT_DIR``: extra folder(s) (``os.pathsep``-separated) searched for ``*.safetensors`` checkpoints
  and run directories, besides the shipped ``checkpoints/`` and local ``runs/``. These folders are also the only
  places (with ``ALLCONV_CHECKPOINT``) from which a visitor may open a checkpoint by path: see ``app.allow``.
* ``ALLCONV_SCAN_LIMIT``: how many dataset images a Figure 2 scan covers (default 10000, the CIFAR-10 test split).
* ``ALLCONV_CACHE``: where scans are kept on disk (``<cache>/scans``), shared with ``allconv.data``'s array cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from allconv.errors import AllconvError

MAX_UPLOAD_MB = 5
MAX_UPLOAD_PIXELS = 50_000_000  # decoded size cap: a 5 MB PNG can hold a 400-megapixel image
DEFAULT_SCAN_LIMIT = 10_000
LARGE_SCAN_LIMIT = 500  # a torchvision model scans at most this many images (224x224: 75 MB of them)
SCAN_TOP_K = 10  # as allconv-visualize
VIEWS = ("Image", "Layer", "Filters", "Models", "Sanity")  # also the ?view= values


def data_source() -> str:
    """The dataset named by ``ALLCONV_DATA``, or "" for the default CIFAR-10 lookup."""
    return os.environ.get("ALLCONV_DATA", "").strip()


def _folders(var: str) -> list[Path]:
    raw = os.environ.get(var, "")
    return [Path(p.strip()).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def checkpoint_dirs() -> list[Path]:
    """Folders named by ``ALLCONV_CHECKPOINT_DIR``."""
    return _folders("ALLCONV_CHECKPOINT_DIR")


def data_roots() -> list[Path]:
    """Folders named by ``ALLCONV_DATA_ROOT``: a visitor's dataset paths must lie under one of them."""
    return _folders("ALLCONV_DATA_ROOT")


def preferred_checkpoint() -> Path | None:
    """The checkpoint named by ``ALLCONV_CHECKPOINT``, resolved (None when unset)."""
    raw = os.environ.get("ALLCONV_CHECKPOINT", "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def scan_limit() -> int:
    """``ALLCONV_SCAN_LIMIT`` as a positive int (default 10000)."""
    raw = os.environ.get("ALLCONV_SCAN_LIMIT", "").strip()
    if not raw:
        return DEFAULT_SCAN_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise AllconvError(f"ALLCONV_SCAN_LIMIT must be a positive integer, got {raw!r}")
    return value


def scan_dir() -> Path:
    """Where Figure 2 scans are saved between runs of the app."""
    from allconv.data import cache_root

    return cache_root() / "scans"
