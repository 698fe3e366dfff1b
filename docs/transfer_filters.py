"""Do conv6's filters change when a CIFAR-10 All-CNN-C is fine-tuned on CIFAR-100? (docs/transfer.md)

Both nets' Figure 2 scans of conv6 over the same CIFAR-100 test split (``allconv-visualize --data cifar100 --layer
conv6``'s .npz) are compared filter by filter (filter i of the fine-tuned net started as filter i of the CIFAR-10 net):
how many of its top-10 images it keeps, the cosine of its weights, and the correlation over all test images of each
image's strongest response; a net trained from scratch gives the chance level of that correlation. The two Figure 2
PNGs' patch and guided-backprop panels are put side by side.

    python docs/transfer_filters.py C10_SCAN_DIR C100_SCAN_DIR C10_NET C100_NET SCRATCH_NET OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vis
from allconv import checkpoint, data

BATCH = 500


def maxima(path: str, x: torch.Tensor) -> torch.Tensor:
    """(N, 192): each image's strongest conv6 response, per filter."""
    net, meta = checkpoint.load(path)
    return torch.cat([vis.activations(net, meta.preprocess(x[i:i + BATCH]), "conv6").amax((2, 3))
                      for i in range(0, len(x), BATCH)])


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per column."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0) + 1e-12)


def side_by_side(pngs: list[Path], out: Path, keep: float = 0.51) -> None:
    """The left ``keep`` of each figure (title, patches, guided backprop), next to each other."""
    imgs = [Image.open(p).convert("RGB") for p in pngs]
    crops = [im.crop((0, 0, int(im.width * keep), im.height)) for im in imgs]
    canvas = Image.new("RGB", (sum(c.width for c in crops) + 30, max(c.height for c in crops)), "white")
    canvas.paste(crops[0], (0, 0))
    canvas.paste(crops[1], (crops[0].width + 30, 0))
    canvas.save(out, optimize=True)


def main(c10_dir: str, c100_dir: str, c10: str, c100: str, scratch: str, out: str) -> None:
    a, b = (vis.load_scan(Path(d) / "figure2-conv6.npz") for d in (c10_dir, c100_dir))
    kept = np.array([len(set(a.image_index[f]) & set(b.image_index[f])) for f in range(a.num_filters)])
    w = [checkpoint.load(p)[0].conv6.conv.weight.detach().flatten(1).float() for p in (c10, c100)]
    cos = torch.nn.functional.cosine_similarity(w[0], w[1])
    x = data.load("cifar100").x_test
    ref = maxima(c10, x)
    print(f"conv6, {a.num_filters} filters, top-{a.top_k} of {a.num_images} CIFAR-100 test images")
    print("| compared with the CIFAR-10 net | top-10 images kept (median, mean) | filters keeping >= 5 | weight cosine "
          "(median) | correlation of image maxima (median) | filters with r > 0.5 |")
    print("|---|---:|---:|---:|---:|---:|")
    r = correlation(ref, maxima(c100, x))
    print(f"| fine-tuned, all layers | {np.median(kept):.0f}, {kept.mean():.2f} | {(kept >= 5).sum()} | "
          f"{cos.median():.3f} | {r.median():.3f} | {(r > 0.5).sum()} |")
    r = correlation(ref, maxima(scratch, x))
    print(f"| from scratch (chance: unrelated filters) | - | - | - | {r.median():.3f} | {(r > 0.5).sum()} |")
    side_by_side([Path(c10_dir) / "figure2-conv6.png", Path(c100_dir) / "figure2-conv6.png"], Path(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:7])
