"""The shipped nets' Figure 2 scans, made once and committed: ``python -m app.shipped``.

Without them, a visitor's first Layer view of a shipped net waits for a scan of the 10,000 test images of the net's
dataset (about a minute per net on 2 cores, every layer in one pass). Each net is scanned over its own dataset's test
split (CIFAR-10, or CIFAR-100 for a CIFAR-100 net) exactly as the app's background pass scans it, and saved under
``checkpoints/scans/`` by content (``app.identity``), where the app looks after its own cache. Run it again after a
shipped checkpoint changes: it scans only what is missing, and removes the scans no shipped net names any more.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from allconv import checkpoint
from allconv.data import load as load_data
from allconv.errors import AllconvError
from vis.scan import save_scan, scan_layers
from vis.sources import checkpoint_source

from . import compute, precompute, scans, sources
from .config import DEFAULT_SCAN_LIMIT, SCAN_TOP_K


def make(checkpoints: Sequence[Path], folder: Path, limit: int = DEFAULT_SCAN_LIMIT, data: str | None = None,
         say: Callable[[str], None] = print) -> list[Path]:
    """Scan every layer of each checkpoint over the first ``limit`` test images of ``data`` (default: the net's own
    dataset, as the app opens it) into ``folder``, only what is missing; remove the other ``.npz`` files there; return
    the scans the checkpoints name."""
    wanted: list[Path] = []
    for path in checkpoints:
        net = checkpoint_source(str(path), torch.device("cpu"))
        own = net.data if net.data not in (None, "cifar10") else None
        images = load_data(data or own).x_test[:limit]
        keys = scans.disk_keys(sources.stamp(path), "test", compute.layers(net), images)
        todo = [layer for layer, key in keys.items() if not scans.scan_path(key, folder).is_file()]
        if todo:
            t0 = time.perf_counter()
            found = scan_layers(net.model, images, net.preprocess, layers=todo, top_k=min(SCAN_TOP_K, len(images)),
                                batch_size=precompute.BATCH, progress=False, split="test")
            for layer, s in found.items():
                save_scan(s, scans.scan_path(keys[layer], folder), compress=True)
            say(f"{path.name}: scanned {', '.join(todo)} over {len(images)} images in {time.perf_counter() - t0:.0f} s")
        wanted += [scans.scan_path(key, folder) for key in keys.values()]
    for stale in sorted(set(folder.glob("*.npz")) - set(wanted)):
        stale.unlink()
        say(f"removed {stale.name}: no shipped net names it")
    return wanted


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m app.shipped", description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=DEFAULT_SCAN_LIMIT, help="test images per scan (default: the app's)")
    ap.add_argument("--out", type=Path, default=scans.shipped(), help="folder (default checkpoints/scans)")
    args = ap.parse_args(argv)
    if args.limit < 1:
        ap.error(f"--limit must be a positive integer, got {args.limit}")
    try:
        made = make(checkpoint.shipped(), args.out, args.limit)
    except AllconvError as e:
        sys.exit(f"error: {e}")
    mb = sum(p.stat().st_size for p in made) / 2**20
    print(f"{len(made)} scans of {len(checkpoint.shipped())} shipped nets in {args.out} ({mb:.1f} MB)")


if __name__ == "__main__":
    main()
