"""Turning signals and maps into pictures: zero-centred display, colormaps, labelled grids, PIL conversion."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

from allconv.errors import AllconvError

LABEL_HEIGHT = 12  # px band above each tile for its label (PIL's default bitmap font is ~11 px)


def to_image(signal: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """A reconstruction (3, H, W) or (N, 3, H, W) as a displayable float image in [0, 1], zero at mid-grey.

    Per image: subtract the mean, divide by the ``percentile`` of |x| (so a few extreme pixels don't wash out the
    rest), clip to [-1, 1], map to [0, 1]. An all-constant signal becomes flat grey.
    """
    if not torch.is_tensor(signal) or signal.ndim not in (3, 4):
        raise AllconvError(f"to_image needs a (3, H, W) or (N, 3, H, W) tensor, got {getattr(signal, 'shape', signal)}")
    if not 0 < percentile <= 100:
        raise AllconvError(f"percentile must be in (0, 100], got {percentile}")
    x = signal.detach().float()
    batch = x if x.ndim == 4 else x[None]
    flat = batch.reshape(len(batch), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    scale = torch.quantile(flat.abs().cpu(), percentile / 100, dim=1, keepdim=True).to(flat.device)
    out = ((flat / scale.clamp_min(1e-12)).clamp(-1, 1) + 1) / 2
    out = out.reshape(batch.shape)
    return out if x.ndim == 4 else out[0]


def heatmap(map2d: torch.Tensor, cmap: str = "inferno") -> torch.Tensor:
    """A 2-D map (h, w) as an RGB float tensor (3, h, w) in [0, 1], min..max stretched over ``cmap``."""
    import matplotlib

    if not torch.is_tensor(map2d) or map2d.ndim != 2:
        raise AllconvError(f"heatmap needs a 2-D (h, w) tensor, got {getattr(map2d, 'shape', map2d)}")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise AllconvError(f"unknown colormap {cmap!r}; try inferno, viridis, magma, gray") from None
    m = map2d.detach().float().cpu()
    lo, hi = m.min(), m.max()
    m = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    rgb = colormap(m.numpy())[..., :3]
    return torch.from_numpy(rgb).float().permute(2, 0, 1)


def to_pil(img: torch.Tensor) -> Image.Image:
    """A (3, H, W) (or (1, H, W) / (H, W)) float image in [0, 1] as an RGB PIL image."""
    if not torch.is_tensor(img) or img.ndim not in (2, 3):
        raise AllconvError(f"to_pil needs a (3, H, W) tensor in [0, 1], got {getattr(img, 'shape', img)}")
    x = img.detach().float().cpu()
    x = x[None] if x.ndim == 2 else x
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] != 3:
        raise AllconvError(f"to_pil needs 1 or 3 channels, got {x.shape[0]}")
    arr = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode="RGB")


def grid(tiles: torch.Tensor, nrow: int = 8, pad: int = 1, labels: list[str] | None = None,
         scale: int = 1) -> Image.Image:
    """Compose (N, 3, h, w) tiles in [0, 1] into one PIL image, ``nrow`` tiles per row, white gaps of ``pad`` px.

    ``scale`` enlarges each tile (nearest neighbour, so pixels stay crisp); ``labels`` (one per tile) are drawn in a
    band above each tile with PIL's default font.
    """
    from torchvision.utils import make_grid

    if not torch.is_tensor(tiles) or tiles.ndim != 4 or tiles.shape[1] not in (1, 3) or len(tiles) == 0:
        raise AllconvError(f"grid needs a non-empty (N, 3, h, w) tensor, got {getattr(tiles, 'shape', tiles)}")
    if nrow < 1 or pad < 0 or scale < 1:
        raise AllconvError(f"grid needs nrow >= 1, pad >= 0, scale >= 1; got nrow={nrow}, pad={pad}, scale={scale}")
    if labels is not None and len(labels) != len(tiles):
        raise AllconvError(f"grid got {len(labels)} labels for {len(tiles)} tiles; pass one per tile or None")
    x = tiles.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    if labels is not None:
        x = torch.cat([torch.ones(len(x), x.shape[1], LABEL_HEIGHT, x.shape[3]), x], dim=2)
    image = to_pil(make_grid(x, nrow=nrow, padding=pad, pad_value=1.0))
    if labels is not None:
        _draw_labels(image, labels, nrow, pad, x.shape[2], x.shape[3])
    return image


def _draw_labels(image: Image.Image, labels: list[str], nrow: int, pad: int, h: int, w: int) -> None:
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, text in enumerate(labels):
        row, col = divmod(i, nrow)
        draw.text((col * (w + pad) + pad + 1, row * (h + pad) + pad), str(text), fill=(0, 0, 0), font=font)
