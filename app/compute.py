"""What the views show, computed without Streamlit: predictions, reconstruction grids, one filter's close-up, weights.

Every function takes the model and a preprocessed input, returns plain data or a PIL image, and goes through ``vis``
(which holds the model's lock and leaves no hooks or backward modes behind), so a cached model can be shared by
concurrent sessions. The Streamlit layer (``app.cache``) memoizes these by checkpoint/image/layer/method.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from torch import nn

import vis
from allconv.errors import AllconvError
from allconv.models import layer_names
from allconv.preprocess import Preprocess
from vis import figure2, layout, render
from vis.sources import Source, layer_shapes
from vis.receptive import receptive_field
from vis.sanity import randomization_check

TILE_SCALE = 2  # grid tiles: 32x32 signals drawn at 64x64 ...
GRID_MAX_PX = 1100  # ... unless that makes the grid wider than this: then at 32x32 (192 filters: 22 columns)
LARGE = 64  # inputs wider than this (torchvision's 224) get paged grids of smaller tiles:
PAGE = 64  # filters per grid page (each is a full backward pass at 224x224) ...
TILE_MAX = 96  # ... each tile at most this many px
BIG = 160  # close-up images are drawn this many pixels wide


def png(img: Image.Image) -> bytes:
    """Lossless PNG bytes (fast settings): what the app sends to the browser."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def enlarge(img: Image.Image, width: int = BIG) -> Image.Image:
    """Nearest-neighbour upscaling, so a 32x32 image stays crisp (a larger one is shrunk smoothly)."""
    how = Image.Resampling.NEAREST if width >= img.width else Image.Resampling.LANCZOS
    return img.resize((width, max(1, round(img.height * width / img.width))), how)


def model_input(image: torch.Tensor, preprocess: Preprocess | None) -> torch.Tensor:
    """A uint8 (3, H, W) image as the (1, 3, H, W) float input the net was trained on."""
    if preprocess is None:
        raise AllconvError("this checkpoint has no preprocessing statistics; retrain it with allconv-train")
    return preprocess(image.unsqueeze(0))


def uint8_image(image: torch.Tensor, width: int = BIG) -> Image.Image:
    """A uint8 (3, H, W) tensor as an enlarged PIL image."""
    return enlarge(Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()), width)


def top5(model: nn.Module, x: torch.Tensor, classes: list[str]) -> list[tuple[str, float]]:
    """The five most probable classes (name, softmax probability) for a one-image batch."""
    probs = vis.activations(model, x, None)[0].float().softmax(0)
    p, i = probs.topk(min(5, len(probs)))
    name = lambda k: classes[k] if k < len(classes) else str(k)  # noqa: E731
    return [(name(int(k)), float(v)) for v, k in zip(p, i)]


def num_filters(model: nn.Module, layer: str, size: int = 32) -> int:
    """How many channels ``layer`` outputs (a zero image through the net up to the layer)."""
    return int(vis.activations(model, torch.zeros(1, 3, size, size), layer).shape[1])


def layers(net: Source) -> list[str]:
    """The layers a visitor picks from, in forward order: our nets' ``conv*``/``pool*``; a torchvision model's
    convs, blocks and pools (``allconv-visualize --list-layers``)."""
    if not net.torchvision:
        return layer_names(net.model)
    return [name for name, _ in layer_shapes(net.model, net.size, torch.device("cpu"))]


def grid_columns(n: int) -> int:
    """Columns for an n-tile grid: wider than tall, to fit a page."""
    return max(1, min(n, math.ceil(math.sqrt(n * 2.5))))


def grid_filters(n: int, channel: int, side: int) -> range:
    """The filters one grid shows: all ``n`` for our 32x32 nets; for large inputs the page of ``PAGE`` that holds
    ``channel`` (a ResNet's 512 filters at 224x224 would be 512 full backward passes)."""
    page = n if side <= LARGE else PAGE
    start = channel // page * page
    return range(start, min(n, start + page))


def reconstruction_grid(model: nn.Module, x: torch.Tensor, layer: str, method: str,
                        classes: Sequence[str] = (), filters: range | None = None) -> Image.Image:
    """The reconstructions of ``filters`` (default: every filter), each at its strongest position, in one labelled
    grid image; on the class layer (conv9, whose channels are the class scores) the tiles are named by class."""
    n = num_filters(model, layer, x.shape[-1])
    filters = filters if filters is not None else range(n)
    signals = vis.reconstruct(model, x, method=method, layer=layer, channel=list(filters))[0]
    tiles = torch.stack([render.to_image(s) for s in signals])
    if tiles.shape[-1] > TILE_MAX:  # area-averaged down, so a 224x224 tile still reads
        tiles = torch.nn.functional.interpolate(tiles, size=(TILE_MAX, TILE_MAX), mode="area")
    cols = grid_columns(len(filters))
    scale = TILE_SCALE if cols * (tiles.shape[-1] * TILE_SCALE + 1) <= GRID_MAX_PX else 1
    labels = tile_labels(model, layer, n, classes)
    return render.grid(tiles, cols, pad=1, labels=[labels[f] for f in filters], scale=scale)


def tile_labels(model: nn.Module, layer: str, n: int, classes: Sequence[str]) -> list[str]:
    """Filter numbers, or class names on the model's class layer."""
    if classes and len(classes) == n and figure2.class_layer(model, n) == layer:
        return list(classes)
    return [str(i) for i in range(n)]


@dataclass
class Detail:
    """One filter's close-up: its reconstructions by method, activation map, strongest unit and that unit's RF."""

    recons: dict[str, Image.Image]
    activation: Image.Image
    patch: Image.Image
    value: float
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    map_size: tuple[int, int]


def filter_detail(model: nn.Module, x: torch.Tensor, image: torch.Tensor, layer: str, channel: int) -> Detail:
    """The three methods side by side for ``channel`` of ``layer``, its activation map and its RF input patch. The
    reconstructions are cropped to the strongest unit's receptive field (nothing lies outside it) and enlarged like
    the patch, so the signal fills the close-up instead of a corner of the 32x32 frame."""
    fmap = vis.activations(model, x, layer)[0, channel]
    h, w = fmap.shape
    flat = int(fmap.argmax())
    pos = (flat // w, flat % w)
    top, left, bottom, right = (int(v) for v in receptive_field(model, layer, input_size=tuple(x.shape[-2:])).box(*pos))
    patch = image[:, top:bottom, left:right]
    signals = vis.reconstruct_methods_at(model, x, methods=vis.METHODS, layer=layer, channels=[channel],
                                         positions=torch.tensor([pos]))  # one forward serves the three
    recons = {m: render.to_pil(render.to_image(s[0, :, top:bottom, left:right])) for m, s in signals.items()}
    return Detail(recons={m: enlarge(r) for m, r in recons.items()},
                  activation=layout.activation_panel(fmap[None], (h, w), max(1, BIG // max(h, w))),
                  patch=uint8_image(patch),
                  value=float(fmap.max()), position=pos, box=(top, left, bottom, right), map_size=(h, w))


def weights_image(model: nn.Module, layer: str, channel: int) -> tuple[Image.Image, str]:
    """The chosen layer's weights: all RGB filters for a 3-channel input, else ``channel``'s kernels per input."""
    w = vis.filter_maps(model, layer).float()
    c_out, c_in, k, _ = w.shape
    if c_in == 3:
        tiles = torch.stack([render.to_image(f) for f in w])
        caption = f"all {c_out} filters of {layer} ({k}x{k} RGB), each normalized alone"
        return render.grid(tiles, grid_columns(c_out), pad=1, labels=[str(i) for i in range(c_out)],
                           scale=max(1, 48 // k)), caption
    if k == 1:
        caption = (f"{layer} is a 1x1 conv: its {c_out} x {c_in} weight matrix (rows: filters, columns: inputs; "
                   "the bar gives the colour scale)")
        return layout.activation_panel(w[None, :, :, 0, 0], (c_out, c_in), max(1, 400 // max(c_out, c_in))), caption
    kernels = w[channel]
    tiles = torch.stack([render.to_image(kr.unsqueeze(0).expand(3, k, k)) for kr in kernels])
    caption = f"filter {channel} of {layer}: its {c_in} {k}x{k} kernels, one per input channel"
    return render.grid(tiles, grid_columns(c_in), pad=1, labels=[str(i) for i in range(c_in)],
                       scale=max(1, 48 // k)), caption


@dataclass
class Sanity:
    """The randomization check, ready to draw: stage names, Spearman similarity per method, and the maps grid."""

    stages: list[str]
    similarity: dict[str, list[float]]
    maps: Image.Image


def predicted(model: nn.Module, x: torch.Tensor) -> int:
    """The top class of a one-image batch."""
    return int(vis.activations(model, x, None)[0].argmax())


def sanity(model: nn.Module, x: torch.Tensor, layer: str | None, channel: int) -> Sanity:
    """vis's cascading randomization for one image and unit (``layer=None``: class score ``channel``), its maps as
    one picture: a row per method, a column per stage, stage names on top."""
    r = randomization_check(model, x, layer=layer, channel=channel, methods=tuple(vis.METHODS))
    n = len(r.stages)
    tiles = torch.stack([render.to_image(r.maps[m][s, 0]) for m in vis.METHODS for s in range(n)])
    heads = ["to " + name.split("..")[-1] if ".." in name else name for name in r.stages]
    labels = heads + [""] * (len(tiles) - n)
    grid = render.grid(tiles, n, pad=1, labels=labels, scale=2)
    return Sanity(r.stages, {m: r.spearman[m] for m in vis.METHODS},
                  figure2.compose([("trained, then re-randomized from the top conv down", grid)], list(vis.METHODS)))
