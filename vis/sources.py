"""Where a model comes from: one of our checkpoints, or a torchvision classifier (``torchvision:NAME``).

Either way ``open_source`` gives a ``Source``: the eval-mode model, the preprocessing that maps uint8 images to its
input, its class names, input side and a name for titles and output folders, plus one-line notes on what was loaded.
A torchvision model takes its preprocessing and classes from its weights' metadata (``--weights DEFAULT``); a
state-dict file (``torch.save(model.state_dict())`` or .safetensors) gets ImageNet's mean/std, 224 and numbered
classes; no weights is random init, said in one line. ``list_layers`` names the layers a user can pass, with shapes.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from allconv.data import NAMED
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224  # torchvision's ImageNet eval pipeline: short side to 256, center crop 224
SKIP = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6,
        nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Dropout, nn.Dropout2d,
        nn.Identity)  # not worth listing as a layer


@dataclass
class Source:
    """A model ready to visualize and what goes with it."""

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    name: str  # for titles and the output folder, e.g. "all-cnn-c" or "resnet18"
    label: str  # who it is, e.g. "checkpoint: ck.safetensors (all-cnn-c, cpu)"
    size: int = 32  # input side (square)
    resize: int | None = None  # short side before the center crop (torchvision), None: crop to a square and resize
    torchvision: bool = False
    notes: list[str] = field(default_factory=list)
    display: str = ""  # the net's name in figure titles, e.g. "ck (all-cnn-c)"
    data: str | None = None  # the named dataset it was trained on (cifar10, cifar100), the default to scan and browse


def open_source(model: str | None, checkpoint: str | None, weights: str | None, device: torch.device) -> Source:
    """The model named by ``--model`` (``torchvision:NAME``) or ``--checkpoint`` (default: the shipped net)."""
    if model is not None:
        if checkpoint is not None:
            raise AllconvError("give either --model or --checkpoint, not both")
        if not model.startswith(PREFIX):
            raise AllconvError(f"unknown --model {model!r}; give torchvision:NAME (e.g. torchvision:resnet18), or "
                               "--checkpoint PATH for our nets")
        return torchvision_source(model[len(PREFIX):], weights, device)
    if weights is not None:
        raise AllconvError("--weights goes with --model torchvision:NAME; our checkpoints carry their own weights")
    return checkpoint_source(checkpoint, device)


# --- our checkpoints -----------------------------------------------------------------------------------------------

def checkpoint_source(given: str | None, device: torch.device) -> Source:
    """One of our checkpoints (a .safetensors file or run dir; default: the shipped All-CNN-C, else the newest run)."""
    from allconv import checkpoint

    path = checkpoint_path(given)
    model, meta = checkpoint.load(path, device=device)
    if meta.preprocess is None:
        raise AllconvError(f"{path} stores no preprocessing statistics; re-save it with allconv-train")
    classes = list(meta.classes)
    if len(classes) != meta.num_classes:  # no (or inconsistent) names stored: number them
        classes = [f"class {i}" for i in range(meta.num_classes)]
    stem = _stem(path)
    who = stem if stem == meta.model else f"{stem} ({meta.model})"
    trained_on = meta.config.get("data")
    return Source(model, meta.preprocess, classes, stem, f"checkpoint: {path} ({meta.model}, {device})", display=who,
                  data=trained_on if trained_on in NAMED else None)


def checkpoint_path(given: str | None) -> Path:
    """``given``, else the shipped All-CNN-C, else the newest run; none -> one line saying how to get one."""
    from allconv.checkpoint import default_checkpoint

    if given:
        return Path(given)
    found = default_checkpoint()
    if found is None:
        raise AllconvError("no checkpoint found (no shipped checkpoints/all-cnn-c.safetensors, no runs/*/"
                           "model.safetensors); train one with allconv-train or pass --checkpoint PATH")
    return Path(found)


def _stem(path: Path) -> str:
    """``checkpoints/all-cnn-c.safetensors`` -> ``all-cnn-c``; a run dir or its model.safetensors -> the run's name."""
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name if path.name == "model.safetensors" else path.stem


# --- torchvision ---------------------------------------------------------------------------------------------------

def torchvision_source(name: str, weights: str | None, device: torch.device) -> Source:
    """torchvision's ``name`` with ``weights``: DEFAULT (its own, downloaded), a state-dict file, or None (random)."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = [n for n in known if n.startswith(name[:3])] or known[:8]
        raise AllconvError(f"unknown torchvision model {name!r}; e.g. {', '.join(close[:8])} "
                           "(torchvision.models.list_models())")
    if weights == "DEFAULT":
        model, pre, classes, sizes, note = _default_weights(name)
    else:
        model = torchvision.models.get_model(name, weights=None)
        pre, classes, sizes = imagenet_preprocess(), [f"class {i}" for i in range(_num_outputs(model))], (RESIZE, CROP)
        note = "random init: no --weights given" if weights is None else _load_file(model, name, Path(weights))
    model = model.to(device).eval()
    label = f"model: {PREFIX}{name} ({device})"
    return Source(model, pre.to(device), classes, name, label, size=sizes[1], resize=sizes[0], torchvision=True,
                  notes=[note], display=name)


def _default_weights(name: str) -> tuple[nn.Module, Preprocess, list[str], tuple[int, int], str]:
    """torchvision's DEFAULT weights for ``name`` (a download; offline -> one line), their preprocessing, classes."""
    import torchvision

    w = torchvision.models.get_model_weights(name).DEFAULT
    try:
        out = _HeldLine(sys.stdout)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out.releasing(sys.stderr)):
            model = torchvision.models.get_model(name, weights=w)
            out.release()
    except OSError as e:  # urllib.error.URLError is an OSError
        raise AllconvError(f"could not download the weights for {name} (offline?): pass --weights FILE "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})") from None
    except RuntimeError as e:  # a truncated or tampered download (hash or unpickling)
        raise AllconvError(f"torchvision's weights for {name} would not load ({str(e).splitlines()[0][:80]}); "
                           f"delete them under {torch.hub.get_dir()}/checkpoints and retry, or pass --weights FILE"
                           ) from None
    t = w.transforms()
    pre = imagenet_preprocess(tuple(getattr(t, "mean", IMAGENET_MEAN)), tuple(getattr(t, "std", IMAGENET_STD)))
    sizes = (_first(getattr(t, "resize_size", RESIZE)), _first(getattr(t, "crop_size", CROP)))
    return model, pre, list(w.meta["categories"]), sizes, f"weights: {name} {w}"


class _HeldLine:
    """stdout that holds back torch.hub's "Downloading: ..." line until the download makes progress (its bar on
    stderr, ``releasing``), so a failed download shows only our one-line error."""

    def __init__(self, target: Any) -> None:
        self.target, self.held = target, ""

    def write(self, s: str) -> int:
        if s.startswith("Downloading:") or (self.held and not s.strip()):  # print() sends its newline apart
            self.held += s
            return len(s)
        self.release()
        return self.target.write(s)

    def release(self) -> None:
        """Show the held line (bytes are flowing)."""
        if self.held:
            self.target.write(self.held)
            self.held = ""

    def releasing(self, err: Any) -> Any:
        """A stderr whose first write releases the held line."""
        hold = self

        class _Err:
            def write(self, s: str) -> int:
                hold.release()
                return err.write(s)

            def __getattr__(self, name: str) -> Any:
                return getattr(err, name)
        return _Err()

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding... as the real stream
        return getattr(self.target, name)


def _first(v: Any) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def imagenet_preprocess(mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> Preprocess:
    """uint8 images -> ``(x / 255 - mean) / std``, as torchvision's ImageNet transforms."""
    stats = {"mean": torch.tensor(mean).view(1, 3, 1, 1), "std": torch.tensor(std).view(1, 3, 1, 1)}
    return Preprocess("standardize", stats)


def _num_outputs(model: nn.Module) -> int:
    """The class count: the last Linear's outputs, else the last conv's channels (squeezenet)."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    return int(last.out_features if isinstance(last, nn.Linear) else last.out_channels)


def _load_file(model: nn.Module, name: str, path: Path) -> str:
    """Load a state dict from ``path`` into ``model`` (keys and shapes checked first, in one line)."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    fix = f"pass a state dict saved with torch.save({name}.state_dict(), FILE)"
    if missing or unexpected:
        if unexpected and all(k.startswith("module.") for k in unexpected):
            fix = "strip the 'module.' prefix DataParallel adds ({k[7:]: v for k, v in state.items()})"
        raise AllconvError(f"{path} does not fit {PREFIX}{name}: {len(missing)} missing keys "
                           f"{_few(missing)}, {len(unexpected)} unexpected {_few(unexpected)}; {fix}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise AllconvError(f"{path} does not fit {PREFIX}{name}: {len(bad)} shapes differ, e.g. {k} is "
                           f"{tuple(state[k].shape)} but the model's is {tuple(own[k].shape)} (another class count "
                           f"or variant?); {fix}")
    model.load_state_dict(state)
    return f"weights: {path} (ImageNet mean/std and {CROP}x{CROP} input; classes numbered: the file has no names)"


def _few(keys: list[str]) -> str:
    return f"({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})" if keys else ""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a ``torch.save`` file (read with ``weights_only=True``)."""
    if not path.is_file():
        raise AllconvError(f"--weights {path}: no such file; pass a state dict file (.pth/.pt or .safetensors) or "
                           "DEFAULT")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickle/safetensors errors have many types; all mean "not a state dict"
        first = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise AllconvError(f"cannot read weights {path}: {first}; pass a state dict saved with "
                           "torch.save(model.state_dict(), FILE) or a .safetensors file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise AllconvError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; save it with "
                           "torch.save(model.state_dict(), FILE)")
    return state


# --- images at the model's resolution ------------------------------------------------------------------------------

def read_image(src: Source, path: str) -> tuple[torch.Tensor, str]:
    """``path`` as uint8 RGB ``3 x size x size`` and what was done: our 32x32 nets crop to a square and resize; a
    torchvision model resizes the short side to ``resize`` and center-crops ``size`` (its eval transform), with PIL."""
    from allconv.image import load_image_described

    if src.resize is None:
        return load_image_described(path, size=src.size)
    raw, how = load_image_described(path, size=None)  # upright, RGB, transparency on grey, 8 bits
    steps = f"short side resized to {src.resize}, center-cropped to {src.size}x{src.size}"
    how = how.replace(": used as is", "") if how.endswith(": used as is") else how
    return resize_crop(raw, src.resize, src.size), f"{how}{', ' if ': ' in how else ': '}{steps}"


def resize_crop(raw: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> short side to ``resize`` (PIL bilinear, antialiased), then the centered ``size`` square."""
    img = Image.fromarray(raw.permute(1, 2, 0).numpy())
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# --- layers --------------------------------------------------------------------------------------------------------

def layer_shapes(model: nn.Module, size: int, device: torch.device) -> list[tuple[str, tuple[int, ...]]]:
    """Each listable layer (convs, blocks, pools: not norms, activations, dropout) with its output shape for one
    ``size`` x ``size`` image, from one forward pass on zeros; the hooks are removed after."""
    shapes: dict[str, tuple[int, ...]] = {}
    mods = [(n, m) for n, m in model.named_modules() if n and not isinstance(m, SKIP)]

    def hook(name: str) -> Any:
        def record(_m: nn.Module, _i: object, out: object) -> None:
            if torch.is_tensor(out) and out.ndim == 4:
                shapes.setdefault(name, tuple(out.shape[1:]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in mods]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    return [(n, shapes[n]) for n, _ in mods if n in shapes]


def list_layers(src: Source, device: torch.device) -> list[str]:
    """The ``--list-layers`` lines: a header, then ``name  CxHxW`` per layer, indented by depth."""
    rows = layer_shapes(src.model, src.size, device)
    width = max((len(n) + 2 * n.count(".") for n, _ in rows), default=0)
    lines = [f"layers of {src.display} for a {src.size}x{src.size} input (pass one to --layer):"]
    return lines + [f"  {'  ' * n.count('.') + n:<{width}}  {'x'.join(map(str, s))}" for n, s in rows]
