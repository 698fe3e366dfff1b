"""Train-step throughput (images/s) of the 12 nets: allconv's trainer vs the plain loop public reproductions use,
in fp32 and bf16, and both against the compute floor of this machine.

ours:  allconv.train.Run.train_epoch, the real code path: uint8 data resident on the device, normalization and
       flip/translate on the device, channels_last, no per-step host syncs. Timed twice: fp32 (``amp="off"``) and
       bf16 autocast (``amp="on"``); eager (``compile="off"``), plus ``compile="on"`` with --compile.
plain: torch DataLoader over a Dataset with torchvision transforms (RandomCrop(32, 2) + flip + ToTensor + Normalize),
       fp32 eager, ``loss.item()`` every step.
floor: measured matmul peak (fp32 / bf16, bench/flops.py) / fwd+bwd FLOPs per image (torch's FlopCounterMode,
       exact for the convolutions): the rate if every FLOP ran at dense-matmul speed. An upper bound on an idle
       machine; under load the measured peak is low and "% of floor" can pass 100%.
Both loops: same net (fast-protocol options), same batch size, SGD with momentum, timed after a warm-up pass.
The bf16 columns are measured where ``resolve_amp(--amp, device)`` is on (auto: where bf16 is native, see
allconv/device.py); elsewhere they read "-". Ratios and "% of floor" use the faster of eager and compiled.

    python bench/train_throughput.py                       # all 12 nets, CPU: batch 128, 4 timed steps
    python bench/train_throughput.py --models all-cnn-c --compile   # + fp32+compile, bf16+compile (slow warm-up)
    python bench/train_throughput.py --amp on              # bf16 columns even where bf16 is emulated
    python bench/train_throughput.py --device cuda --batch-size 512 --steps 50 --compile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from allconv import data as datamod
from allconv.device import native_bf16, resolve_amp
from allconv.models import create, names
from allconv.train import Run, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (bench/flops.py; bench/ is not a package)


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


def ours(model: str, data: str | None, bs: int, steps: int, device: str, amp: str, compile: str) -> float:
    """Images/s of allconv's own epoch loop on ``steps`` batches (second epoch timed: the first one compiles)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model, data=data, batch_size=bs, epochs=2, train_limit=bs * steps, val_size=bs,
                          test_limit=1, device=device, quiet=True, out=out, amp=amp, compile=compile).resolved()
        run = Run(cfg, Path(out))
        if run.amp != (amp == "on"):
            raise RuntimeError(f"Run ignored amp={amp!r} (run.amp={run.amp}); the bench would time the wrong path")
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


def variants(bf16: bool, compile: bool) -> list[tuple[str, str, str]]:
    """(column, amp, compile) of each timed ``ours`` variant."""
    out = [("ours fp32", "off", "off")] + ([("ours bf16", "on", "off")] if bf16 else [])
    if compile:
        out += [("fp32+compile", "off", "on")] + ([("bf16+compile", "on", "on")] if bf16 else [])
    return out


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    return {"rate": f"{v:,.0f}", "x": f"{v:.2f}x", "%": f"{v:.0%}", "gf": f"{v:.3f}"}[kind]


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(f"{c:>{max(len(c), 12)}}" if i else f"{c:<15}" for i, c in enumerate(cells)) + " |"


def row(m: str, args: argparse.Namespace, s: datamod.Splits, dev: torch.device, workers: int,
        cols: list[tuple[str, str, str]], peaks: dict[str, float | None]) -> list[str]:
    """One table row: time every variant of ``m`` and put it against the plain loop and the floors."""
    fwd, bwd = flops.fwd_bwd_flops(create(m, dropout=False, batchnorm=True))
    rates = {c: ours(m, args.data, args.batch_size, args.steps, args.device, amp, comp) for c, amp, comp in cols}
    base = plain(m, s.x_train, s.y_train, args.batch_size, args.steps, dev, workers)
    best = {p: max((r for c, r in rates.items() if p in c), default=None) for p in ("fp32", "bf16")}
    floor = {p: peaks[p] / (fwd + bwd) if peaks[p] else None for p in ("fp32", "bf16")}
    ratio = {p: best[p] / base if best[p] else None for p in ("fp32", "bf16")}
    pct = {p: best[p] / floor[p] if best[p] and floor[p] else None for p in ("fp32", "bf16")}
    return ([m, _fmt((fwd + bwd) / 1e9, "gf"), _fmt(base, "rate")] + [_fmt(rates.get(c), "rate") for c in
            _ours_cols(cols)] + [_fmt(ratio["fp32"], "x"), _fmt(ratio["bf16"], "x"), _fmt(floor["fp32"], "rate"),
            _fmt(floor["bf16"], "rate"), _fmt(pct["fp32"], "%"), _fmt(pct["bf16"], "%")])


def _ours_cols(cols: list[tuple[str, str, str]]) -> list[str]:
    """The ``ours`` columns: fp32 and bf16 always (bf16 "-" where off), the compiled ones where timed."""
    return ["ours fp32", "ours bf16"] + [c for c, _, comp in cols if comp == "on"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(names()))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of the plain loop (default: "
                                                               "0 on CPU, 8 on CUDA)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                    help="time the bf16 columns (auto: where bf16 is native)")
    ap.add_argument("--compile", action="store_true", help="also time compile='on' (slow to warm up on CPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    workers = args.workers if args.workers is not None else (8 if dev.type == "cuda" else 0)
    bf16 = resolve_amp(args.amp, dev)
    cols = variants(bf16, args.compile)
    n = 8192 if dev.type == "cuda" else 2048
    peaks = {"fp32": flops.peak_flops(torch.float32, n, device=dev),
             "bf16": flops.peak_flops(torch.bfloat16, n, device=dev) if bf16 else None}
    s = datamod.load(args.data)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"train-step throughput, images/s; batch {args.batch_size}, {args.steps} timed steps; {name}; "
          f"native bf16: {'yes' if native_bf16(dev) else 'no'}; bf16 columns: {'on' if bf16 else 'off'} "
          f"(--amp {args.amp})")
    print(f"matmul peak ({n}x{n}): fp32 {peaks['fp32'] / 1e9:,.1f} GFLOP/s, bf16 "
          + (f"{peaks['bf16'] / 1e9:,.1f} GFLOP/s" if peaks["bf16"] else "-")
          + "; GFLOP/img = fwd+bwd per 32x32 image (FlopCounterMode); floor = peak / GFLOP/img")
    head = (["model", "GFLOP/img", "plain fp32"] + _ours_cols(cols) + ["fp32 / plain", "bf16 / plain",
            "floor fp32", "floor bf16", "fp32 % floor", "bf16 % floor"])
    print(_line(head))
    print("|" + "|".join("-" * len(c) for c in _line(head)[1:-1].split("|")) + "|")
    for m in args.models.split(","):
        print(_line(row(m, args, s, dev, workers, cols, peaks)), flush=True)


if __name__ == "__main__":
    main()
