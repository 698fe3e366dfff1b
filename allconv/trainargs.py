"""The ``allconv-train`` command line: every flag, with the protocol supplying what is not given (``config``)."""

from __future__ import annotations

import argparse
from typing import Sequence

from .config import PROTOCOLS
from .argparsing import Parser
from .models import names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = Parser(prog="allconv-train", description="Train one of the paper's 12 nets.")
    ap.add_argument("--model", default="all-cnn-c", help=f"one of: {', '.join(names())}; or several, comma-separated, "
                    "or all: a family, each net trained with the same config under --out/<net>")
    ap.add_argument("--protocol", default="fast", choices=list(PROTOCOLS))
    ap.add_argument("--data", default=None, help="cifar10, cifar100, a .npz, an image-folder dir or archive "
                                                 "(default: CIFAR-10, the offline copy if present)")
    ap.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-sweep", action="store_true", help="train with each of the paper's LRs, keep the best by val")
    ap.add_argument("--momentum", type=float)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd (default) or adamw (LR 1e-3 "
                    "paper / 2e-3 fast unless --lr; the protocol's weight decay translated to the same shrinkage)")
    ap.add_argument("--warmup", type=float, help="one-cycle warm-up, as a fraction of the run")
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--augment", choices=["none", "flip-translate"])
    ap.add_argument("--ema", type=float, help="EMA decay of the weights per step (0: off)")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="mirror test-time averaging")
    ap.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                    help="BatchNorm after every conv (default: on in fast, off in paper)")
    ap.add_argument("--preprocess", default="standardize", choices=["standardize", "zca"])
    ap.add_argument("--init", metavar="CHECKPOINT", help="start from a trained net: every layer whose shape "
                    "matches is copied, the rest (e.g. the class conv for another dataset) initialized anew")
    ap.add_argument("--freeze", metavar="LAYERS", help="keep these layers fixed, e.g. conv1..conv6")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--train-limit", type=int, help="use only the first N training images (quick runs)")
    ap.add_argument("--test-limit", type=int, help="evaluate on only the first N test images")
    ap.add_argument("--test-every", type=int, default=0, help="also measure test accuracy every N epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                    help="bf16 autocast (auto: on where bf16 is native: a GPU, or a CPU with AVX512-BF16 or AMX)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")
    ap.add_argument("--out", help="run directory (default: runs/<model>-<protocol>-<time>)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    ap.add_argument("--stop-after", type=int, help="stop cleanly after this many epochs (continue with --resume)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)
