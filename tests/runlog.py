"""What a finished training run left behind, read back for comparisons in tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = ("epoch_s", "img_per_s", "wall_s")  # the only fields that differ between two identical runs


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def history(run: Path) -> list[dict]:
    """``metrics.jsonl`` without the timing fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
