"""Figure 2 of the paper: for each filter of a layer, its top-k image patches and their reconstructions.

``scan`` streams a dataset split through the net once (batched, on the model's device, with a progress bar; no
feature maps kept) and keeps, per filter, the k images with the strongest response: each image's max over positions,
then a running top-k across images, so one patch per image per filter. ``reconstructions`` computes each pick's
input-space signal with ``vis.reconstruct_at`` (batched over all picks, per method) and crops it to the pick's
receptive field (RF). ``figure`` renders the paper's layout: one panel per kind ("patches", "guided backprop", ...),
one row per filter, k columns. ``save_scan``/``load_scan`` keep it all in one ``.npz`` (the app reuses scans).

Speed: a unit depends only on the pixels of its RF, so each pick is reconstructed on a window of its (preprocessed)
image that holds its RF, with the window's origin a multiple of the layer's total stride (so every stride/pool samples
the same positions as on the full image) and flush with the image border wherever the RF crosses it (so padding is
read exactly where the full image reads it) -- exact, and for ``conv6`` of All-CNN-C a 24x24 window instead of 32x32.
Tests check it equals ``vis.reconstruct_at`` on the full image at every position.

Border picks: the part of an RF outside the image is gray in patches and zero in signals, so all tiles have the full
RF size and align.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

from . import render
from .maps import model_scope, resolve_layer
from .modes import METHODS, check_method
from .receptive import receptive_field
from .reconstruct import reconstruct_at

FORMAT = "allconv-figure2/1"
TITLES = {"patches": "patches", "guided": "guided backprop", "deconvnet": "deconvnet", "backprop": "backprop"}
PATCH_FILL = 128  # gray, for the part of a border patch outside the image
CHUNK = 2048  # picks whose whole images are preprocessed at once when cutting windows


@dataclass
class Scan:
    """The top-k picks of every filter of ``layer`` over a split, plus (optionally) their tiles.

    ``values`` (F, k) activations, ``image_index`` (F, k) into the scanned images, ``positions`` (F, k, 2) (h, w) in
    the layer's map, ``boxes`` (F, k, 4) the RF (top, left, bottom, right) clipped to the image, bottom/right
    exclusive. The unclipped RF of map unit (h, w) starts at ``rf_offset + (h, w) * rf_stride`` and is ``rf_size``
    square. ``patches`` (uint8) and ``recons`` (method -> float32), each (len(filters), k, 3, S, S) with S the RF size,
    hold the tiles of rows ``filters`` once computed. ``seconds``: time per stage.
    """

    layer: str
    model: str
    top_k: int
    values: np.ndarray
    image_index: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    split: str = "test"
    num_images: int = 0
    rf_size: int = 0
    rf_offset: tuple[int, int] = (0, 0)
    rf_stride: tuple[int, int] = (1, 1)
    image_size: tuple[int, int] = (32, 32)
    filters: np.ndarray | None = None
    patches: np.ndarray | None = None
    recons: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_filters(self) -> int:
        return int(self.values.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write everything to one ``.npz`` (plain arrays + a JSON header; loads with ``allow_pickle=False``)."""
        return save_scan(self, path)


# --- scan ----------------------------------------------------------------------------------------------------------

def scan(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, *, layer: str, top_k: int = 9,
         batch_size: int = 500, device: str | torch.device | None = None, progress: bool = True,
         split: str = "test") -> Scan:
    """Stream uint8 NCHW ``images`` through ``model`` and keep each filter of ``layer``'s top-k distinct images."""
    return scan_layers(model, images, preprocess, layers=[layer], top_k=top_k, batch_size=batch_size, device=device,
                       progress=progress, split=split)[layer]


def scan_layers(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, *, layers: Sequence[str],
                top_k: int = 9, batch_size: int = 500, device: str | torch.device | None = None,
                progress: bool = True, split: str = "test") -> dict[str, Scan]:
    """``scan`` for several layers sharing one forward per batch (it stops at the deepest of them)."""
    _check_uint8(images)
    if top_k < 1 or batch_size < 1:
        raise AllconvError(f"top_k and batch_size must be >= 1, got top_k={top_k}, batch_size={batch_size}")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise AllconvError("no layer given; name one, e.g. conv6")
    for name in layers:
        resolve_layer(model, name)
    dev = _device(model, device)
    pre = preprocess.to(dev)
    k = min(top_k, len(images))
    best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    t0 = time.perf_counter()
    with model_scope(model), torch.inference_mode():
        for start in _progress(range(0, len(images), batch_size), progress, "scan " + ",".join(layers)):
            x = pre(images[start:start + batch_size].to(dev, non_blocking=True))
            for name, fmap in _forward_many(model, x, layers).items():
                best[name] = _merge_topk(best.get(name), fmap, start, k, name)
    took = time.perf_counter() - t0
    return {name: _make_scan(model, name, best[name], k, images, split, took) for name in layers}


def _merge_topk(run: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, fmap: torch.Tensor, start: int,
                k: int, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold a batch's per-image maxima into the running (values, image index, flat position), each (F, k)."""
    if fmap.ndim != 4:
        raise AllconvError(f"Figure 2 needs a layer with (N, C, H, W) maps, but {layer!r} gives shape "
                           f"{tuple(fmap.shape)}; pick a conv layer such as conv6")
    vals, pos = fmap.flatten(2).float().max(dim=2)  # (B, F): each image's strongest response per filter
    vals, pos = vals.T, pos.T
    idx = torch.arange(start, start + vals.shape[1], device=vals.device).expand_as(vals)
    if run is not None:  # running picks first: a stable sort keeps the earlier image on ties, like a brute-force sort
        vals, idx, pos = (torch.cat([a, b], dim=1) for a, b in zip(run, (vals, idx, pos)))
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, order), idx.gather(1, order), pos.gather(1, order)


def _make_scan(model: nn.Module, layer: str, best: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: int,
               images: torch.Tensor, split: str, seconds: float) -> Scan:
    """Turn the running top-k into a Scan: map positions, RF geometry and clipped boxes."""
    vals, idx, flat = (t.cpu() for t in best)
    size = (int(images.shape[2]), int(images.shape[3]))
    rf = receptive_field(model, layer, input_size=size)
    map_w = _map_size(model, layer, size)[1]
    positions = torch.stack([flat // map_w, flat % map_w], dim=-1).numpy().astype(np.int64)
    start = np.array(rf.start_hw) + positions * np.array(rf.stride_hw)
    boxes = np.concatenate([np.maximum(start, 0), np.minimum(start + np.array(rf.size_hw), size)], axis=-1)
    return Scan(layer=layer, model=str(getattr(model, "name", type(model).__name__)), top_k=k,
                values=vals.numpy().astype(np.float32), image_index=idx.numpy().astype(np.int64), positions=positions,
                boxes=boxes.astype(np.int64), split=split, num_images=len(images), rf_size=int(rf.size),
                rf_offset=(int(rf.start_hw[0]), int(rf.start_hw[1])),
                rf_stride=(int(rf.stride_hw[0]), int(rf.stride_hw[1])), image_size=size,
                seconds={"scan": round(seconds, 3)})


def _forward_many(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (first call of each) for ``x``; the forward stops once all are seen."""
    out: dict[str, torch.Tensor] = {}

    def hook_for(name: str):  # noqa: ANN202
        def hook(_m: nn.Module, _i: object, output: torch.Tensor) -> None:
            out.setdefault(name, output)
            if len(out) == len(layers):
                raise _Done
        return hook

    handles = [resolve_layer(model, n).register_forward_hook(hook_for(n)) for n in layers]
    try:
        model(x)
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in out]
    if missing:
        raise AllconvError(f"layer {missing[0]!r} is never run by the model's forward; pick another layer")
    return out


class _Done(BaseException):
    """Ends a forward once every requested layer has been captured."""


# --- tiles ---------------------------------------------------------------------------------------------------------

def reconstructions(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, scan: Scan, *,
                    methods: Sequence[str] = METHODS, filters: Sequence[int] | None = None, batch_size: int = 256,
                    device: str | torch.device | None = None, crop: bool = True) -> dict[str, torch.Tensor]:
    """Each pick's signal per method, cut to its RF (zero outside the image): method -> (F, k, 3, S, S), CPU float32.

    ``images`` are the uint8 images the scan indexed. ``crop`` (default) runs each pick on the smallest stride-aligned
    window holding its RF instead of the whole image: the same numbers, less work.
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
    out: dict[str, torch.Tensor] = {}
    for m in methods:
        t0 = time.perf_counter()
        sig = reconstruct_at(model, x, method=m, layer=scan.layer, channels=picks["channel"], positions=pos,
                             batch_size=batch_size).float().cpu()
        tiles = _crop(sig, picks["rf_start"] - origin, _tile(scan), 0.0)
        out[m] = tiles.view(len(rows), scan.top_k, *tiles.shape[1:])
        scan.seconds[m] = round(time.perf_counter() - t0, 3)
    return out


def patches(images: torch.Tensor, scan: Scan, filters: Sequence[int] | None = None) -> torch.Tensor:
    """The image patch under each pick's RF as uint8 (F, k, 3, S, S); outside the image: gray."""
    _check_uint8(images)
    rows = _filter_rows(scan, filters)
    picks = _picks(scan, rows)
    tiles = _crop(images[picks["image"]].cpu(), picks["rf_start"], _tile(scan), PATCH_FILL)
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
    return {"image": torch.from_numpy(scan.image_index[rows].reshape(-1)),
            "channel": torch.tensor(rows, dtype=torch.long).repeat_interleave(k), "positions": pos,
            "rf_start": torch.tensor(scan.rf_offset) + pos * torch.tensor(scan.rf_stride)}


def _windows(images: torch.Tensor, index: torch.Tensor, origin: torch.Tensor, win: tuple[int, int],
             pre: Preprocess, dev: torch.device) -> torch.Tensor:
    """Preprocess each pick's whole image (ZCA is global), then cut its window: (P, 3, wh, ww) on ``dev``."""
    parts = []
    for s in range(0, len(index), CHUNK):
        uniq, inv = torch.unique(index[s:s + CHUNK], return_inverse=True)
        x = pre(images[uniq].to(dev))[inv.to(dev)]
        parts.append(_crop(x, origin[s:s + CHUNK].to(dev), win, 0.0))
    return torch.cat(parts)


def _crop(src: torch.Tensor, corner: torch.Tensor, size: Sequence[int], fill: float) -> torch.Tensor:
    """Row i of ``src`` (P, C, H, W) cut at ``corner[i]`` = (top, left) to ``size``; outside ``src``: ``fill``."""
    h, w = int(size[0]), int(size[1])
    pad = max(h, w)
    padded = F.pad(src, (pad, pad, pad, pad), value=fill)
    dev = src.device
    corner = corner.to(dev) + pad
    rows = (corner[:, 0, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (corner[:, 1, None] + torch.arange(w, device=dev))[:, None, None, :]
    n = torch.arange(len(src), device=dev)[:, None, None, None]
    c = torch.arange(src.shape[1], device=dev)[None, :, None, None]
    return padded[n, c, rows, cols]


def _tile(scan: Scan) -> tuple[int, int]:
    return scan.rf_size, scan.rf_size


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


# --- save / load ---------------------------------------------------------------------------------------------------

_ARRAYS = ("values", "image_index", "positions", "boxes")


def save_scan(scan: Scan, path: str | Path) -> Path:
    """Write ``scan`` atomically as ``.npz``: its arrays, ``patches``/``recon_<method>`` once attached, a header."""
    path = Path(path)
    header = {"format": FORMAT, "layer": scan.layer, "model": scan.model, "top_k": scan.top_k, "split": scan.split,
              "num_images": scan.num_images, "rf_size": scan.rf_size, "rf_offset": list(scan.rf_offset),
              "rf_stride": list(scan.rf_stride), "image_size": list(scan.image_size),
              "methods": list(scan.recons), "seconds": scan.seconds}
    arrays = {k: getattr(scan, k) for k in _ARRAYS}
    if scan.filters is not None:
        arrays["filters"] = scan.filters
    if scan.patches is not None:
        arrays["patches"] = scan.patches
    arrays.update({f"recon_{m}": r for m, r in scan.recons.items()})

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:  # readers (the app, another session) never see half a file; the umask sets the mode, as for any file
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to other suffixes
            np.savez(f, header=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_scan(path: str | Path) -> Scan:
    """Read a scan written by ``save_scan``; anything else (missing, corrupt, foreign .npz) -> AllconvError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError(f"no {FORMAT} header")
            data = {k: z[k] for k in z.files}
        scan = Scan(layer=header["layer"], model=header["model"], top_k=int(header["top_k"]),
                    **{k: data[k] for k in _ARRAYS}, split=header["split"], num_images=int(header["num_images"]),
                    rf_size=int(header["rf_size"]), rf_offset=_pair(header["rf_offset"]),
                    rf_stride=_pair(header["rf_stride"]), image_size=_pair(header["image_size"]),
                    filters=data.get("filters"), patches=data.get("patches"),
                    recons={m: data[f"recon_{m}"] for m in header["methods"]}, seconds=header.get("seconds", {}))
    except FileNotFoundError:
        raise AllconvError(f"scan file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        why = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise AllconvError(f"{path} is not a readable Figure 2 scan ({why}); re-create it with allconv-visualize") \
            from None
    _check_shapes(scan, path)
    return scan


def _pair(v: Sequence[int]) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def _check_shapes(scan: Scan, path: Path) -> None:
    f, k = scan.values.shape if scan.values.ndim == 2 else (-1, -1)
    ok = (scan.image_index.shape == (f, k) and scan.positions.shape == (f, k, 2) and scan.boxes.shape == (f, k, 4)
          and k == scan.top_k)
    rows = None if scan.filters is None else len(scan.filters)
    tiles = ([scan.patches] if scan.patches is not None else []) + list(scan.recons.values())
    ok = ok and all(t.ndim == 5 and t.shape[:2] == (rows, k) and t.shape[3:] == _tile(scan) for t in tiles)
    if not ok:
        raise AllconvError(f"{path}: Figure 2 arrays have inconsistent shapes; the file is damaged, re-create it "
                           "with allconv-visualize")


# --- figure --------------------------------------------------------------------------------------------------------

LABEL_W, TITLE_H, GAP = 64, 16, 8  # px: row-label margin, panel-title band, gap between panels


def figure(scan_or_npz: Scan | str | Path, methods: Sequence[str] | None = None,
           filters: Sequence[int] | None = None, *, scale: int = 3, percentile: float = 99.5) -> Image.Image:
    """The paper's Figure 2 from an attached (or saved) scan: a "patches" panel, then one panel per method (default:
    all attached), each one row per filter and ``top_k`` columns, tiles upscaled ``scale`` x (nearest), each signal
    normalized alone (``render.to_image``)."""
    scan = scan_or_npz if isinstance(scan_or_npz, Scan) else load_scan(scan_or_npz)
    if scan.patches is None or scan.filters is None:
        raise AllconvError("this scan has no tiles yet; compute them with figure2(...) or attach(scan, images, "
                           "reconstructions(...))")
    methods = list(scan.recons) if methods is None else [check_method(m) for m in methods]
    have = [int(f) for f in scan.filters]
    wanted = have if filters is None else [int(f) for f in filters]
    missing = [m for m in methods if m not in scan.recons]
    absent = [f for f in wanted if f not in have]
    if missing or absent or not wanted:
        asked = ", ".join(missing) if missing else f"filters {_ranges(absent)}"
        raise AllconvError(f"the scan holds methods {', '.join(scan.recons) or '(none)'} for filters "
                           f"{_ranges(have)}; asked for {asked}: re-run figure2 with them")
    rows = [have.index(f) for f in wanted]
    panels = [(TITLES["patches"], torch.from_numpy(scan.patches[rows]).flatten(0, 1).float().div(255))]
    for m in methods:
        sig = torch.from_numpy(scan.recons[m][rows]).flatten(0, 1)
        panels.append((TITLES[m], render.to_image(sig, percentile=percentile)))
    grids = [(title, render.grid(tiles, nrow=scan.top_k, pad=1, scale=scale)) for title, tiles in panels]
    return compose(grids, [f"{scan.layer} #{f}" for f in wanted])


def compose(grids: Sequence[tuple[str, Image.Image]], row_labels: Sequence[str]) -> Image.Image:
    """Panels side by side under their titles (each panel at least as wide as its title), ``row_labels`` in a left
    margin, one per row of the tallest panel."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(g.width, int(draw.textlength(title)) + 4) for title, g in grids]
    height = TITLE_H + max(g.height for _, g in grids)
    canvas = Image.new("RGB", (LABEL_W + sum(widths) + GAP * (len(grids) - 1), height), "white")
    draw = ImageDraw.Draw(canvas)
    x = LABEL_W
    for (title, g), w in zip(grids, widths):
        canvas.paste(g.convert("RGB"), (x, TITLE_H))
        draw.text((x + 2, 2), title, fill="black")
        x += w + GAP
    row_h = (height - TITLE_H) / max(len(row_labels), 1)
    for i, label in enumerate(row_labels):
        draw.text((2, TITLE_H + int(i * row_h + row_h / 2) - 5), label, fill="black")
    return canvas


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
            split: str = "test", scale: int = 3) -> tuple[Scan, Image.Image]:
    """Scan, reconstruct, render: ``(scan with tiles attached, figure)`` for ``layer``'s ``filters`` (default all)."""
    s = scan(model, images, preprocess, layer=layer, top_k=top_k, batch_size=batch_size, device=device,
             progress=progress, split=split)
    return s, render_scan(model, images, preprocess, s, methods=methods, filters=filters, device=device, scale=scale)


def render_scan(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, s: Scan, *,
                methods: Sequence[str] = METHODS, filters: Sequence[int] | None = None,
                device: str | torch.device | None = None, scale: int = 3) -> Image.Image:
    """Reconstruct and attach the tiles of a finished scan, then draw its figure (stage times in ``s.seconds``)."""
    rows = _filter_rows(s, filters)
    recons = reconstructions(model, images, preprocess, s, methods=methods, filters=rows, device=device)
    attach(s, images, recons, rows)
    t0 = time.perf_counter()
    img = figure(s, list(recons), rows, scale=scale)
    s.seconds["render"] = round(time.perf_counter() - t0, 3)
    return img


# --- helpers -------------------------------------------------------------------------------------------------------

def _check_uint8(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.dtype != torch.uint8 or len(images) == 0:
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise AllconvError(f"Figure 2 needs a non-empty uint8 (N, 3, H, W) image batch (raw, not preprocessed), "
                           f"got {got}")


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move the model to ``device`` (default: where it already is) and return that device."""
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    dev = torch.device(device)
    model.to(dev)
    return dev


def _map_size(model: nn.Module, layer: str, size: tuple[int, int]) -> tuple[int, int]:
    p = next(model.parameters())
    x = torch.zeros(1, 3, *size, device=p.device, dtype=p.dtype)
    with model_scope(model), torch.inference_mode():
        fmap = _forward_many(model, x, [layer])[layer]
    return int(fmap.shape[2]), int(fmap.shape[3])


def _progress(it: range, show: bool, desc: str) -> Iterable[int]:
    if not show:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="batch", leave=False)
