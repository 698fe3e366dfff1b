"""Checkpoints: one safetensors file holding the weights, the preprocessing tensors and the metadata (as JSON in
the safetensors header), written atomically. Nothing is ever unpickled.

A run directory holds ``model.safetensors`` (+ a readable ``meta.json`` copy) and the resume state it names (see
``rundir``: the set is written so that a kill at any instant leaves a resumable run), ``metrics.jsonl`` and
``curves.png``. Shipped nets are single files in ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from .errors import AllconvError
from .models import AllConvNet, create, fold_batchnorm
from .preprocess import Preprocess

FORMAT = "allconv/1"
MODEL_FILE = "model.safetensors"
REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIR = REPO / "checkpoints"


@dataclass
class Meta:
    """What a checkpoint says about itself: enough to rebuild the net, its input pipeline and its record."""

    model: str
    num_classes: int = 10
    classes: list[str] = field(default_factory=list)
    batchnorm: bool = False
    dropout: bool = True
    preprocess: Preprocess | None = None
    protocol: str = ""
    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    data: str = ""
    device: str = ""
    commit: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(dataclasses.replace(self, preprocess=None))
        d["preprocess"] = self.preprocess.config() if self.preprocess is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "Meta":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "preprocess"}
        pre = Preprocess.from_state(d["preprocess"], tensors) if d.get("preprocess") else None
        return cls(preprocess=pre, **kw)


def git_commit() -> str:
    """The current commit of the source tree, or "" outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path`` then rename it over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(Path(path), lambda p: p.write_bytes(data))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Atomically write tensors (made contiguous, on CPU) and string metadata to a safetensors file."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes(path, st_save(flat, metadata=header))


def model_file(path: str | Path) -> Path:
    """The weights file of a run directory or checkpoint path."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def save(path: str | Path, model: nn.Module, meta: Meta, dtype: torch.dtype | None = None,
         header: dict[str, str] | None = None) -> Path:
    """Write a checkpoint: a run directory (``model.safetensors`` + ``meta.json``) or a ``.safetensors`` file
    (+ ``<stem>.json`` beside it). ``dtype`` (e.g. float16) shrinks shipped weights; ``header`` adds string fields
    to the safetensors metadata (a run's pointer to its resume state)."""
    p = Path(path)
    target = p if p.suffix == ".safetensors" else p / MODEL_FILE
    module = getattr(model, "module", model)  # DDP
    module = getattr(module, "_orig_mod", module)  # torch.compile
    tensors = {f"model.{k}": (v.to(dtype) if dtype and v.is_floating_point() else v)
               for k, v in module.state_dict().items()}
    if meta.preprocess is not None:
        tensors.update({f"preprocess.{k}": v for k, v in meta.preprocess.tensors().items()})
    doc = meta.to_json()
    save_tensors(target, tensors, {**(header or {}), "format": FORMAT, "meta": json.dumps(doc)})
    readable = target.with_suffix(".json") if p.suffix == ".safetensors" else p / "meta.json"
    write_bytes(readable, (json.dumps(doc, indent=1) + "\n").encode())
    return target


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file, turning every way it can be wrong into one line that names the file and the fix."""
    p = Path(path)
    if not p.exists():
        raise AllconvError(f"checkpoint not found: {p} (pass a run directory or a .safetensors file)")
    if p.is_dir():
        raise AllconvError(f"{p} has no {MODEL_FILE}: not a run directory (train one with allconv-train)")
    with open(p, "rb") as f:
        head = f.read(512)
    # safetensors: an 8-byte little-endian header length N, then N bytes of JSON ("{..."). Not shaped like that and
    # recognizably something else -> say what; unrecognizable bytes fall through to "corrupt or truncated". (The
    # shape is checked first: a header of 1408 bytes starts with 0x80, like a pickle, and one of 19280 with "PK"; a
    # file with that shape whose header runs past its end is a truncated safetensors file, never a pickle.)
    shaped = head[8:9] == b"{"
    if not shaped or int.from_bytes(head[:8], "little") > p.stat().st_size - 8:
        if not shaped and (head[:2] == b"PK" or head[:1] == b"\x80"):
            raise AllconvError(f"{p} is a pickle/torch.save file; allconv only loads safetensors and never "
                               "unpickles: re-save the weights with safetensors")
        magic = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"\x93NUMPY": "a NumPy .npy array",
                 b"\x1f\x8b": "gzip data"}
        kind = next((v for k, v in magic.items() if head.startswith(k)), None)
        if kind is None and head and all(b >= 32 or b in b"\t\n\r" for b in head):
            kind = "JSON" if head.lstrip()[:1] in (b"{", b"[") else "text"
        if kind is not None:
            alt = p.parent / MODEL_FILE if p.name == "meta.json" else p.with_suffix(".safetensors")
            fix = (f"pass {alt} instead" if alt.is_file() and alt != p else "pass the .safetensors checkpoint (for a "
                   ".json beside one, the .safetensors of the same name)")
            raise AllconvError(f"{p} is not a safetensors file (it looks like {kind}); {fix}")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AllconvError(f"{p} is corrupt or truncated ({str(e).splitlines()[0][:120]}); re-download or retrain "
                           "it") from None
    return tensors, header


def read_header(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AllconvError(f"{path} is corrupt or truncated ({str(e).splitlines()[0][:120]})") from None


def load_meta(path: str | Path) -> tuple[Meta, dict[str, torch.Tensor]]:
    """The metadata and all tensors of a checkpoint, validated as ours."""
    f = model_file(path)
    tensors, header = read_tensors(f)
    if header.get("format") != FORMAT or "meta" not in header:
        raise AllconvError(f"{f} is a safetensors file but not an allconv checkpoint (no '{FORMAT}' metadata); "
                           "pass a file written by allconv-train")
    try:
        meta = Meta.from_json(json.loads(header["meta"]), {k[11:]: v for k, v in tensors.items()
                                                          if k.startswith("preprocess.")})
    except (ValueError, KeyError, TypeError) as e:
        raise AllconvError(f"{f} has unreadable allconv metadata ({e}); re-download or retrain it") from None
    return meta, tensors


def build(meta: Meta) -> AllConvNet:
    """An untrained net of the architecture the metadata describes."""
    return create(meta.model, num_classes=meta.num_classes, dropout=meta.dropout, batchnorm=meta.batchnorm)


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[AllConvNet, Meta]:
    """Load ``(model, meta)`` from a run directory or a ``.safetensors`` file; the model is float32, in eval mode."""
    meta, tensors = load_meta(path)
    model = build(meta)
    state = {k[6:]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AllconvError(f"{model_file(path)}: weights do not match a {meta.model} "
                           f"({str(e).splitlines()[0][:120]}); the file is damaged or from another version") from None
    return model.to(device).eval(), meta


def shipped() -> list[Path]:
    """The trained nets that come with the project (``checkpoints/*.safetensors``)."""
    return sorted(SHIPPED_DIR.glob("*.safetensors"))


def local_runs(root: str | Path = "runs") -> list[Path]:
    """Run directories under ``root`` that hold a model, newest first."""
    runs = [p.parent for p in Path(root).glob("**/" + MODEL_FILE)]
    return sorted(runs, key=lambda p: (p / MODEL_FILE).stat().st_mtime, reverse=True)


def available(root: str | Path = "runs") -> list[Path]:
    """Every checkpoint a user can pick: shipped ones, then local runs (newest first)."""
    return shipped() + local_runs(root)


def default_checkpoint(root: str | Path = "runs") -> Path | None:
    """The shipped All-CNN-C if present, else the newest local run, else None."""
    best = SHIPPED_DIR / "all-cnn-c.safetensors"
    if best.is_file():
        return best
    runs = local_runs(root)
    return runs[0] if runs else None


def export(src: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Ship a trained run as one small file: BatchNorm folded into the convs (the paper's exact architecture), dropout
    off, weights in ``dtype``; the metadata and training record travel with it."""
    model, meta = load(src)
    if meta.batchnorm:
        model = fold_batchnorm(model)
        meta.config = {**meta.config, "folded_batchnorm": True}
    meta = dataclasses.replace(meta, batchnorm=False, dropout=False,
                               metrics={**meta.metrics, "params": sum(p.numel() for p in model.parameters())})
    return save(dest, model, meta, dtype=dtype)
