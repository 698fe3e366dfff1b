"""FLOP counts and this machine's matmul peak, for the compute floor of the benches.

The floor of a workload is ``peak FLOP/s / FLOPs``: the rate it would reach if every FLOP ran at the speed of a large
dense matmul. It ignores memory traffic and the cheap layers (BatchNorm, ReLU, pooling, the optimizer), so it is an
upper bound, not a target: "ours is at 40% of the floor" means 60% of the time goes to something other than the
convolutions' arithmetic.

Used by bench/train_throughput.py; bench/ is not a package, so import it path-relatively::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import flops
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def fwd_bwd_flops(net: nn.Module, shape: tuple[int, ...] = (3, 32, 32)) -> tuple[int, int]:
    """(forward, backward) FLOPs of ``net`` on one image of ``shape``; a multiply-add counts 2.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: exact for convolutions and matmuls, zero for the
    elementwise layers. The backward pass includes the weight gradients and the input gradients of every layer but
    the first (the image needs none), as in training. The net is run in eval mode (BatchNorm would reject a batch of
    one in train mode; the conv FLOPs are the same) and its train/eval mode is restored afterwards.
    """
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        x = torch.zeros(1, *shape, device=device)
        with FlopCounterMode(display=False) as fwd:
            out = net(x)
        with FlopCounterMode(display=False) as bwd:
            out.float().sum().backward()
        net.zero_grad(set_to_none=True)
    finally:
        net.train(was_training)
    return fwd.get_total_flops(), bwd.get_total_flops()


def peak_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeat: int = 5,
               device: torch.device | str = "cpu") -> float:
    """Measured matmul peak in FLOP/s: best of ``repeat`` ``n x n @ n x n`` products in ``dtype`` (after a warm-up),
    with torch's current thread count (``torch.get_num_threads()``) on a CPU."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeat + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i:  # the first product warms up the kernels
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(fn: Callable[[torch.Tensor], object], shape: tuple[int, ...]) -> int:
    """FLOPs of ``fn`` on one zero input of ``shape`` (convolutions and matmuls, as ``fwd_bwd_flops`` counts)."""
    with torch.no_grad(), FlopCounterMode(display=False) as count:
        fn(torch.zeros(1, *shape))
    return count.get_total_flops()
