"""Where a run computes: the device, the torchrun process group, and whether bf16 autocast pays off.

bf16 autocast halves the cost of a convolution on a GPU and on a CPU whose cores multiply bf16 natively (x86
AVX512-BF16 or AMX, Arm's BF16 extension): All-CNN-C trains 2x faster there at no cost in accuracy. Elsewhere oneDNN
emulates bf16 and it is slower than fp32, so ``--amp auto`` turns it on only where the hardware has it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import AllconvError

# CPU flags (Linux /proc/cpuinfo) that mean bf16 dot products run natively.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags ("flags" on x86, "Features" on Arm); empty where the OS does not list them."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls/convolutions are native: any CUDA GPU with bf16, or a CPU with the flags above."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & BF16_FLAGS) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_amp(setting: str, device: torch.device) -> bool:
    """``--amp``: ``on`` and ``off`` are overrides; ``auto`` is on exactly where bf16 is native."""
    if setting not in ("auto", "on", "off"):
        raise AllconvError(f"unknown --amp {setting!r}; choose auto, on or off")
    return native_bf16(device) if setting == "auto" else setting == "on"


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if visible, else CPU), ``cpu`` or ``cuda[:i]``; under torchrun each rank takes its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AllconvError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
        if "LOCAL_RANK" in os.environ and name == "cuda":
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    elif name != "cpu":
        raise AllconvError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)
