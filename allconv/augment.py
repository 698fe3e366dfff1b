"""Batched data augmentation on whatever device holds the batch: random translation (zero fill) and horizontal flip.

Everything is drawn from an explicit ``torch.Generator`` so that a run is a pure function of its seed (and resumes
bit-identically).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flip_translate(x: torch.Tensor, gen: torch.Generator, translate: int = 2, flip: bool = True) -> torch.Tensor:
    """Shift each image by up to ``translate`` pixels in x and y (zero fill) and mirror half of them."""
    n, _, h, w = x.shape
    dev = gen.device
    if flip:
        mask = torch.rand(n, generator=gen, device=dev).to(x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if translate > 0:
        t = translate
        shifts = torch.randint(0, 2 * t + 1, (2, n), generator=gen, device=dev).to(x.device)
        padded = F.pad(x, (t, t, t, t))
        rows = torch.arange(h, device=x.device)[None, :] + shifts[0][:, None]  # (n, h)
        cols = torch.arange(w, device=x.device)[None, :] + shifts[1][:, None]  # (n, w)
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)
