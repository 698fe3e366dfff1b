"""``allconv-visualize``: Figure 2 of the paper for a layer of a trained net, or one image's reconstructions.

By default it loads the shipped All-CNN-C (else the newest local run), scans the CIFAR-10 test split and writes
``figure2-<layer>.png`` and the raw arrays ``figure2-<layer>.npz`` (reusable by the app) under ``out/vis/<checkpoint>/``.
``--image`` instead visualizes one image: per chosen filter its activation map and reconstructions.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from allconv.errors import AllconvError

from . import render
from .figure2 import TITLES, _compose, figure2, save_scan
from .maps import activations, filter_maps, resolve_layer
from .modes import METHODS
from .reconstruct import reconstruct


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="allconv-visualize", description="Figure 2 (top patches + guided backprop, "
                                 "deconvnet, backprop reconstructions) for a layer, or one image's reconstructions.")
    ap.add_argument("--checkpoint", help="a .safetensors file or run dir (default: the shipped All-CNN-C, else the "
                    "newest run under runs/)")
    ap.add_argument("--layer", default="conv6", help="layer name, e.g. conv6 (default); a comma list shares one scan")
    ap.add_argument("--method", default="all", choices=[*METHODS, "all"])
    ap.add_argument("--filters", default="0-15", help="filter indices: ranges and commas, e.g. 0-3,7 (default 0-15)")
    ap.add_argument("--top-k", type=int, default=10, help="patches per filter (default 10)")
    ap.add_argument("--image", help="visualize this image (any size or mode) instead of scanning a dataset")
    ap.add_argument("--filter-maps", action="store_true", help="also write the layer's filter weights as a PNG")
    ap.add_argument("--data", help="dataset: cifar10 (default), an .npz, an image folder or archive")
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--limit", type=int, help="scan only the first N images")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--scale", type=int, default=3, help="tile upscaling factor (nearest)")
    ap.add_argument("--out", help="output folder (default out/vis/<checkpoint name>/)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        written = run(args)
    except AllconvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in written:
        print(line)
    return 0


def run(args: argparse.Namespace) -> list[str]:
    """Do what the arguments ask; return the summary lines (files written, timings)."""
    from allconv import checkpoint

    path = _checkpoint_path(args.checkpoint)
    device = _device(args.device)
    model, meta = checkpoint.load(path, device=device)
    if meta.preprocess is None:
        raise AllconvError(f"{path} stores no preprocessing; re-save it with allconv-train")
    layers = [s for s in args.layer.replace(" ", "").split(",") if s]
    if not layers:
        raise AllconvError("--layer is empty; give a layer name such as conv6")
    for layer in layers:
        resolve_layer(model, layer)
    methods = list(METHODS) if args.method == "all" else [args.method]
    if args.top_k < 1 or (args.limit is not None and args.limit < 1) or args.batch_size < 1 or args.scale < 1:
        raise AllconvError("--top-k, --limit, --batch-size and --scale must be >= 1")
    out = Path(args.out) if args.out else Path("out") / "vis" / _stem(path)
    lines = [f"checkpoint: {path} ({meta.model})"]
    for layer in layers:
        filters = parse_filters(args.filters, _num_filters(model, layer, device))
        if args.image:
            lines += _image_mode(model, meta.preprocess, args, layer, filters, methods, out, device)
        else:
            lines += _figure_mode(model, meta.preprocess, args, layer, filters, methods, out, device)
        if args.filter_maps:
            lines += _filter_maps(model, layer, filters, out, args.scale)
    return lines


def _figure_mode(model: nn.Module, pre: object, args: argparse.Namespace, layer: str, filters: list[int],
                 methods: list[str], out: Path, device: torch.device) -> list[str]:
    from allconv import data

    t0 = time.perf_counter()
    splits = data.load(args.data)
    images = splits.x_test if args.split == "test" else splits.x_train
    images = images[: args.limit] if args.limit else images
    scan, img = figure2(model, images, pre, layer=layer, methods=methods, filters=filters, top_k=args.top_k,  # type: ignore[arg-type]
                        batch_size=args.batch_size, device=device, progress=not args.quiet, split=args.split,
                        scale=args.scale)
    png, npz = out / f"figure2-{layer}.png", out / f"figure2-{layer}.npz"
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    save_scan(scan, npz)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in scan.seconds.items())
    return [f"figure 2 ({layer}, {len(filters)} filters x top {scan.top_k} of {len(images)} {args.split} images, "
            f"{'/'.join(methods)}): {time.perf_counter() - t0:.1f}s ({stages})", f"wrote {png}", f"wrote {npz}"]


def _image_mode(model: nn.Module, pre: object, args: argparse.Namespace, layer: str, filters: list[int],
                methods: list[str], out: Path, device: torch.device) -> list[str]:
    from allconv.data import load_image

    t0 = time.perf_counter()
    raw = load_image(args.image, size=32)
    x = pre(raw.unsqueeze(0).to(device))  # type: ignore[operator]
    acts = activations(model, x, layer)[0, filters].cpu()
    sigs = {m: reconstruct(model, x, method=m, layer=layer, channel=filters)[0].cpu() for m in methods}
    img = _image_figure(raw, acts, sigs, layer, filters, args.scale)
    stem = f"image-{Path(args.image).stem}-{layer}"
    png, npz = out / f"{stem}.png", out / f"{stem}.npz"
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    with open(npz, "wb") as f:
        np.savez(f, image=raw.numpy(), filters=np.asarray(filters), activations=acts.numpy(),
                 **{f"recon_{m}": s.numpy() for m, s in sigs.items()})
    return [f"image {args.image} ({layer}, {len(filters)} filters, {'/'.join(methods)}): "
            f"{time.perf_counter() - t0:.1f}s", f"wrote {png}", f"wrote {npz}"]


def _image_figure(raw: torch.Tensor, acts: torch.Tensor, sigs: dict[str, torch.Tensor], layer: str,
                  filters: list[int], scale: int):  # noqa: ANN202
    """Panels: the image, then one column per kind (activation map, each method), one row per filter."""
    size = raw.shape[1:]
    maps = torch.nn.functional.interpolate(acts[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    panels = [("image", raw[None].float() / 255),
              ("activation", torch.stack([render.heatmap(m) for m in maps]))]
    panels += [(TITLES[m], torch.stack([render.to_image(t) for t in s])) for m, s in sigs.items()]
    grids = [(title, render.grid(tiles, nrow=1, pad=1, scale=scale)) for title, tiles in panels]
    return _compose(grids, [f"{layer} #{f}" for f in filters], len(filters))


def _filter_maps(model: nn.Module, layer: str, filters: list[int], out: Path, scale: int) -> list[str]:
    """RGB tiles when the layer sees the image (conv1), else each filter's first 32 input-channel kernels in gray."""
    w = filter_maps(model, layer)[filters].float().cpu()
    if w.shape[1] == 3:
        tiles, nrow = torch.stack([render.to_image(f) for f in w]), min(len(filters), 16)
    else:
        w = w[:, :32]
        tiles = torch.stack([render.to_image(k[None].expand(3, -1, -1)) for f in w for k in f])
        nrow = w.shape[1]
    img = render.grid(tiles, nrow=nrow, pad=1, scale=max(scale * 2, 1))
    png = out / f"filters-{layer}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    return [f"wrote {png}"]


def _num_filters(model: nn.Module, layer: str, device: torch.device) -> int:
    fmap = activations(model, torch.zeros(1, 3, 32, 32, device=device), layer)
    return int(fmap.shape[1])


def _checkpoint_path(given: str | None) -> Path:
    from allconv.checkpoint import default_checkpoint

    if given:
        return Path(given)
    found = default_checkpoint()
    if found is None:
        raise AllconvError("no checkpoint found (no shipped checkpoints/all-cnn-c.safetensors, no runs/**/"
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
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AllconvError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise AllconvError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


if __name__ == "__main__":
    sys.exit(main())
