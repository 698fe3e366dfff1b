"""Speed of the visualizations.

(a) All 192 conv6 filters of one image (guided backprop): ours (``vis.reconstruct(..., channel=range(192))``, one
    batched call) vs captum's ``NeuronGuidedBackprop`` in a loop over the filters (each at its argmax position, like
    ours) vs a plain batched forward+backward of 192 copies of the whole image, and the FLOP floor of our work (the
    192 units' cones at this CPU's fp32 peak). Also checks ours == captum.
(b) Figure 2 end to end (scan + reconstructions + render + save) for conv6 and conv9 over the CIFAR-10 test split,
    all three methods, top-10, all filters of each layer. Both layers share one scan pass.

    python bench/vis_speed.py [--device cpu] [--threads N] [--limit N] [--checkpoint PATH] [--skip-a] [--skip-b]
                              [--channels N] [--repeat N] [--layers conv6,conv9] [--top-k 10]

Timings do not depend on the weights: without a checkpoint a random-init All-CNN-C is used.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import vis
from allconv import checkpoint, data
from allconv.models import create
from allconv.preprocess import Preprocess
from vis import cone, figure2 as f2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls (after one warm-up) and the last result."""
    fn()
    _sync()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def floor_pass(model: nn.Module, x: torch.Tensor, layer: str, channels: int) -> torch.Tensor:
    """One plain forward+backward of ``channels`` copies of ``x``, each seeded at its channel's argmax."""
    xs = x.expand(channels, -1, -1, -1).detach().requires_grad_(True)
    fmap = vis.maps.forward_to(model, xs, layer)
    rows = torch.arange(channels, device=x.device)
    flat = fmap.detach()[rows, rows].flatten(1).argmax(1)
    seed = torch.zeros_like(fmap)
    seed[rows, rows, flat // fmap.shape[3], flat % fmap.shape[3]] = 1
    return torch.autograd.grad(fmap, xs, seed)[0]


def captum_loop(model: nn.Module, x: torch.Tensor, layer: str, channels: int) -> torch.Tensor:
    from captum.attr import NeuronGuidedBackprop

    warnings.filterwarnings("ignore", category=UserWarning, module="captum")  # per-call notes about its hooks
    fmap = vis.activations(model, x, layer)[0]
    gbp = NeuronGuidedBackprop(model, dict(model.named_modules())[layer])
    out = []
    for c in range(channels):
        h, w = divmod(int(fmap[c].argmax()), fmap.shape[2])
        out.append(gbp.attribute(x, neuron_selector=(c, h, w)))
    return torch.cat(out)


def bench_a(model: nn.Module, x: torch.Tensor, repeat: int, n: int = 192) -> None:
    layer = "conv6"
    captum_model = copy.deepcopy(model).eval()
    for m in captum_model.modules():  # captum's module hooks cannot handle in-place ReLUs
        if isinstance(m, nn.ReLU):
            m.inplace = False
    for p in (*model.parameters(), *captum_model.parameters()):
        p.requires_grad_(False)
    t_ours, ours = timed(lambda: vis.reconstruct(model, x, method="guided", layer=layer, channel=range(n))[0], repeat)
    t_floor, _ = timed(lambda: floor_pass(model, x, layer, n), repeat)
    t_captum, theirs = timed(lambda: captum_loop(captum_model, x, layer, n), max(1, repeat // 2))
    diff = (ours - theirs).abs().max().item()  # type: ignore[operator]
    scale = theirs.abs().max().item()  # type: ignore[union-attr]
    peak = flops.peak_flops(torch.float32, device=x.device) if x.device.type == "cpu" else None
    t_flops = n * 2 * _cone_flops(model, layer) / peak if peak else float("nan")
    print(f"\n(a) guided backprop, all {n} {layer} filters of one 32x32 image ({_where(x)})")
    print("| variant | seconds | vs plain pass |")
    print("|---|---|---|")
    for name, t in ((f"FLOP floor: {n} cones' forward + input gradient at the fp32 peak", t_flops),
                    (f"plain pass: one fwd+bwd of {n} copies of the whole image", t_floor),
                    ("ours: vis.reconstruct, one call (on each unit's cone)", t_ours),
                    (f"captum NeuronGuidedBackprop, loop of {n}", t_captum)):
        print(f"| {name} | {t:.3f} | {t / t_floor:.2f}x |")
    print(f"ours vs captum: max abs diff {diff:.3g} (max |signal| {scale:.3g})")


def bench_b(model: nn.Module, images: torch.Tensor, pre: Preprocess, layers: list[str], top_k: int,
            device: torch.device, batch_size: int) -> None:
    """Figure 2 end to end: the scan in fp32 and in bf16 + fp32 rescoring (checked identical; the bf16 one is what
    allconv-visualize runs where bf16 is native), then per layer the reconstructions (one forward, three backward
    passes per pick) beside their FLOP floor at this machine's fp32 peak, patches + render, save."""
    t_scans = {}
    for amp in ("off", "on"):
        t0 = time.perf_counter()
        scans = f2.scan_layers(model, images, pre, layers=layers, top_k=top_k, batch_size=batch_size,
                               device=device, progress=False, amp=amp)
        t_scans[amp] = time.perf_counter() - t0
        if amp == "off":
            ref = scans
    same = all((ref[n].image_index == scans[n].image_index).all() and (ref[n].values == scans[n].values).all()
               and (ref[n].positions == scans[n].positions).all() for n in layers)
    peak = flops.peak_flops(torch.float32, device=device) if device.type == "cpu" else None
    print(f"\n(b) Figure 2, {len(images)} images, top-{top_k}, all filters, methods {'/'.join(vis.METHODS)} "
          f"({_where(images[:1].to(device))})")
    print(f"scan ({'+'.join(layers)}, one shared pass): fp32 {t_scans['off']:.2f} s | bf16 + fp32 rescoring "
          f"{t_scans['on']:.2f} s ({t_scans['off'] / t_scans['on']:.2f}x) | picks, values, positions identical: "
          f"{'yes' if same else 'NO'}")
    print("| layer | picks | recon (3 methods, one forward) s | its FLOP floor s | patches+render s | save s | "
          "layer total s |")
    print("|---|---|---|---|---|---|---|")
    total = t_scans["on"]
    with tempfile.TemporaryDirectory() as tmp:
        for layer in layers:
            s = scans[layer]
            t1 = time.perf_counter()
            img = f2.render_scan(model, images, pre, s, methods=vis.METHODS, device=device)
            t2 = time.perf_counter()
            f2.save_scan(s, Path(tmp) / f"{layer}.npz")
            img.save(Path(tmp) / f"{layer}.png")
            t_save = time.perf_counter() - t2
            recon = s.seconds["/".join(vis.METHODS)]
            floor = _recon_floor(model, s, peak) if peak else float("nan")
            total += t2 - t1 + t_save
            print(f"| {layer} | {s.num_filters * s.top_k} | {recon:.2f} | {floor:.2f} | {t2 - t1 - recon:.2f} | "
                  f"{t_save:.2f} | {t2 - t1 + t_save:.2f} |")
    print(f"end to end (bf16 scan + both layers): {total:.1f} s" + (f"; fp32 peak {peak / 1e9:.0f} GFLOP/s "
                                                                    "(a large matmul)" if peak else ""))


def _cone_flops(model: nn.Module, layer: str) -> int:
    """Forward FLOPs of one unit's cone (``vis.cone``) in ``layer``."""
    steps = cone.chain(model, layer)
    spans = cone.plan(steps)
    (r0, r1), (c0, c1) = spans[0]
    return flops.forward_flops(lambda x: cone.forward_cone(steps, x, [None] * (len(spans) - 1)), (3, r1 - r0, c1 - c0))


def _recon_floor(model: nn.Module, s: vis.Scan, peak: float) -> float:
    """Seconds at ``peak`` for the picks' work: one forward to the layer on each pick's cone (``vis.cone``; on a net
    that is not a chain, its window), and one input gradient per method (a conv's input gradient costs what its
    forward does)."""
    if cone.chain(model, s.layer) is None:
        win = f2._window_size(s)
        fwd = flops.forward_flops(lambda x: vis.maps.forward_to(model, x, s.layer), (3, *win))
    else:
        fwd = _cone_flops(model, s.layer)
    return s.num_filters * s.top_k * fwd * (1 + len(vis.METHODS)) / peak


def _where(x: torch.Tensor) -> str:
    return torch.cuda.get_device_name(x.device) if x.is_cuda else f"cpu, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--checkpoint", help="default: the shipped/newest one if any, else a random-init All-CNN-C")
    ap.add_argument("--data", help="dataset (default: CIFAR-10, offline copy if present)")
    ap.add_argument("--limit", type=int, help="use only the first N test images in (b)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--layers", default="conv6,conv9")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--channels", type=int, default=192, help="conv6 filters in (a) (default: all 192)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    splits = data.load(args.data)
    path = args.checkpoint or checkpoint.default_checkpoint()
    if path:
        model, meta = checkpoint.load(path, device=device)
        pre = meta.preprocess
        print(f"checkpoint: {path}")
    else:
        torch.manual_seed(0)
        model, pre = create("all-cnn-c").to(device).eval(), Preprocess.fit("standardize", splits.x_train[:5000])
        print("checkpoint: none, random-init all-cnn-c")
    images = splits.x_test[: args.limit] if args.limit else splits.x_test
    if not args.skip_a:
        bench_a(model, pre.to(device)(images[:1].to(device)), args.repeat, args.channels)
    if not args.skip_b:
        bench_b(model, images, pre, args.layers.split(","), args.top_k, device, args.batch_size)


if __name__ == "__main__":
    main()
