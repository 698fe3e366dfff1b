"""A training run's directory, written so that a kill at any instant leaves a run ``--resume`` continues.

The commit point is one file. Each epoch's save first writes the resume state (raw weights, optimizer momentum) to a
file of its own, ``state-<epoch>.safetensors``, then atomically replaces ``model.safetensors``, whose header names
that state file. A kill before the replace leaves the previous epoch's pair intact; after it, the new pair. Everything
else (``meta.json``, ``metrics.jsonl``, ``curves.png``) is derived from the model file and rewritten on resume. Temp
files of killed writes and state files no longer named are removed on the next save or resume. ``run.json`` holds the
config from the start, so a run killed in its first epoch resumes too.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import checkpoint as ckpt
from .errors import AllconvError

RUN_FILE = "run.json"
PLAN_FILE = "plan.json"  # a set of runs (a sweep or a family; see runset)
LEGACY_STATE = "state.safetensors"  # runs written before the commit-point layout kept one state file
DIVERGED_FILE = "diverged.txt"
_STATE = re.compile(r"state-(\d+)\.safetensors")


def state_name(epoch: int) -> str:
    return f"state-{epoch:04d}.safetensors"


def is_state_file(name: str) -> bool:
    """Whether a file name is a run's resume state (not a model anyone should load)."""
    return bool(_STATE.fullmatch(name)) or name == LEGACY_STATE


def _why(e: OSError) -> tuple[str, str]:
    """A failed write as (what happened, what to do about it)."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"it is not writable ({e.strerror})", "make it writable"
    if e.errno == errno.ENOSPC:
        return "the disk is full", "free some space"
    return e.strerror or str(e), "fix that"


def _disk_error(out: Path, e: OSError) -> AllconvError:
    """One line for a failed write: what happened, which epoch is safe, how to go on."""
    why, fix = _why(e)
    done = committed_epoch(out) or 0
    saved = f"epoch {done} is saved and intact" if done else "no epoch was finished yet"
    return AllconvError(f"could not write to {out}: {why}; {saved}: {fix}, then continue with "
                        f"allconv-train --resume {out}")


def start(out: Path, config: dict[str, Any], name: str = RUN_FILE) -> None:
    """Make the run directory and record the config (``name``: a run's or a sweep's plan) before any work, so that
    a kill in the first epoch can resume and a bad ``--out`` fails at once."""
    if out.exists() and not out.is_dir():
        raise AllconvError(f"--out {out} is an existing file, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean(out)
        ckpt.write_bytes(out / name, (json.dumps(config, indent=1) + "\n").encode())
    except OSError as e:
        raise AllconvError(f"cannot write the run directory {out}: {_why(e)[0]}; choose a writable --out") from None


def committed_epoch(out: Path) -> int | None:
    """The last epoch safely on disk (0: started, none finished), or None when ``out`` holds no run."""
    try:
        meta, _ = ckpt.load_meta(out / ckpt.MODEL_FILE)
        return meta.epoch
    except AllconvError:
        return 0 if (out / RUN_FILE).is_file() else None


def read_config(out: Path) -> dict[str, Any]:
    """The config recorded by ``start``."""
    try:
        return json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError) as e:
        raise AllconvError(f"{out / RUN_FILE} is unreadable ({e}); start the run again without --resume") from None


def guarded(out: Path, write: Callable[[], None]) -> None:
    """Run a write into ``out``, turning a full disk or permission error into one line that says what is safe."""
    try:
        write()
    except OSError as e:
        raise _disk_error(out, e) from None


def commit(out: Path, model: nn.Module, meta: ckpt.Meta, state: dict[str, torch.Tensor]) -> None:
    """Save one finished epoch: the state file, then the model file naming it (the commit), then derived files."""
    name = state_name(meta.epoch)

    def write() -> None:
        clean(out)
        ckpt.save_tensors(out / name, state, {"format": ckpt.FORMAT, "epoch": str(meta.epoch)})
        ckpt.save(out, model, meta, header={"state": name})  # the commit point, then meta.json
        clean(out, keep=name)
        _write_metrics(out, meta)

    guarded(out, write)


def restored(out: Path, meta: ckpt.Meta) -> None:
    """After a resume: drop temp files and rewrite the derived files from the model file (a kill may have left
    them an epoch behind)."""
    def write() -> None:
        clean(out)
        ckpt.write_bytes(out / "meta.json", (json.dumps(meta.to_json(), indent=1) + "\n").encode())
        _write_metrics(out, meta)

    guarded(out, write)


def _write_metrics(out: Path, meta: ckpt.Meta) -> None:
    ckpt.write_bytes(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in meta.history).encode())


def read_state(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    """The resume state the model file names (or a legacy ``state.safetensors``), checked to be of ``epoch``."""
    name = ckpt.read_header(out / ckpt.MODEL_FILE).get("state", LEGACY_STATE)
    if not (out / name).is_file():
        raise AllconvError(f"{out} has no resume state ({name}): it cannot be resumed (is it a shipped checkpoint?)")
    state, header = ckpt.read_tensors(out / name)
    if int(header.get("epoch", -1)) != epoch:
        raise AllconvError(f"{out}: {name} is of epoch {header.get('epoch')} but the model of epoch {epoch}; the run "
                           "was damaged outside allconv: retrain it")
    return state


def clean(out: Path, keep: str | None = None) -> None:
    """Remove temp files of killed writes and, when ``keep`` is given, every state file but that one."""
    for p in out.iterdir():
        stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
        old_state = keep is not None and p.name != keep and is_state_file(p.name)
        if (stale_tmp or old_state) and p.is_file():
            p.unlink(missing_ok=True)


def refuse_existing(out: Path) -> None:
    """A new run never overwrites finished epochs: point to ``--resume`` instead."""
    if (out / ckpt.MODEL_FILE).exists() or (out / PLAN_FILE).exists():
        raise AllconvError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")


def mark_diverged(out: Path, message: str) -> None:
    ckpt.write_bytes(out / DIVERGED_FILE, (message + "\n").encode())


def diverged(out: Path) -> str | None:
    """The divergence message of a run that diverged, else None."""
    p = out / DIVERGED_FILE
    return p.read_text().strip() if p.is_file() else None
