"""Laying tiles out as one labelled picture: panels side by side under their titles, row labels in a left margin as
wide as the longest label, and a title line saying what is shown (model, layer, data). Small tiles are enlarged to
at least ``MIN_TILE`` px so a row is taller than its label. Also the two CLI figures that are not Figure 2: one
image's activation maps (each with its colour scale) and reconstructions, and a layer's filter weights.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from . import render

TITLES = {"patches": "patches", "guided": "guided backprop", "deconvnet": "deconvnet", "backprop": "backprop"}
TITLE_H = 16  # px: the band for the panel titles
HEAD_H = 20  # px: the band for the figure's title line, when it has one
GAP = 8  # px between panels
PAD = 4  # px around text
MIN_TILE = 24  # px: the smallest tile side (conv1's 3x3 receptive field would otherwise be 9 px, under a label)
BAR_W = 8  # px: a colour scale's width
CMAP = "inferno"

FONT = ImageFont.load_default()  # Pillow's own font (FreeType where available): no font file to ship
try:
    HEAD_FONT = ImageFont.load_default(size=13)  # the title line, a little larger (Pillow >= 10.1 with FreeType)
except (TypeError, ImportError, OSError):
    HEAD_FONT = FONT
_DRAW = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> int:
    """The width in px of ``text`` in the figures' font (or ``font``)."""
    return math.ceil(_DRAW.textlength(text, font=font or FONT))


def label_width(labels: Sequence[str]) -> int:
    """The left margin that holds the longest row label (0 without labels)."""
    return max((text_width(s) for s in labels), default=-2 * PAD) + 2 * PAD


def tile_scale(side: int, scale: int) -> int:
    """The upscaling for ``side``-px tiles: ``scale``, or more if that leaves them under ``MIN_TILE`` px."""
    return max(scale, -(-MIN_TILE // max(side, 1)))


def compose(grids: Sequence[tuple[str, Image.Image]], row_labels: Sequence[str],
            title: str | None = None) -> Image.Image:
    """Panels side by side under their titles (each at least as wide as its title), ``row_labels`` left of the rows
    of the tallest panel (one per row, vertically centred), ``title`` on a line above everything. Where each panel's
    grid landed is kept in ``info["panels"]`` (name, x, y, width, height in px), e.g. to make its tiles clickable."""
    margin = label_width(row_labels)
    widths = [max(g.width, text_width(name) + PAD) for name, g in grids]
    top = (HEAD_H if title else 0) + TITLE_H
    body = margin + sum(widths) + GAP * (len(grids) - 1)
    width = max(body, text_width(title, HEAD_FONT) + 2 * PAD if title else 0)
    height = top + max(g.height for _, g in grids)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, 3), title, fill="black", font=HEAD_FONT)
    x, canvas.info["panels"] = margin, []
    for (name, g), w in zip(grids, widths):
        canvas.paste(g.convert("RGB"), (x, top))
        draw.text((x + 2, top - TITLE_H + 2), name, fill="black", font=FONT)
        canvas.info["panels"].append({"name": name, "x": x, "y": top, "width": g.width, "height": g.height})
        x += w + GAP
    row_h = (height - top) / max(len(row_labels), 1)
    for i, label in enumerate(row_labels):
        _text_centred(draw, (PAD, top + i * row_h + row_h / 2), label)
    return canvas


def image_figure(raw: torch.Tensor, acts: torch.Tensor, sigs: dict[str, torch.Tensor], row_labels: Sequence[str],
                 scale: int, title: str | None = None) -> Image.Image:
    """One image, one row per filter: the image, the filter's activation map (upscaled to the image, with its colour
    scale), and one panel per method's reconstruction."""
    tiles = [("image", (raw[None].float() / 255).expand(len(acts), -1, -1, -1))]
    tiles += [(TITLES[m], render.to_image(s)) for m, s in sigs.items()]
    grids = [(name, render.grid(t, nrow=1, pad=1, scale=scale)) for name, t in tiles]
    grids.insert(1, (f"activation ({CMAP}, own scale)", activation_panel(acts, tuple(raw.shape[1:]), scale)))
    return compose(grids, row_labels, title)


def activation_panel(acts: torch.Tensor, size: tuple[int, int], scale: int) -> Image.Image:
    """Maps ``acts`` (F, h, w), upscaled to ``size`` (nearest), as heatmaps one per row, each stretched over its own
    min..max and followed by a colour bar labelled with those two values."""
    maps = torch.nn.functional.interpolate(acts[:, None].float(), size=size, mode="nearest")[:, 0]
    grid = render.grid(torch.stack([render.heatmap(m, CMAP) for m in maps]), nrow=1, pad=1, scale=scale)
    tile = size[0] * scale
    ticks = [(f"{float(a.max()):.3g}", f"{float(a.min()):.3g}") for a in acts]
    text_w = max(text_width(t) for pair in ticks for t in pair)
    canvas = Image.new("RGB", (grid.width + 2 + BAR_W + PAD + text_w, grid.height), "white")
    canvas.paste(grid, (0, 0))
    bar = render.to_pil(render.heatmap(torch.linspace(1, 0, tile)[:, None].expand(-1, BAR_W), CMAP))
    draw = ImageDraw.Draw(canvas)
    for i, (hi, lo) in enumerate(ticks):
        y = 1 + i * (tile + 1)
        canvas.paste(bar, (grid.width + 2, y))
        x = grid.width + 2 + BAR_W + 2
        draw.text((x, y), hi, fill="black", font=FONT)
        draw.text((x, y + tile - draw.textbbox((0, 0), lo, font=FONT)[3]), lo, fill="black", font=FONT)
    return canvas


def weights_panel(w: torch.Tensor, scale: int, max_inputs: int = 32) -> tuple[str, Image.Image]:
    """(F, C, k, k) weights as (title, image), one row per filter: RGB tiles when C is 3 (the first layer); a heatmap
    of the (F, C) matrix for 1x1 convs; else each filter's first ``max_inputs`` kernels in gray, normalized per
    filter (so kernels of one filter compare). Rows are at least ``MIN_TILE`` px tall."""
    f, c, k, _ = w.shape
    px = tile_scale(k, max(scale * 2, 1))
    if c == 3:
        return f"{k}x{k} RGB filters", render.grid(render.to_image(w), nrow=1, pad=1, scale=px)
    if k == 1:
        mat = render.to_pil(render.heatmap(w[:, :, 0, 0]))
        title = f"1x1 weights: one row per filter, {c} input channels ({CMAP}: low to high)"
        return title, mat.resize((c * max(scale * 2, 1), f * px), Image.Resampling.NEAREST)
    n = min(c, max_inputs)
    rows = render.to_image(w[:, :n].reshape(f, 1, n * k, k).expand(-1, 3, -1, -1))  # each filter normalized alone
    tiles = rows.reshape(f, 3, n, k, k).permute(0, 2, 1, 3, 4).reshape(f * n, 3, k, k)
    return f"{k}x{k} kernels on input channels 0-{n - 1} of {c}", render.grid(tiles, nrow=n, pad=1, scale=px)


def _text_centred(draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str) -> None:
    """``text`` starting at x, vertically centred on y."""
    left, top, _, bottom = draw.textbbox((0, 0), text, font=FONT)
    draw.text((at[0] - left, round(at[1] - (top + bottom) / 2)), text, fill="black", font=FONT)


