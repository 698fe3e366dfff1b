"""Figure 2 of the paper: for each filter of a layer, its top-k image patches and their reconstructions.

``vis.scan`` finds each filter's top-k images over a split (re-exported here: ``figure2.scan``, ``Scan``,
``save_scan``, ``load_scan``). ``reconstructions`` computes each pick's input-space signal with
``vis.reconstruct_methods_at`` (batched over all picks; one forward serves every method) and crops it to the pick's
receptive field (RF).
``figure`` renders the paper's layout with ``vis.layout``: one panel per kind ("patches", "guided backprop", ...), one
row per filter, k columns, under a title naming model, layer and data; on the class layer (``class_layer``: its
channels are the class scores) rows are named by class and patches captioned with their image's class.

Speed: a unit depends only on the pixels of its RF, so each pick is reconstructed on a window of its (preprocessed)
image that holds its RF, with the window's origin a multiple of the layer's total stride (so every stride/pool samples
the same positions as on the full image) and flush with the image border wherever the RF crosses it (so padding is
read exactly where the full image reads it) -- exact, and for ``conv6`` of All-CNN-C a 24x24 window instead of 32x32.
On a chain net (the paper's 12) each layer then computes only the pick's cone (``vis.cone``): a fifth of the window's
multiply-adds at conv6. Tests check both equal ``vis.reconstruct_at`` on the full image at every position.

Border picks: the part of an RF outside the image is gray in patches and zero in signals, so all tiles have the full
RF size and align. An RF at least as long as the image along a side (ResNet-50's layer4 on 224 px) is cut to the
image along it: such a tile is the whole image there, which holds every pixel the unit reads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

from . import render
from .layout import TITLES, compose, tile_scale
from .cone import chain, cone_signals, cut
from .maps import model_scope
from .modes import METHODS, check_method
from .reconstruct import reconstruct_methods_at
from .scan import FORMAT, Scan, _check_uint8, _device, load_scan, save_scan, scan, scan_layers

__all__ = ["FORMAT", "TITLES", "Scan", "attach", "class_layer", "compose", "figure", "figure2", "load_scan",
           "patches", "reconstructions", "render_scan", "save_scan", "scan", "scan_layers"]

PATCH_FILL = 128  # gray, for the part of a border patch outside the image
CHUNK = 2048  # picks whose whole images are preprocessed at once when cutting windows


# --- tiles ---------------------------------------------------------------------------------------------------------

def reconstructions(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, scan: Scan, *,
                    methods: Sequence[str] = METHODS, filters: Sequence[int] | None = None, batch_size: int = 256,
                    device: str | torch.device | None = None, crop: bool = True) -> dict[str, torch.Tensor]:
    """Each pick's signal per method, cut to its RF (zero outside the image): method -> (F, k, 3, S, S), CPU float32.

    ``images`` are the uint8 images the scan indexed. ``crop`` (default) runs each pick on the smallest stride-aligned
    window holding its RF instead of the whole image, and on a chain net only on the pick's cone (``vis.cone``): the
    same numbers, less work.
    """
    methods = [check_method(m) for m in methods]
    _check_uint8(images)
    rows = _filter_rows(scan, filters)
    dev = _device(model, device)
    picks = _picks(scan, rows)
    win = _window_size(scan) if crop else scan.image_size
    origin = _window_origin(picks["rf_start"], scan, win)
    x = _windows(images, picks["image"], origin, win, preprocess.to(dev), dev)
    pos = picks["positions"] - origin // torch.tensor(scan.rf_stride)
    t0 = time.perf_counter()
    corner = torch.zeros_like(origin)  # where each signal starts in its window: the window's corner, or its cone's
    with model_scope(model):  # (under the lock: another thread's forward_to hook would hide the chain)
        steps = chain(model, scan.layer) if crop else None
        if steps is None:
            sigs = reconstruct_methods_at(model, x, methods=methods, layer=scan.layer, channels=picks["channel"],
                                          positions=pos, batch_size=batch_size)
        else:
            sigs, corner = cone_signals(model, steps, x, methods=methods, layer=scan.layer,
                                        channels=picks["channel"], positions=pos, batch_size=batch_size)
    out: dict[str, torch.Tensor] = {}
    for m, sig in sigs.items():
        tiles = cut(sig.float().cpu(), _tile_start(scan, picks["rf_start"]) - origin - corner.cpu(), _tile(scan), 0.0)
        out[m] = tiles.view(len(rows), scan.top_k, *tiles.shape[1:])
    scan.seconds["/".join(methods)] = round(time.perf_counter() - t0, 3)  # one forward serves them all
    return out


def patches(images: torch.Tensor, scan: Scan, filters: Sequence[int] | None = None) -> torch.Tensor:
    """The image patch under each pick's RF as uint8 (F, k, 3, S, S); outside the image: gray."""
    _check_uint8(images)
    rows = _filter_rows(scan, filters)
    picks = _picks(scan, rows)
    tiles = cut(images[picks["image"]].cpu(), _tile_start(scan, picks["rf_start"]), _tile(scan), PATCH_FILL)
    return tiles.view(len(rows), scan.top_k, *tiles.shape[1:])


def attach(scan: Scan, images: torch.Tensor, recons: dict[str, torch.Tensor],
           filters: Sequence[int] | None = None) -> Scan:
    """Store the patches and reconstructions of rows ``filters`` in ``scan`` (for ``figure`` and ``save_scan``)."""
    rows = _filter_rows(scan, filters)
    scan.filters = np.asarray(rows, dtype=np.int64)
    scan.patches = patches(images, scan, rows).numpy()
    scan.recons = {m: r.numpy().astype(np.float32) for m, r in recons.items()}
    return scan


def _picks(scan: Scan, rows: list[int]) -> dict[str, torch.Tensor]:
    """The picks of ``rows``, flattened filter-major: image, channel, map position and unclipped RF start."""
    k = scan.top_k
    pos = torch.from_numpy(scan.positions[rows].reshape(-1, 2))
    return {"image": torch.from_numpy(scan.image_index[rows].ravel()),
            "channel": torch.tensor(rows, dtype=torch.long).repeat_interleave(k), "positions": pos,
            "rf_start": torch.tensor(scan.rf_offset) + pos * torch.tensor(scan.rf_stride)}


def _windows(images: torch.Tensor, index: torch.Tensor, origin: torch.Tensor, win: tuple[int, int],
             pre: Preprocess, dev: torch.device) -> torch.Tensor:
    """Preprocess each pick's whole image (ZCA is global), then cut its window: (P, 3, wh, ww) on ``dev``."""
    parts = []
    for s in range(0, len(index), CHUNK):
        uniq, inv = torch.unique(index[s:s + CHUNK], return_inverse=True)
        x = pre(images[uniq].to(dev))[inv.to(dev)]
        parts.append(cut(x, origin[s:s + CHUNK].to(dev), win, 0.0))
    return torch.cat(parts)


def _tile(scan: Scan) -> tuple[int, int]:
    """A tile's (height, width): the RF's, or the image's along a side where the RF is at least as long."""
    return min(scan.rf_size, scan.image_size[0]), min(scan.rf_size, scan.image_size[1])


def _tile_start(scan: Scan, rf_start: torch.Tensor) -> torch.Tensor:
    """Each tile's (top, left): the RF's, or 0 along a side where the tile is the whole image (an RF that long,
    e.g. ResNet-50's layer4, reads every pixel it can reach there: the whole image holds it, nothing is lost)."""
    whole = torch.tensor([scan.rf_size >= n for n in scan.image_size])
    return torch.where(whole, torch.zeros_like(rf_start), rf_start)


def _window_size(scan: Scan) -> tuple[int, int]:
    """The smallest stride-multiple window that holds any RF whatever its alignment (or the image, if smaller)."""
    out = []
    for j, n in zip(scan.rf_stride, scan.image_size):
        s = -(-(scan.rf_size + j - 1) // j) * j
        out.append(n if s >= n or n % j else s)
    return out[0], out[1]


def _window_origin(rf_start: torch.Tensor, scan: Scan, win: tuple[int, int]) -> torch.Tensor:
    """Per pick (top, left) of its window: a stride multiple at or before the RF's first in-image pixel, moved back
    so the window lies inside the image (then it is flush with the border the RF crosses)."""
    j = torch.tensor(scan.rf_stride)
    lim = torch.tensor([scan.image_size[0] - win[0], scan.image_size[1] - win[1]])
    return torch.minimum(rf_start.clamp_min(0) // j * j, lim)


def _filter_rows(scan: Scan, filters: Iterable[int] | None) -> list[int]:
    if filters is None:
        return list(range(scan.num_filters))
    rows = [int(f) for f in filters]
    bad = [f for f in rows if not 0 <= f < scan.num_filters]
    if bad or not rows:
        raise AllconvError(f"filter {bad[0] if bad else '(none)'} out of range for {scan.layer} with "
                           f"{scan.num_filters} filters; use 0-{scan.num_filters - 1}")
    return rows


# --- figure --------------------------------------------------------------------------------------------------------

def figure(scan_or_npz: Scan | str | Path, methods: Sequence[str] | None = None,
           filters: Sequence[int] | None = None, *, scale: int = 3, percentile: float = 99.5,
           names: Sequence[str] | None = None, captions: Sequence[str] | None = None,
           title: str | None = None) -> Image.Image:
    """The paper's Figure 2 from an attached (or saved) scan: a "patches" panel, then one panel per method (default:
    all attached), each one row per filter and ``top_k`` columns, tiles upscaled ``scale`` x (nearest; more for tiles
    under ``layout.MIN_TILE`` px), each signal normalized alone (``render.to_image``).

    ``names``: one per channel of the layer, added to the row labels (the class layer's channels are classes).
    ``captions``: one per scanned image (e.g. its true class), written above each patch. ``title``: the line on top
    (default: model, layer and data, from the scan).
    """
    scan = scan_or_npz if isinstance(scan_or_npz, Scan) else load_scan(scan_or_npz)
    wanted, rows = _figure_rows(scan, methods, filters)
    methods = list(scan.recons) if methods is None else [check_method(m) for m in methods]
    tiles = [torch.from_numpy(scan.patches[rows]).flatten(0, 1).float().div(255)]
    tiles += [render.to_image(torch.from_numpy(scan.recons[m][rows]).flatten(0, 1), percentile=percentile)
              for m in methods]
    labels: list[list[str] | None] = [None] * len(tiles)
    if captions is not None:  # a caption band over every panel's tiles keeps the rows aligned
        _check_count(captions, scan.num_images, "captions", "scanned image")
        labels = [[""] * len(tiles[0]) for _ in tiles]
        labels[0] = [str(captions[i]) for i in scan.image_index[wanted].ravel()]
    up = tile_scale(max(_tile(scan)), scale)
    titles = [TITLES["patches"] + (" (each image's label above it)" if captions is not None else "")]
    grids = [(name, render.grid(t, nrow=scan.top_k, pad=1, labels=lab, scale=up))
             for name, t, lab in zip(titles + [TITLES[m] for m in methods], tiles, labels)]
    if names is not None:
        _check_count(names, scan.num_filters, "names", "filter")
    row_labels = [f"{scan.layer} #{f}" + (f" {names[f]}" if names is not None else "") for f in wanted]
    return compose(grids, row_labels, default_title(scan) if title is None else title)


def default_title(scan: Scan) -> str:
    """``all-cnn-c, conv6: each filter's top 10 patches in 10000 cifar10 test images``."""
    data = f"{scan.data} {scan.split}" if scan.data else scan.split
    return f"{scan.model}, {scan.layer}: each filter's top {scan.top_k} patches in {scan.num_images} {data} images"


def _figure_rows(scan: Scan, methods: Sequence[str] | None, filters: Sequence[int] | None) -> tuple[list[int],
                                                                                                      list[int]]:
    """The filters to draw and their rows in the attached tiles; what the scan lacks -> one-line AllconvError."""
    if scan.patches is None or scan.filters is None:
        raise AllconvError("this scan has no tiles yet; compute them with figure2(...) or attach(scan, images, "
                           "reconstructions(...))")
    have = [int(f) for f in scan.filters]
    wanted = have if filters is None else [int(f) for f in filters]
    missing = [m for m in (methods or []) if check_method(m) not in scan.recons]
    absent = [f for f in wanted if f not in have]
    if missing or absent or not wanted:
        asked = ", ".join(missing) if missing else f"filters {_ranges(absent)}"
        raise AllconvError(f"the scan holds methods {', '.join(scan.recons) or '(none)'} for filters "
                           f"{_ranges(have)}; asked for {asked}: re-run figure2 with them")
    return wanted, [have.index(f) for f in wanted]


def _check_count(items: Sequence[str], n: int, what: str, per: str) -> None:
    if len(items) != n:
        raise AllconvError(f"{len(items)} {what} for {n} {per}s; give one per {per}")


def class_layer(model: nn.Module, num_classes: int | None = None) -> str | None:
    """The layer whose channels are the class scores: the last top-level child holding a conv when only global
    pooling, flatten or dropout follow it (so it feeds the global average) and, given ``num_classes``, it has that
    many channels (conv9 of All-CNN-C); else None (e.g. a net ending in a linear layer)."""
    children = list(model.named_children())
    convs = [i for i, (_, m) in enumerate(children) if any(isinstance(c, nn.Conv2d) for c in m.modules())]
    if not convs:
        return None
    tail = [m for _, m in children[convs[-1] + 1:]]
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    if not any(isinstance(m, pools) for m in tail) or not all(isinstance(m, pools + _PASS) for m in tail):
        return None
    name, block = children[convs[-1]]
    conv = [c for c in block.modules() if isinstance(c, nn.Conv2d)][-1]
    return name if num_classes is None or conv.out_channels == num_classes else None


_PASS = (nn.Flatten, nn.Dropout, nn.Identity)


def _ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    vals = sorted(set(int(v) for v in values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out) or "(none)"


def figure2(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, *, layer: str,
            methods: Sequence[str] = METHODS, filters: Sequence[int] | None = None, top_k: int = 9,
            batch_size: int = 500, device: str | torch.device | None = None, progress: bool = True,
            split: str = "test", data: str = "", scale: int = 3, classes: Sequence[str] | None = None,
            labels: Sequence[int] | torch.Tensor | None = None) -> tuple[Scan, Image.Image]:
    """Scan, reconstruct, render: ``(scan with tiles attached, figure)`` for ``layer``'s ``filters`` (default all);
    ``classes``/``labels`` as in ``render_scan``."""
    s = scan(model, images, preprocess, layer=layer, top_k=top_k, batch_size=batch_size, device=device,
             progress=progress, split=split, data=data)
    return s, render_scan(model, images, preprocess, s, methods=methods, filters=filters, device=device, scale=scale,
                          classes=classes, labels=labels)


def render_scan(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, s: Scan, *,
                methods: Sequence[str] = METHODS, filters: Sequence[int] | None = None,
                device: str | torch.device | None = None, scale: int = 3, classes: Sequence[str] | None = None,
                labels: Sequence[int] | torch.Tensor | None = None, title: str | None = None) -> Image.Image:
    """Reconstruct and attach the tiles of a finished scan, then draw its figure (stage times in ``s.seconds``).

    ``classes``: the model's class names; on its class layer (``class_layer``) rows are then named by class, and,
    given ``labels`` (each scanned image's class index), each patch is captioned with its image's class.
    """
    rows = _filter_rows(s, filters)
    recons = reconstructions(model, images, preprocess, s, methods=methods, filters=rows, device=device)
    attach(s, images, recons, rows)
    t0 = time.perf_counter()
    names = captions = None
    if classes is not None and class_layer(model, len(classes)) == s.layer:
        names = list(classes)
        captions = None if labels is None else _class_names(labels, names)
    img = figure(s, list(recons), rows, scale=scale, names=names, captions=captions, title=title)
    s.seconds["render"] = round(time.perf_counter() - t0, 3)
    return img


def _class_names(labels: Sequence[int] | torch.Tensor, classes: Sequence[str]) -> list[str]:
    """Class indices as names; one outside 0..C-1 -> one-line AllconvError."""
    idx = [int(i) for i in labels]
    bad = [i for i in idx if not 0 <= i < len(classes)]
    if bad:
        raise AllconvError(f"label {bad[0]} is not a class index 0..{len(classes) - 1}; pass the scanned images' "
                           "labels with the model's class names")
    return [classes[i] for i in idx]
