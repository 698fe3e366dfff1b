"""One picture as a net's input: any file, bytes, PIL image or array, as uint8 RGB ``3 x size x size``.

For the square 32x32 nets a picture is center-cropped to a square and then resized (never squashed); transparency
is composited onto mid-grey (not black); 16-bit levels are scaled to 8 bits (not clipped to white); the EXIF
orientation is applied; grayscale, palette and CMYK become RGB. ``load_image_described`` also says, in one line, what
was done, e.g. ``"200x150 RGBA: center-cropped to 150x150, transparency composited on grey, resized to 32x32"``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AllconvError

BACKGROUND = (128, 128, 128)  # neutral mid-grey under transparent pixels
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
GRAYSCALE = ("1", "L", "LA", "La", "I", "F") + SIXTEEN_BIT


def load_image(src: Any, size: int | None = 32) -> torch.Tensor:
    """Any image (path, bytes, file object, PIL image or HxWxC array) as uint8 RGB ``3 x size x size``
    (``size=None``: keep its size, no crop)."""
    return load_image_described(src, size)[0]


def load_image_described(src: Any, size: int | None = 32) -> tuple[torch.Tensor, str]:
    """``load_image`` plus a one-line description of the source and of each step applied to it."""
    img = _open(src)
    steps: list[str] = []
    source = f"{img.width}x{img.height} {img.mode}"
    img = _upright(img, steps)
    img = _square(img, size, steps)
    img = _to_rgb(img, steps)
    img = _resize(img, size, steps)
    tensor = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return tensor, f"{source}: {', '.join(steps) or 'used as is'}"


def _open(src: Any) -> Image.Image:
    """Decode ``src`` fully; anything unreadable -> one-line AllconvError."""
    try:
        if isinstance(src, Image.Image):
            img = src
        elif isinstance(src, np.ndarray):
            img = Image.fromarray(src)
        elif isinstance(src, (bytes, bytearray)):
            img = Image.open(io.BytesIO(src))
        else:
            img = Image.open(src)
        img.load()
        return img
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, TypeError,
            AttributeError) as e:  # AttributeError: not a file object (no .read)
        label = src if isinstance(src, (str, Path)) else type(src).__name__
        why = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-f]+>", "", (str(e).splitlines() or [""])[0])[:100]
        raise AllconvError(f"cannot read image {label}: {why or type(e).__name__}; give a PNG, JPEG, BMP or "
                           "WebP file") from None


def _upright(img: Image.Image, steps: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag (a phone photo stored sideways)."""
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return img
    steps.append(f"rotated upright (EXIF orientation {orientation})")
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image, steps: list[str]) -> Image.Image:
    """8-bit RGB: deep levels scaled down, transparency composited on grey, grayscale/palette/CMYK converted."""
    mode = img.mode
    if mode in SIXTEEN_BIT or mode == "I":
        img = _eight_bit(img.convert("I"), steps)
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:  # RGBA, LA, PA; P/L/RGB + tRNS
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            steps.append("transparency composited on grey")
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
        img = rgba
    if mode in GRAYSCALE:
        steps.append("grayscale to RGB")
    elif mode == "CMYK":
        steps.append("CMYK to RGB")
    return img.convert("RGB")


def _eight_bit(img: Image.Image, steps: list[str]) -> Image.Image:
    """A 32-bit integer ("I") image as "L": 0..65535 scaled by 1/257; a wider range stretched min..max."""
    lo, hi = img.getextrema()
    if 0 <= lo and hi <= 65535:
        steps.append("16-bit levels scaled to 8-bit")
        return img.point(lambda v: v / 257 + 0.5, "L")
    steps.append(f"levels {lo}..{hi} stretched to 0..255")
    return img.point(lambda v: (v - lo) * (255 / max(hi - lo, 1)) + 0.5, "L")


def _square(img: Image.Image, size: int | None, steps: list[str]) -> Image.Image:
    """The centered square of side min(width, height) (none for ``size=None``: the image keeps its shape)."""
    if size is not None and size < 1:
        raise AllconvError(f"image size must be >= 1, got {size}")
    w, h = img.size
    if size is None or w == h:
        return img
    side = min(w, h)
    steps.append(f"center-cropped to {side}x{side}")
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def _resize(img: Image.Image, size: int | None, steps: list[str]) -> Image.Image:
    """Resize to ``size`` x ``size`` (bicubic, antialiased when shrinking); ``None`` or already that size: as is."""
    if size is None or img.size == (size, size):
        return img
    steps.append(f"resized to {size}x{size}")
    return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
