"""Train-step throughput (images/s) of the 12 nets: allconv's trainer vs the plain loop public reproductions use.

ours:  allconv.train.Run.train_epoch, the real code path: uint8 data resident on the device, normalization and
       flip/translate on the device, channels_last, bf16 autocast + torch.compile on CUDA, no per-step host syncs.
plain: torch DataLoader over a Dataset with torchvision transforms (RandomCrop(32, 2) + flip + ToTensor + Normalize),
       fp32 eager, ``loss.item()`` every step.
Both: same net (fast-protocol options), same batch size, SGD with momentum, timed after a warm-up pass.

    python bench/train_throughput.py                       # all 12 nets, CPU: batch 128, 4 timed steps
    python bench/train_throughput.py --device cuda --batch-size 512 --steps 50
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from allconv import data as datamod
from allconv.models import create, names
from allconv.train import Run, TrainConfig


class _Plain(Dataset):
    """uint8 CHW images through torchvision transforms, one image at a time (what the public loops do)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: list[float], std: list[float]) -> None:
        self.x, self.y = x, y
        self.tf = v2.Compose([v2.RandomCrop(32, padding=2), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32,
                              scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tf(self.x[i]), self.y[i]


def plain(model: str, x: torch.Tensor, y: torch.Tensor, bs: int, steps: int, device: torch.device,
          workers: int) -> float:
    """Images/s of the plain loop over ``steps`` batches (after one warm-up batch)."""
    net = create(model, dropout=False, batchnorm=True).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    ds = _Plain(x[:bs * (steps + 1)], y[:bs * (steps + 1)], [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, drop_last=True)
    t0 = 0.0
    for i, (xb, yb) in enumerate(loader):
        if i == 1:
            _sync(device)
            t0 = time.perf_counter()
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(net(xb), yb, label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return bs * steps / (time.perf_counter() - t0)


def ours(model: str, data: str | None, bs: int, steps: int, device: str) -> float:
    """Images/s of allconv's own epoch loop on ``steps`` batches (second epoch timed: the first one compiles)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model, data=data, batch_size=bs, epochs=2, train_limit=bs * steps, val_size=bs,
                          test_limit=1, device=device, quiet=True, out=out).resolved()
        run = Run(cfg, out)
        run.train_epoch(None)
        _sync(run.device)
        t0 = time.perf_counter()
        run.epoch = 1
        run.train_epoch(None)
        _sync(run.device)
        return bs * steps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(names()))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of the plain loop (default: "
                                                               "0 on CPU, 8 on CUDA)")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    workers = args.workers if args.workers is not None else (8 if dev.type == "cuda" else 0)
    s = datamod.load(args.data)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"train-step throughput, images/s; batch {args.batch_size}, {args.steps} timed steps; {name}")
    print(f"| {'model':<15} | {'ours':>8} | {'plain':>8} | {'ratio':>6} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    for m in args.models.split(","):
        a = ours(m, args.data, args.batch_size, args.steps, args.device)
        b = plain(m, s.x_train, s.y_train, args.batch_size, args.steps, dev, workers)
        print(f"| {m:<15} | {a:>8,.0f} | {b:>8,.0f} | {a / b:>5.2f}x |", flush=True)


if __name__ == "__main__":
    main()
