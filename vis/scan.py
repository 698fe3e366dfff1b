"""The scan behind Figure 2: stream a dataset split through the net once (batched, on the model's device, with a
progress bar; no feature maps kept) and keep, per filter of a layer, the k images with the strongest response: each
image's max over positions, then a running top-k across images, so one patch per image per filter. ``save_scan`` /
``load_scan`` keep a scan (and, once attached by ``vis.figure2``, its tiles) in one ``.npz``; the app reuses them.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from allconv.device import resolve_amp
from allconv.errors import AllconvError
from allconv.preprocess import Preprocess

from .maps import model_scope, resolve_layer
from .prefilter import exact_topk
from .receptive import receptive_field

FORMAT = "allconv-figure2/1"


@dataclass
class Scan:
    """The top-k picks of every filter of ``layer`` over a split, plus (optionally) their tiles.

    ``values`` (F, k) activations, ``image_index`` (F, k) into the scanned images, ``positions`` (F, k, 2) (h, w) in
    the layer's map, ``boxes`` (F, k, 4) the RF (top, left, bottom, right) clipped to the image, bottom/right
    exclusive. The unclipped RF of map unit (h, w) starts at ``rf_offset + (h, w) * rf_stride`` and is ``rf_size``
    square. ``patches`` (uint8) and ``recons`` (method -> float32), each (len(filters), k, 3, S, S) with S the RF size,
    hold the tiles of rows ``filters`` once computed. ``data``: the dataset's name (for titles); ``seconds``: time
    per stage.
    """

    layer: str
    model: str
    top_k: int
    values: np.ndarray
    image_index: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    split: str = "test"
    data: str = ""
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
         batch_size: int = 500, device: str | torch.device | None = None,
         progress: bool | Callable[[int, int], None] = True, split: str = "test", data: str = "",
         amp: str = "auto") -> Scan:
    """Stream uint8 NCHW ``images`` through ``model`` and keep each filter of ``layer``'s top-k distinct images
    (``split`` and ``data``, the dataset's name, are recorded for the figure's title; ``amp``: see ``scan_layers``)."""
    return scan_layers(model, images, preprocess, layers=[layer], top_k=top_k, batch_size=batch_size, device=device,
                       progress=progress, split=split, data=data, amp=amp)[layer]


def scan_layers(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, *, layers: Sequence[str],
                top_k: int = 9, batch_size: int = 500, device: str | torch.device | None = None,
                progress: bool | Callable[[int, int], None] = True, split: str = "test", data: str = "",
                amp: str = "auto") -> dict[str, Scan]:
    """``scan`` for several layers sharing one forward per batch (it stops at the deepest of them). ``amp``: "auto"
    scans in bf16 where it is native and rescores the candidates in fp32 (``vis.prefilter``: the same picks, values
    and positions as fp32), "on" always, "off" never. ``progress``: a tqdm bar, or ``progress(done, total)`` called
    after each batch of the pass over all images."""
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
    bar = lambda r: _progress(r, progress, "scan " + ",".join(layers))  # noqa: E731
    with model_scope(model), torch.inference_mode():
        if resolve_amp(amp, dev) and len(images):
            best = exact_topk(model, images, pre, layers, k, batch_size, dev, _forward_many, bar)
        else:
            for start in bar(range(0, len(images), batch_size)):
                x = pre(images[start:start + batch_size].to(dev, non_blocking=True))
                for name, fmap in _forward_many(model, x, layers).items():
                    best[name] = _merge_topk(best.get(name), fmap, start, k, name)
    took = time.perf_counter() - t0
    return {name: _make_scan(model, name, best[name], k, images, (split, data), took) for name in layers}


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
               images: torch.Tensor, source: tuple[str, str], seconds: float) -> Scan:
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
                boxes=boxes.astype(np.int64), split=source[0], data=source[1], num_images=len(images),
                rf_size=int(rf.size), rf_offset=(int(rf.start_hw[0]), int(rf.start_hw[1])),
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


# --- save / load ---------------------------------------------------------------------------------------------------

_ARRAYS = ("values", "image_index", "positions", "boxes")


def save_scan(scan: Scan, path: str | Path, compress: bool = False) -> Path:
    """Write ``scan`` atomically as ``.npz``: its arrays, ``patches``/``recon_<method>`` once attached, a header;
    ``compress``: deflated (about 6x smaller, for files that are committed or sent)."""
    path = Path(path)
    header = {"format": FORMAT, "layer": scan.layer, "model": scan.model, "top_k": scan.top_k, "split": scan.split,
              "data": scan.data, "num_images": scan.num_images, "rf_size": scan.rf_size,
              "rf_offset": list(scan.rf_offset), "rf_stride": list(scan.rf_stride), "image_size": list(scan.image_size),
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
            (np.savez_compressed if compress else np.savez)(f, header=np.array(json.dumps(header)), **arrays)
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
            arrays = {k: z[k] for k in z.files}
        scan = Scan(layer=header["layer"], model=header["model"], top_k=int(header["top_k"]),
                    **{k: arrays[k] for k in _ARRAYS}, split=header["split"], data=str(header.get("data", "")),
                    num_images=int(header["num_images"]),
                    rf_size=int(header["rf_size"]), rf_offset=_pair(header["rf_offset"]),
                    rf_stride=_pair(header["rf_stride"]), image_size=_pair(header["image_size"]),
                    filters=arrays.get("filters"), patches=arrays.get("patches"),
                    recons={m: arrays[f"recon_{m}"] for m in header["methods"]}, seconds=header.get("seconds", {}))
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
    ok = ok and all(t.ndim == 5 and t.shape[:2] == (rows, k) and t.shape[3:] == (scan.rf_size,) * 2
                  for t in tiles)
    if not ok:
        raise AllconvError(f"{path}: Figure 2 arrays have inconsistent shapes; the file is damaged, re-create it "
                           "with allconv-visualize")


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


def _progress(it: range, show: bool | Callable[[int, int], None], desc: str) -> Iterable[int]:
    """``it`` (batch starts) with a tqdm bar (``show`` True), or calling ``show(images done, total)`` after each."""
    if callable(show):
        return _reporting(it, show)
    if not show:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="batch", leave=False)


def _reporting(it: range, report: Callable[[int, int], None]) -> Iterator[int]:
    for start in it:
        yield start
        report(min(start + it.step, it.stop), it.stop)