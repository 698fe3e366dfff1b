"""Input preprocessing fitted on the training split: per-channel standardization (default) or the paper's global
contrast normalization + ZCA whitening. Its statistics travel inside each checkpoint, so vis and the app can feed a
raw image to a net exactly as in training, and undo the transform for display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import AllconvError

KINDS = ("standardize", "zca")
GCN_SCALE = 55.0  # pylearn2's global_contrast_normalize(scale=55.), used by the paper's CIFAR-10 pipeline
ZCA_BIAS = 0.1  # pylearn2's ZCA(filter_bias=0.1)


@dataclass
class Preprocess:
    """Maps uint8 (or float 0..255) images -- NumPy or torch, NCHW or NHWC, a batch or one image -- to the float32
    NCHW network input; ``undo`` maps that back to [0, 1]."""

    kind: str
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def fit(cls, kind: str, x: torch.Tensor) -> "Preprocess":
        """Fit on training images ``x`` (uint8, N x C x H x W)."""
        if kind not in KINDS:
            raise AllconvError(f"unknown preprocessing {kind!r}; choose one of {', '.join(KINDS)}")
        if x.ndim != 4 or len(x) == 0:
            raise AllconvError(f"preprocessing needs a non-empty N x C x H x W image batch, got shape {tuple(x.shape)}")
        if kind == "standardize":
            mean, std = _channel_stats(x)
            return cls(kind, {"mean": mean.view(1, -1, 1, 1), "std": std.view(1, -1, 1, 1)})
        flat = _gcn(x.flatten(1).double())
        mean = flat.mean(0)
        centered = (flat - mean).float()
        cov = (centered.T @ centered).double() / len(flat)
        eigval, eigvec = torch.linalg.eigh(cov)
        return cls(kind, {"mean": mean.float(), "eigval": eigval.clamp_min(0).float(), "eigvec": eigvec.float()})

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The network input (float32, N x C x H x W, on the statistics' device) for images ``x``: uint8 (or float
        0..255), a NumPy array or a torch tensor, NCHW or NHWC, or one image (CHW or HWC, returned as a batch of
        one). The channel axis is the one of size C (3) at position 1 or -1; when both are 3 (N x 3 x H x 3), NCHW."""
        x = self._nchw(x)
        if self.kind == "standardize":
            return (x / 255.0 - self.stats["mean"]) / self.stats["std"]
        shape = x.shape
        v, e = self.stats["eigvec"], self.stats["eigval"]
        white = ((_gcn(x.flatten(1)) - self.stats["mean"]) @ v) / (e + ZCA_BIAS).sqrt() @ v.T
        return white.view(shape)

    def _nchw(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``x`` as a float N x C x H x W tensor on the statistics' device, or a one-line AllconvError."""
        c = int(self.stats["mean"].shape[1]) if self.kind == "standardize" else 3
        t = _tensor(x)
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or c not in (t.shape[1], t.shape[-1]):
            raise AllconvError(f"preprocess needs {c}-channel images as N x {c} x H x W or N x H x W x {c} (or one "
                               f"image, {c} x H x W or H x W x {c}), got shape {tuple(t.shape)}")
        if t.shape[1] != c:
            t = t.permute(0, 3, 1, 2)
        if self.kind == "zca" and t[0].numel() != self.stats["mean"].numel():
            side = int((self.stats["mean"].numel() // c) ** 0.5)
            raise AllconvError(f"ZCA preprocessing was fitted on {c} x {side} x {side} images, got "
                               f"{tuple(t.shape[1:])}; resize the images to {side}x{side}")
        return t.to(self.stats["mean"].device).float().contiguous()

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """Back to a displayable [0, 1] image (exact for standardization; for ZCA up to each image's contrast)."""
        if self.kind == "standardize":
            return (x * self.stats["std"] + self.stats["mean"]).clamp(0, 1)
        shape = x.shape
        v, e = self.stats["eigvec"], self.stats["eigval"]
        flat = (x.flatten(1).float() @ v) * (e + ZCA_BIAS).sqrt() @ v.T + self.stats["mean"]
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view(shape)

    def to(self, device: str | torch.device) -> "Preprocess":
        return Preprocess(self.kind, {k: v.to(device) for k, v in self.stats.items()})

    def config(self) -> dict[str, object]:
        return {"kind": self.kind}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().contiguous() for k, v in self.stats.items()}

    @classmethod
    def from_state(cls, config: dict[str, object], tensors: dict[str, torch.Tensor]) -> "Preprocess":
        kind = str(config.get("kind"))
        need = {"standardize": {"mean", "std"}, "zca": {"mean", "eigval", "eigvec"}}.get(kind)
        if need is None or not need <= set(tensors):
            raise AllconvError(f"checkpoint preprocessing {kind!r} is incomplete or unknown; the file is damaged "
                               "or from another version")
        return cls(kind, {k: tensors[k].float() for k in need})


def _tensor(x: Any) -> torch.Tensor:
    """A NumPy array (or anything array-like) as a torch tensor; a tensor as is."""
    if torch.is_tensor(x):
        return x
    try:
        return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise AllconvError(f"preprocess needs images as a NumPy array or torch tensor, got {type(x).__name__} "
                           f"({str(e).splitlines()[0][:80]})") from None


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0, 1] units, accumulated in float64 chunk by chunk."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        f = chunk.to(torch.float64) / 255.0
        s += f.sum((0, 2, 3))
        s2 += (f * f).sum((0, 2, 3))
    n = x.numel() / c
    mean = s / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(1e-12).sqrt().float()


def _gcn(flat: torch.Tensor) -> torch.Tensor:
    """Global contrast normalization per image (pylearn2 defaults: subtract mean, scale the L2 norm to 55)."""
    flat = flat - flat.mean(1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True) / GCN_SCALE
    return flat / norm.clamp_min(1e-8)
