"""What a visitor may open: the allowlist between a URL (or any widget) and the server's files.

The app can be reached by others over a network, so every path a URL or a text field names is hostile. A visitor opens

* checkpoints under the checkpoint roots: the shipped ``checkpoints/``, ``runs/``, the operator's
  ``ALLCONV_CHECKPOINT_DIR`` folders (``allconv-app --checkpoint-dir``) and ``ALLCONV_CHECKPOINT`` itself;
* datasets by name (``cifar10``, ``cifar100``), the operator's ``ALLCONV_DATA``, or a path under a data root named by
  the operator (``ALLCONV_DATA_ROOT``, ``allconv-app --data-root``).

A path is resolved (``~``, ``..`` and symlinks) before the check, so a link out of a root is refused too; nothing
outside is read, walked or even tested for existence. A refusal is one neutral message, the same for every path, and
messages about allowed files name them relative to their root: no server path reaches the page (``scrub``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from allconv import checkpoint
from allconv.data import NAMED
from allconv.errors import AllconvError

from .config import checkpoint_dirs, data_roots, data_source, preferred_checkpoint

MAX_CHECKPOINT_BYTES = 1 << 30  # torchvision's largest classifiers are ~0.5 GB; our nets are a few MB
NO_CHECKPOINT = ("that checkpoint is not one this server offers: pick one from the Checkpoint list (the operator "
                 "can offer more with allconv-app --checkpoint-dir DIR)")
NO_DATASET = (f"that dataset is not one this server offers: leave the field empty for the server's dataset, or give "
              f"{' or '.join(NAMED)}, or a name under a data folder the operator offers (allconv-app --data-root DIR)")
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:)?[/\\][^\s'\"():,;]+")


def checkpoint_roots() -> list[Path]:
    """Folders whose checkpoints (files and run directories, at any depth) a visitor may open."""
    from . import sources  # sources imports us; its REPO is what tests point elsewhere

    roots = [checkpoint.SHIPPED_DIR, Path("runs"), sources.REPO / "runs", *checkpoint_dirs()]
    first = preferred_checkpoint()
    if first is not None and first.is_dir():
        roots.append(first)
    return list(dict.fromkeys(_real(r) for r in roots))


def open_checkpoint(text: str, choices: dict[str, Path]) -> Path:
    """The checkpoint a visitor named (a label from ``choices`` or a path), if the allowlist holds it and it is a
    file of sensible size; else the neutral refusal."""
    from . import sources

    if text in choices:
        path = choices[text]
    else:
        raw = Path(text).expanduser()
        path = _real(raw if raw.is_absolute() else sources.REPO / raw)
        if not offered(path):
            raise AllconvError(NO_CHECKPOINT)
    weights = checkpoint.model_file(path)
    if weights.is_symlink() and not offered(_real(weights)):  # a run's model file linked out of the folders
        raise AllconvError(NO_CHECKPOINT)
    if not weights.is_file():  # inside an allowed folder: saying so reveals nothing (the page cuts the path)
        raise AllconvError(f"checkpoint not found: {path} (pass a run directory or a .safetensors file)")
    if (size := weights.stat().st_size) > MAX_CHECKPOINT_BYTES:
        raise AllconvError(f"that checkpoint is {size / 2**30:.1f} GB; the app opens checkpoints up to "
                           f"{MAX_CHECKPOINT_BYTES >> 30} GB")
    return path


def offered(path: Path) -> bool:
    """Whether a resolved checkpoint path is ``ALLCONV_CHECKPOINT`` or lies under a checkpoint root."""
    return path == preferred_checkpoint() or _under(path, checkpoint_roots())


def open_dataset(text: str) -> str:
    """The dataset source a visitor named: "" (CIFAR-10), a name, the operator's ``ALLCONV_DATA``, or a path under a
    data root (relative to the first root, or absolute); anything else is refused without a look at the disk."""
    text = text.strip()
    if text in ("", *NAMED) or text == data_source():
        return text
    roots = [_real(r) for r in data_roots()]
    if not roots:
        raise AllconvError(NO_DATASET)
    raw = Path(text).expanduser()
    path = _real(raw if raw.is_absolute() else roots[0] / raw)
    if not _under(path, roots):
        raise AllconvError(NO_DATASET)
    return str(path)


def scrub(message: str) -> str:
    """``message`` with server paths cut to their place under a root (or to "(a server path)"): for the page."""
    from . import sources

    names = {str(r): r.name for r in [*checkpoint_roots(), *(_real(r) for r in data_roots())]}
    names[str(_real(sources.REPO))] = ""
    for base in sorted(names, key=len, reverse=True):
        message = message.replace(base + os.sep, names[base] and names[base] + os.sep)
    return _ABS_PATH.sub("(a server path)", message)


def _real(path: Path) -> Path:
    """``path`` with ``..`` and every symlink resolved; a name the OS cannot hold (a NUL byte) is refused."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        raise AllconvError("that name is not a valid path: pick from the lists instead") from None


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)
