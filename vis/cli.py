"""``allconv-visualize``: Figure 2 of the paper for a layer of a trained net, or one image's reconstructions.

By default it loads the shipped All-CNN-C (else the newest local run), scans the CIFAR-10 test split and writes
``figure2-<layer>.png`` and the raw arrays ``figure2-<layer>.npz`` (reusable by the app: ``vis.figure2.load_scan``)
under ``out/vis/<checkpoint>/``. ``--image`` instead visualizes one image: it prints how the image was read (crop,
transparency, bit depth) and the prediction, and draws per chosen filter its activation map and reconstructions.
``--model torchvision:NAME`` (with ``--weights DEFAULT|FILE``) visualizes a torchvision classifier instead of a
checkpoint (see ``vis.sources``); its Figure 2 scans the pictures of ``--data FOLDER`` (or archive) at its input size
(``allconv.imageset``). ``--list-layers`` prints the layers ``--layer`` takes. ``--filter-maps`` draws the
layer's weights, and alone nothing else (no scan). The default filters are the first 16 (all of a smaller layer,
e.g. conv9's 10 classes). Bad input ends with a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from allconv.argparsing import Parser
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

from .figure2 import class_layer, render_scan
from .layout import compose, image_figure, weights_panel
from .maps import activations, filter_maps, resolve_layer
from .modes import METHODS
from .reconstruct import reconstruct
from .scan import save_scan, scan_layers
from .sources import PREFIX, Source, list_layers, open_source, read_image, resize_crop

PROG = "allconv-visualize"
DEFAULT_FILTERS = 16  # without --filters: the first 16 filters, or all of a smaller layer
SCAN_OPTIONS = ("data", "download", "split", "limit", "top_k")  # asking for any of these asks for a scan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = Parser(prog=PROG, description="Figure 2 of Springenberg et al. 2014 (top patches + guided backprop, "
                 "deconvnet, backprop reconstructions) for a layer, or one image's reconstructions.")
    ap.add_argument("--checkpoint", help="a .safetensors file or run dir (default: the shipped All-CNN-C, else the "
                    "newest run under runs/)")
    ap.add_argument("--model", help="torchvision:NAME (e.g. torchvision:resnet18) instead of a checkpoint")
    ap.add_argument("--weights", help="with --model: DEFAULT (torchvision's, downloaded), or a state dict file "
                    "(.pth/.pt or .safetensors); none: random init")
    ap.add_argument("--list-layers", action="store_true", help="print the layers --layer takes, with their output "
                    "shapes, and exit")
    ap.add_argument("--layer", default="conv6", help="layer name, e.g. conv6 (default); a comma list shares one scan")
    ap.add_argument("--method", default="all", help=f"{', '.join(METHODS)} or all (default)")
    ap.add_argument("--filters", help="filter indices: ranges and commas, e.g. 0-3,7 (default: the first 16, 0-15, "
                    "or all of a layer with fewer)")
    ap.add_argument("--top-k", type=int, help="patches per filter (default 10)")
    ap.add_argument("--image", help="visualize this image instead of scanning a dataset (any size or mode: "
                    "center-cropped, transparency on grey, resized to the model's input, 32x32 for our nets, 224x224 "
                    "for torchvision's; prints what was done)")
    ap.add_argument("--filter-maps", action="store_true", help="write the layer's filter weights as a PNG; alone it "
                    "draws only those (add --image, or a scan option such as --limit, for more)")
    ap.add_argument("--data", help="dataset: cifar10, cifar100, an .npz, an image folder or archive (default: the "
                    "one the checkpoint was trained on if named, else CIFAR-10; torchvision's folder, else the "
                    "offline copy); with --model torchvision:NAME, a folder (or "
                    ".zip/.tar) of pictures, any layout")
    ap.add_argument("--download", action="store_true", default=None,
                    help="let torchvision download CIFAR-10 if it is missing")
    ap.add_argument("--split", choices=["test", "train"], help="the split to scan (default test)")
    ap.add_argument("--limit", type=int, help="scan only the first N images of the split")
    ap.add_argument("--batch-size", type=int, default=500, help="images per scan batch (default 500)")
    ap.add_argument("--scale", type=int, help="tile upscaling factor, nearest neighbour (default 3; 1 for inputs "
                    "over 64 px, e.g. torchvision's 224)")
    ap.add_argument("--out", help="output folder (default out/vis/<checkpoint name>/)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, default), cpu, cuda or cuda:N")
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="scan in bf16 where it is native "
                    "(auto), always (on) or never (off); the picks are fp32's either way: candidates are rescored "
                    "in fp32")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    args.wants_scan = args.image is None and (not args.filter_maps or any(getattr(args, k) is not None
                                                                          for k in SCAN_OPTIONS))
    args.top_k = 10 if args.top_k is None else args.top_k
    args.split, args.download = args.split or "test", bool(args.download)
    return args


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
    _check_numbers(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = parse_methods(args.method)
    device = _device(args.device)
    src = open_source(args.model, args.checkpoint, args.weights, device)
    if args.list_layers:
        return [src.label, *src.notes, *list_layers(src, device)]
    image, how = read_image(src, args.image) if args.image else (None, "")
    args.scale = args.scale or (3 if src.size <= 64 else 1)
    layers = [s for s in args.layer.replace(" ", "").split(",") if s]
    if not layers:
        raise AllconvError("--layer is empty; give a layer name such as conv6 (--list-layers shows them)")
    filters = {layer: _filters(args.filters, _num_filters(src, layer, device)) for layer in layers}
    out = Path(args.out) if args.out else Path("out") / "vis" / src.name
    lines = [src.label, *src.notes]
    names = {"net": src.display, "classes": src.classes}
    if image is not None:
        lines += [f"image {args.image}: {how}"]
        lines += _image_mode(src.model, src.preprocess, image, args, filters, methods, out, device, names)
    elif args.wants_scan:
        lines += _figure_mode(src, args, filters, methods, out, device)
    if args.filter_maps:
        for layer in layers:
            lines += _filter_maps(src.model, layer, filters[layer], out, args.scale, names)
    return lines


def _filters(spec: str | None, count: int) -> list[int]:
    """``--filters`` for a layer of ``count`` filters; not given: the first ``DEFAULT_FILTERS`` (fewer if it has)."""
    return list(range(min(DEFAULT_FILTERS, count))) if spec is None else parse_filters(spec, count)


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

def _figure_mode(src: Source, args: argparse.Namespace, filters: dict[str, list[int]], methods: list[str],
                 out: Path, device: torch.device) -> list[str]:
    """One scan over the split for every layer, then per layer: reconstructions, figure PNG and arrays."""
    t0 = time.perf_counter()
    images, labels, data, split, lines = _pictures(src, args, out) if src.torchvision else _dataset(args, src)
    model, pre = src.model, src.preprocess
    scans = scan_layers(model, images, pre, layers=list(filters), top_k=args.top_k, batch_size=args.batch_size,
                        device=device, progress=not args.quiet, split=split, data=data, amp=args.amp)
    what = f"{len(images)} {data} {split} images" if split else f"{len(images)} images from {data}"
    lines += [f"scanned {len(images)} {split}{' ' if split else ''}images for {', '.join(filters)} in "
              f"{time.perf_counter() - t0:.1f}s"]
    for layer, rows in filters.items():
        t1 = time.perf_counter()
        s = scans[layer]
        title = f"{src.display}, {layer}: each filter's top {s.top_k} patches in {what}"
        img = render_scan(model, images, pre, s, methods=methods, filters=rows, device=device, scale=args.scale,
                          classes=src.classes, labels=labels, title=title)
        png, npz = out / f"figure2-{layer}.png", out / f"figure2-{layer}.npz"
        png.parent.mkdir(parents=True, exist_ok=True)
        img.save(png)
        save_scan(s, npz)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in s.seconds.items() if k != "scan")
        lines += [f"figure 2 for {layer}: {len(rows)} filters x top {s.top_k}, {'/'.join(methods)}, "
                  f"{time.perf_counter() - t1:.1f}s ({stages})", f"wrote {png}", f"wrote {npz}"]
    return lines


def _dataset(args: argparse.Namespace, src: Source) -> tuple[torch.Tensor, torch.Tensor | None, str, str, list[str]]:
    """The split's images, their labels (None unless the dataset's classes are the model's), the dataset's name.
    Default: the dataset the net was trained on (CIFAR-100 for a CIFAR-100 net), else CIFAR-10."""
    from allconv import data

    classes = src.classes
    splits = data.load(args.data or src.data, download=args.download)
    images, labels = (splits.x_test, splits.y_test) if args.split == "test" else (splits.x_train, splits.y_train)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    return images, labels if list(splits.classes) == classes else None, splits.name, args.split, []


def _pictures(src: Source, args: argparse.Namespace, out: Path) -> tuple[torch.Tensor, None, str, str, list[str]]:
    """A torchvision model's scan set: the pictures of ``--data`` (a folder or archive) at its input size, read as
    ``--image`` reads one; ``images.txt`` in ``out`` names them in scan order (the .npz's ``image_index``)."""
    from allconv.imageset import load_imageset

    if args.data is None:
        raise AllconvError(f"a Figure 2 scan of {PREFIX}{src.name} needs pictures: give --data FOLDER (or a .zip/.tar "
                           "of one), or use --image FILE")
    fit = partial(resize_crop, resize=src.resize or src.size, size=src.size)
    got = load_imageset(args.data, src.size, fit, f"resize{src.resize}-crop{src.size}", split=args.split,
                        limit=args.limit, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "images.txt"
    listing.write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(got.names)))
    lines = [f"read {len(got.names)} pictures from {args.data} (short side resized to {src.resize}, center-cropped "
             f"to {src.size}x{src.size}); their names in scan order: {listing}"]
    if got.skipped:
        lines.append(f"skipped {len(got.skipped)} unreadable file(s), e.g. {got.skipped[0]}")
    return got.images, None, got.name, got.split, lines


# --- one image -----------------------------------------------------------------------------------------------------

def _image_mode(model: nn.Module, pre: Preprocess, raw: torch.Tensor, args: argparse.Namespace,
                filters: dict[str, list[int]], methods: list[str], out: Path, device: torch.device,
                names: dict) -> list[str]:
    """The prediction, then per layer and filter: its activation map and each method's reconstruction (at the
    strongest unit) of one image."""
    x = pre.to(device)(raw.to(device))
    with torch.no_grad():
        probs = activations(model, x, None)[0].float().softmax(0).cpu()
    classes = names["classes"]
    top = probs.argsort(descending=True)[:3].tolist()
    lines = ["prediction: " + ", ".join(f"{classes[i]} {float(probs[i]):.0%}" for i in top)]
    for layer, rows in filters.items():
        lines += _image_layer(model, x, raw, args, layer, rows, methods, out, names, probs)
    return lines


def _image_layer(model: nn.Module, x: torch.Tensor, raw: torch.Tensor, args: argparse.Namespace, layer: str,
                 filters: list[int], methods: list[str], out: Path, names: dict, probs: torch.Tensor) -> list[str]:
    """One layer's figure and arrays for the image; on the class layer rows are named by class and probability."""
    t0 = time.perf_counter()
    acts = activations(model, x, layer)[0, filters].float().cpu()
    sigs = {m: reconstruct(model, x, method=m, layer=layer, channel=filters)[0].float().cpu() for m in methods}
    labels = [f"{layer} #{f}" for f in filters]
    classes, best = names["classes"], int(probs.argmax())
    if class_layer(model, len(probs)) == layer:  # its channels are the class scores
        labels = [f"{s} {classes[f]} {float(probs[f]):.0%}{', predicted' if f == best else ''}"
                  for s, f in zip(labels, filters)]
    title = f"{names['net']}, {layer} on {Path(args.image).name}: predicted {classes[best]} {float(probs[best]):.0%}"
    img = image_figure(raw, acts, sigs, labels, args.scale, title)
    stem = f"image-{Path(args.image).stem}-{layer}"
    png, npz = out / f"{stem}.png", out / f"{stem}.npz"
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    with open(npz, "wb") as f:
        np.savez(f, image=raw.numpy(), filters=np.asarray(filters), activations=acts.numpy(),
                 probabilities=probs.numpy(), **{f"recon_{m}": s.numpy() for m, s in sigs.items()})
    return [f"image {args.image} ({layer}, {len(filters)} filters, {'/'.join(methods)}): "
            f"{time.perf_counter() - t0:.1f}s", f"wrote {png}", f"wrote {npz}"]


# --- filter weights ------------------------------------------------------------------------------------------------

def _filter_maps(model: nn.Module, layer: str, filters: list[int], out: Path, scale: int, names: dict) -> list[str]:
    """The layer's weights as ``filters-<layer>.png``: one row per filter."""
    png = out / f"filters-{layer}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    title, img = weights_panel(filter_maps(model, layer)[filters].float().cpu(), scale)
    heading = f"{names['net']}, {layer}: filter weights"
    compose([(title, img)], [f"{layer} #{f}" for f in filters], heading).save(png)
    return [f"wrote {png}"]


# --- helpers -------------------------------------------------------------------------------------------------------

def _num_filters(src: Source, layer: str, device: torch.device) -> int:
    """How many channels ``layer`` outputs (an unknown layer -> the one-line list of valid ones)."""
    resolve_layer(src.model, layer)
    fmap = activations(src.model, torch.zeros(1, 3, src.size, src.size, device=device), layer)
    if fmap.ndim != 4:
        raise AllconvError(f"layer {layer!r} gives shape {tuple(fmap.shape)}, not feature maps; pick a conv layer "
                           "(--list-layers shows them)")
    return int(fmap.shape[1])


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
