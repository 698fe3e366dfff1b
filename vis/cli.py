"""``allconv-visualize``: Figure 2 of the paper for a layer of a trained net, or one image's reconstructions.

By default it loads the shipped All-CNN-C (else the newest local run), scans the CIFAR-10 test split and writes
``figure2-<layer>.png`` and the raw arrays ``figure2-<layer>.npz`` (reusable by the app: ``vis.figure2.load_scan``)
under ``out/vis/<checkpoint>/``. ``--image`` instead visualizes one image: per chosen filter its activation map and
reconstructions. Bad input ends with a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

from . import render
from .figure2 import TITLES, compose, render_scan, save_scan, scan_layers
from .maps import activations, filter_maps, resolve_layer
from .modes import METHODS
from .reconstruct import reconstruct

PROG = "allconv-visualize"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``error: ...``) and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {PROG} --help\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _Parser(prog=PROG, description="Figure 2 of Springenberg et al. 2014 (top patches + guided backprop, "
                 "deconvnet, backprop reconstructions) for a layer, or one image's reconstructions.")
    ap.add_argument("--checkpoint", help="a .safetensors file or run dir (default: the shipped All-CNN-C, else the "
                    "newest run under runs/)")
    ap.add_argument("--layer", default="conv6", help="layer name, e.g. conv6 (default); a comma list shares one scan")
    ap.add_argument("--method", default="all", help=f"{', '.join(METHODS)} or all (default)")
    ap.add_argument("--filters", default="0-15", help="filter indices: ranges and commas, e.g. 0-3,7 (default 0-15)")
    ap.add_argument("--top-k", type=int, default=10, help="patches per filter (default 10)")
    ap.add_argument("--image", help="visualize this image (any size or mode; converted to RGB and resized to 32x32) "
                    "instead of scanning a dataset")
    ap.add_argument("--filter-maps", action="store_true", help="also write the layer's filter weights as a PNG")
    ap.add_argument("--data", help="dataset: cifar10, an .npz, an image folder or archive (default: CIFAR-10 from "
                    "torchvision's folder, else the offline copy)")
    ap.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 if it is missing")
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--limit", type=int, help="scan only the first N images of the split")
    ap.add_argument("--batch-size", type=int, default=500, help="images per scan batch (default 500)")
    ap.add_argument("--scale", type=int, default=3, help="tile upscaling factor, nearest neighbour (default 3)")
    ap.add_argument("--out", help="output folder (default out/vis/<checkpoint name>/)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, default), cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        lines = run(args)
    except AllconvError as e:
        return _fail(str(e))
    except OSError as e:  # e.g. an --out folder that cannot be written
        return _fail(_os_error(e))
    for line in lines:
        print(line)
    return 0


def _os_error(e: OSError) -> str:
    """A file error names the file and blames --out or permissions; any other OSError (a network error, which
    ``allconv.data`` already reports itself) is only described, not blamed on files."""
    if e.filename is None:
        return f"{type(e).__name__}: {e.strerror or e}"
    return f"{e.strerror or e} ({e.filename}); check --out and file permissions"


def _fail(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> list[str]:
    """Do what the arguments ask; return the summary lines (files written, timings)."""
    from allconv import checkpoint

    _check_numbers(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = parse_methods(args.method)
    image = _read_image(args.image) if args.image else None  # fail fast, before loading anything else
    device = _device(args.device)
    path = _checkpoint_path(args.checkpoint)
    model, meta = checkpoint.load(path, device=device)
    if meta.preprocess is None:
        raise AllconvError(f"{path} stores no preprocessing statistics; re-save it with allconv-train")
    layers = [s for s in args.layer.replace(" ", "").split(",") if s]
    if not layers:
        raise AllconvError("--layer is empty; give a layer name such as conv6")
    filters = {layer: parse_filters(args.filters, _num_filters(model, layer, device)) for layer in layers}
    out = Path(args.out) if args.out else Path("out") / "vis" / _stem(path)
    lines = [f"checkpoint: {path} ({meta.model}, {device})"]
    if image is not None:
        for layer in layers:
            lines += _image_mode(model, meta.preprocess, image, args, layer, filters[layer], methods, out, device)
    else:
        lines += _figure_mode(model, meta.preprocess, args, filters, methods, out, device)
    if args.filter_maps:
        for layer in layers:
            lines += _filter_maps(model, layer, filters[layer], out, args.scale)
    return lines


def parse_filters(spec: str, count: int | None = None) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``; with ``count``, every index must be below it."""
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise AllconvError(f"bad --filters {spec!r}; give indices and ranges like 0-15 or 0-3,7")
        out += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    out = list(dict.fromkeys(out))
    if count is not None and max(out) >= count:
        raise AllconvError(f"filter {max(out)} out of range: the layer has {count} filters; use 0-{count - 1}")
    return out


def parse_methods(spec: str) -> list[str]:
    """``"all"`` -> every method; else one name (or a comma list) from ``METHODS``."""
    if spec == "all":
        return list(METHODS)
    names = [s for s in spec.replace(" ", "").split(",") if s]
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise AllconvError(f"unknown method {(bad or [spec])[0]!r}; choose one of: {', '.join(METHODS)}, all")
    return list(dict.fromkeys(names))


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("top_k", "limit", "batch_size", "scale", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AllconvError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


# --- Figure 2 ------------------------------------------------------------------------------------------------------

def _figure_mode(model: nn.Module, pre: Preprocess, args: argparse.Namespace, filters: dict[str, list[int]],
                 methods: list[str], out: Path, device: torch.device) -> list[str]:
    """One scan over the split for every layer, then per layer: reconstructions, figure PNG and arrays."""
    t0 = time.perf_counter()
    images = _dataset(args)
    scans = scan_layers(model, images, pre, layers=list(filters), top_k=args.top_k, batch_size=args.batch_size,
                        device=device, progress=not args.quiet, split=args.split)
    lines = [f"scanned {len(images)} {args.split} images for {', '.join(filters)} in {time.perf_counter() - t0:.1f}s"]
    for layer, rows in filters.items():
        t1 = time.perf_counter()
        s = scans[layer]
        img = render_scan(model, images, pre, s, methods=methods, filters=rows, device=device, scale=args.scale)
        png, npz = out / f"figure2-{layer}.png", out / f"figure2-{layer}.npz"
        png.parent.mkdir(parents=True, exist_ok=True)
        img.save(png)
        save_scan(s, npz)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in s.seconds.items() if k != "scan")
        lines += [f"figure 2 for {layer}: {len(rows)} filters x top {s.top_k}, {'/'.join(methods)}, "
                  f"{time.perf_counter() - t1:.1f}s ({stages})", f"wrote {png}", f"wrote {npz}"]
    return lines


def _dataset(args: argparse.Namespace) -> torch.Tensor:
    from allconv import data

    splits = data.load(args.data, download=args.download)
    images = splits.x_test if args.split == "test" else splits.x_train
    return images[: args.limit] if args.limit else images


# --- one image -----------------------------------------------------------------------------------------------------

def _read_image(path: str) -> torch.Tensor:
    from allconv.data import load_image

    return load_image(path, size=32)


def _image_mode(model: nn.Module, pre: Preprocess, raw: torch.Tensor, args: argparse.Namespace, layer: str,
                filters: list[int], methods: list[str], out: Path, device: torch.device) -> list[str]:
    """Per filter: its activation map and each method's reconstruction (at the strongest unit) of one image."""
    t0 = time.perf_counter()
    x = pre.to(device)(raw.unsqueeze(0).to(device))
    acts = activations(model, x, layer)[0, filters].float().cpu()
    sigs = {m: reconstruct(model, x, method=m, layer=layer, channel=filters)[0].float().cpu() for m in methods}
    img = image_figure(raw, acts, sigs, layer, filters, args.scale)
    stem = f"image-{Path(args.image).stem}-{layer}"
    png, npz = out / f"{stem}.png", out / f"{stem}.npz"
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    with open(npz, "wb") as f:
        np.savez(f, image=raw.numpy(), filters=np.asarray(filters), activations=acts.numpy(),
                 **{f"recon_{m}": s.numpy() for m, s in sigs.items()})
    return [f"image {args.image} ({layer}, {len(filters)} filters, {'/'.join(methods)}): "
            f"{time.perf_counter() - t0:.1f}s", f"wrote {png}", f"wrote {npz}"]


def image_figure(raw: torch.Tensor, acts: torch.Tensor, sigs: dict[str, torch.Tensor], layer: str,
                 filters: list[int], scale: int) -> Image.Image:
    """Panels: the image, the activation map (upscaled to the image), one panel per method; one row per filter."""
    size = tuple(raw.shape[1:])
    maps = torch.nn.functional.interpolate(acts[:, None], size=size, mode="nearest")[:, 0]
    panels = [("image", (raw[None].float() / 255).expand(len(filters), -1, -1, -1)),
              ("activation", torch.stack([render.heatmap(m) for m in maps]))]
    panels += [(TITLES[m], render.to_image(s)) for m, s in sigs.items()]
    grids = [(title, render.grid(tiles, nrow=1, pad=1, scale=scale)) for title, tiles in panels]
    return compose(grids, [f"{layer} #{f}" for f in filters])


# --- filter weights ------------------------------------------------------------------------------------------------

def _filter_maps(model: nn.Module, layer: str, filters: list[int], out: Path, scale: int) -> list[str]:
    """The layer's weights as ``filters-<layer>.png``: one row per filter."""
    png = out / f"filters-{layer}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    title, img = weights_panel(filter_maps(model, layer)[filters].float().cpu(), scale)
    compose([(title, img)], [f"{layer} #{f}" for f in filters]).save(png)
    return [f"wrote {png}"]


def weights_panel(w: torch.Tensor, scale: int, max_inputs: int = 32) -> tuple[str, Image.Image]:
    """(F, C, k, k) weights as (title, image), one row per filter: RGB tiles when C is 3 (the first layer); a heatmap
    of the (F, C) matrix for 1x1 convs; else each filter's first ``max_inputs`` kernels in gray, normalized per
    filter (so kernels of one filter compare)."""
    f, c, k, _ = w.shape
    px = max(scale * 2, 1)
    if c == 3:
        return f"{k}x{k} RGB filters", render.grid(render.to_image(w), nrow=1, pad=1, scale=px)
    if k == 1:
        mat = render.to_pil(render.heatmap(w[:, :, 0, 0]))
        title = f"1x1 weights: one row per filter, {c} input channels (inferno: low to high)"
        return title, mat.resize((c * px, f * max(px, 12)), Image.Resampling.NEAREST)
    n = min(c, max_inputs)
    rows = render.to_image(w[:, :n].reshape(f, 1, n * k, k).expand(-1, 3, -1, -1))  # each filter normalized alone
    tiles = rows.reshape(f, 3, n, k, k).permute(0, 2, 1, 3, 4).reshape(f * n, 3, k, k)
    return f"{k}x{k} kernels on input channels 0-{n - 1} of {c}", render.grid(tiles, nrow=n, pad=1, scale=px)


# --- helpers -------------------------------------------------------------------------------------------------------

def _num_filters(model: nn.Module, layer: str, device: torch.device) -> int:
    """How many channels ``layer`` outputs (an unknown layer -> the one-line list of valid ones)."""
    resolve_layer(model, layer)
    fmap = activations(model, torch.zeros(1, 3, 32, 32, device=device), layer)
    if fmap.ndim != 4:
        raise AllconvError(f"layer {layer!r} gives shape {tuple(fmap.shape)}, not feature maps; pick a conv layer "
                           "such as conv6")
    return int(fmap.shape[1])


def _checkpoint_path(given: str | None) -> Path:
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


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise AllconvError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AllconvError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise AllconvError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0")
    return torch.device(name)


if __name__ == "__main__":
    sys.exit(main())
