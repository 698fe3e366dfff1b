"""What a training run is: its configuration, the two protocols that fill in its defaults, and its LR schedule.

A run is a pure function of its ``TrainConfig`` (every random draw is seeded from it), so the config saved with a run
is all ``--resume`` needs to continue it exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import AllconvError
from .models import names
from .paper import PAPER_EPOCHS, PAPER_MILESTONES

PROTOCOLS: dict[str, dict[str, Any]] = {
    # The paper (section 3.2): SGD, momentum 0.9, weight decay 0.001, dropout, LR x0.1 at 200/250/300 of 350 epochs.
    "paper": dict(epochs=PAPER_EPOCHS, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=1e-3,
                  label_smoothing=0.0, augment="none", ema=0.0, tta=False, dropout=True, batchnorm=False,
                  schedule="step", warmup=0.0),
    # Best accuracy per second for these exact nets: one-cycle LR, big batches, flips+translations, smoothing, TTA.
    # BatchNorm is on: without it (and without dropout) the ReLU on the class conv dies within a few dozen steps at
    # any fast learning rate (all ten class maps go negative, the loss sticks at ln 10).
    "fast": dict(epochs=40, batch_size=512, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 label_smoothing=0.2, augment="flip-translate", ema=0.0, tta=True, dropout=False, batchnorm=True,
                 schedule="onecycle", warmup=0.15),
}

# AdamW's default peak LR per protocol. Its decoupled weight decay is the protocol's SGD decay translated to the same
# shrinkage per step at the peak: SGD shrinks weights by lr_sgd * wd_sgd a step, AdamW by lr_adamw * wd_adamw, so
# wd_adamw = lr_sgd * wd_sgd / lr_adamw (paper: 0.05 * 1e-3 / 1e-3 = 0.05).
ADAMW_LR = {"paper": 1e-3, "fast": 2e-3}

# (field, lowest allowed, highest allowed or None, whether the highest is allowed, what it is)
_RANGES = (
    ("epochs", 1, None, True, "the number of epochs"),
    ("batch_size", 1, None, True, "the batch size"),
    ("momentum", 0.0, 1.0, False, "momentum"),
    ("weight_decay", 0.0, None, True, "weight decay"),
    ("label_smoothing", 0.0, 1.0, False, "label smoothing"),
    ("ema", 0.0, 1.0, False, "the EMA decay"),
    ("warmup", 0.0, 1.0, False, "the warm-up fraction"),
    ("translate", 0, 16, True, "the translation in pixels"),
    ("val_size", 0, None, True, "the validation size"),
)


@dataclass
class TrainConfig:
    """Everything a run depends on; ``None`` fields take the protocol's default."""

    model: str = "all-cnn-c"
    protocol: str = "fast"
    data: str | None = None
    download: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    optimizer: str = "sgd"  # or "adamw" (see ADAMW_LR)
    weight_decay: float | None = None
    label_smoothing: float | None = None
    augment: str | None = None
    translate: int = 2
    ema: float | None = None
    tta: bool | None = None
    dropout: bool | None = None
    batchnorm: bool | None = None
    schedule: str | None = None
    warmup: float | None = None
    preprocess: str = "standardize"
    init: str | None = None  # a checkpoint to start from (allconv.warmstart)
    freeze: str | None = None  # layers kept fixed, e.g. "conv1..conv6"
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"
    amp: str = "auto"
    test_every: int = 0
    out: str | None = None
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every protocol default filled in, checked: a bad value is one line naming the flag."""
        if self.protocol not in PROTOCOLS:
            raise AllconvError(f"unknown protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if self.model not in names():
            raise AllconvError(f"unknown model {self.model!r}; choose one of: {', '.join(names())}")
        if self.optimizer not in ("sgd", "adamw"):
            raise AllconvError(f"unknown optimizer {self.optimizer!r}; choose sgd or adamw")
        filled = {k: v for k, v in PROTOCOLS[self.protocol].items() if getattr(self, k) is None}
        if self.optimizer == "adamw":
            proto = PROTOCOLS[self.protocol]
            lr = ADAMW_LR[self.protocol] if self.lr is None else self.lr
            filled.update(lr=lr, nesterov=False, momentum=0.9 if self.momentum is None else self.momentum)  # beta1
            if self.weight_decay is None:
                filled["weight_decay"] = proto["lr"] * proto["weight_decay"] / lr
        cfg = dataclasses.replace(self, **filled)
        if cfg.augment not in ("none", "flip-translate"):
            raise AllconvError(f"unknown augmentation {cfg.augment!r}; choose none or flip-translate")
        if not (cfg.lr > 0 and cfg.lr < float("inf")):
            raise AllconvError(f"--lr {cfg.lr} must be a positive number")
        for name, lo, hi, hi_ok, what in _RANGES:
            _check_range(name, getattr(cfg, name), lo, hi, hi_ok, what)
        for name in ("train_limit", "test_limit"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise AllconvError(f"--{name.replace('_', '-')} must be at least 1")
        return cfg


def _check_range(name: str, value: float, lo: float, hi: float | None, hi_ok: bool, what: str) -> None:
    flag = "--" + name.replace("_", "-")
    too_high = hi is not None and (value > hi or (value == hi and not hi_ok))
    if value != value or value < lo or too_high:  # value != value: NaN
        upper = "" if hi is None else f" and {'at most' if hi_ok else 'below'} {hi:g}"
        raise AllconvError(f"{flag} {value:g}: {what} must be at least {lo:g}{upper}")


def lr_at(cfg: TrainConfig, t: float) -> float:
    """Learning rate at fractional epoch ``t``: the paper's step schedule (milestones scaled to the run's length)
    or a one-cycle (linear warm-up, linear decay to zero)."""
    if cfg.schedule == "step":
        drops = sum(t >= m * cfg.epochs / PAPER_EPOCHS for m in PAPER_MILESTONES)
        return cfg.lr * 0.1 ** drops
    frac = t / cfg.epochs
    if frac < cfg.warmup:
        return cfg.lr * frac / cfg.warmup
    return cfg.lr * max(0.0, (1 - frac) / (1 - cfg.warmup))
