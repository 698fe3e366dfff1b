"""torchvision classifiers the operator offers in the app, beside our checkpoints: the same allowlist idea as
``app.allow``. A visitor picks ``torchvision:NAME`` from the Checkpoint list (or a link names it); only the names the
operator listed exist, each with the weights the operator chose, so no link can make the server build an arbitrary
(possibly huge) model, download weights or open a file.

The operator lists them in ``ALLCONV_TORCHVISION`` (``allconv-app --torchvision NAME[=WEIGHTS]``, repeatable):
comma-separated ``NAME`` (random init, said on the page), ``NAME=DEFAULT`` (torchvision's weights enum: downloaded
once into torch's hub cache, one line offline) or ``NAME=FILE`` (a state dict, as ``allconv-visualize --weights``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from allconv.errors import AllconvError
from vis.sources import PREFIX, Source, torchvision_source

ENV = "ALLCONV_TORCHVISION"


def parse(text: str) -> dict[str, str | None]:
    """``"resnet18,vgg16=DEFAULT"`` -> ``{"torchvision:resnet18": None, "torchvision:vgg16": "DEFAULT"}``."""
    offered: dict[str, str | None] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weights = item.partition("=")
        name = name.strip().removeprefix(PREFIX)
        offered[PREFIX + name] = weights.strip() or None
    return offered


def offered() -> dict[str, str | None]:
    """The operator's torchvision models by label (``torchvision:NAME``) with their weights."""
    return parse(os.environ.get(ENV, ""))


def check(text: str) -> None:
    """Refuse (one line, for ``allconv-app --torchvision``) a name torchvision lacks or a weights file that is not
    there, before the server starts."""
    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    for label, weights in parse(text).items():
        name = label[len(PREFIX):]
        if name not in known:
            raise AllconvError(f"--torchvision {name}: torchvision has no such classifier; e.g. resnet18, resnet50, "
                               "vgg16, densenet121 (torchvision.models.list_models())")
        if weights not in (None, "DEFAULT") and not Path(weights).expanduser().is_file():
            raise AllconvError(f"--torchvision {name}={weights}: no such file; give a state dict file, DEFAULT "
                               "(torchvision's weights) or nothing (random init)")


def is_label(text: str) -> bool:
    return text.startswith(PREFIX)


def stamp(label: str) -> str:
    """The cache identity of an offered model: its label and its weights (a file by size and time, so replacing the
    file reloads it). A label the operator did not offer gets the allowlist's neutral refusal."""
    from .allow import NO_CHECKPOINT

    table = offered()
    if label not in table:
        raise AllconvError(NO_CHECKPOINT)
    weights = table[label]
    if weights in (None, "DEFAULT"):
        return f"{label}|{weights or 'random'}"
    path = Path(weights).expanduser().resolve()
    try:
        st = path.stat()
    except OSError:
        raise AllconvError(f"the weights of {label} are missing on the server; ask its operator") from None
    return f"{label}|{path}:{st.st_size}:{st.st_mtime_ns}"


def load(stamp: str) -> Source:
    """The model a ``stamp`` names, on the CPU, with its preprocessing, classes and input size."""
    label = stamp.split("|", 1)[0]
    table = offered()
    if label not in table:
        from .allow import NO_CHECKPOINT

        raise AllconvError(NO_CHECKPOINT)
    src = torchvision_source(label[len(PREFIX):], table[label], torch.device("cpu"))
    src.notes = [] if table[label] else [f"{label} has random weights (the server offers it without trained ones): "
                                         "its pictures show the architecture, not learned features"]
    return src
