"""Figure 2's work beside the field's tools: our scan vs zennit-crp's reference samples, our reconstructions vs
captum's NeuronGuidedBackprop, on the same net, layer, images and k.

(1) Top-k images per channel of a layer over the test split. Ours: ``vis.scan_layers`` (fp32, and bf16 with fp32
    rescoring). zennit-crp: ``FeatureVisualization(..., max_target="max", abs_norm=False)`` -- activation maximization
    by each image's max over positions, our definition -- run over the same images (it also computes relevances in
    the same pass: that is how it works). Agreement: per channel, how many of our k images are in its top-k.
(2) Guided backprop of every pick (all filters x top-k): ours (one batched call on RF windows, one forward for the
    three methods, timed for guided alone here) vs captum's ``NeuronGuidedBackprop``, one call per pick on the same
    windows. Checks the signals agree.

    pip install zennit-crp
    python bench/vs_zennit_crp.py [--checkpoint checkpoints/all-cnn-c.safetensors] [--layer conv6] [--k 10]
                                  [--limit N] [--threads N] [--skip-crp] [--skip-captum]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import vis
from allconv import checkpoint, data
from vis import figure2 as f2


def ours(model: nn.Module, images: torch.Tensor, pre, layer: str, k: int, amp: str) -> tuple[float, vis.Scan]:
    t0 = time.perf_counter()
    s = f2.scan_layers(model, images, pre, layers=[layer], top_k=k, progress=False, amp=amp)[layer]
    return time.perf_counter() - t0, s


def crp_topk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, k: int,
             batch_size: int) -> tuple[float, np.ndarray]:
    """zennit-crp's activation-maximization reference samples: (k, C) image indices, best first."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization

    net = _no_inplace(model)
    dataset = torch.utils.data.TensorDataset(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        fv = FeatureVisualization(CondAttribution(net), dataset, {layer: ChannelConcept()}, max_target="max",
                                  abs_norm=False, path=tmp)
        t0 = time.perf_counter()
        fv.run(None, 0, len(x), batch_size=batch_size, checkpoint=10 ** 9)
        took = time.perf_counter() - t0
        picks = np.load(Path(tmp) / "ActMax_max_unnormed" / f"{layer}_data.npy")
    return took, picks[:k].astype(np.int64)


def captum_picks(model: nn.Module, windows: torch.Tensor, layer: str, channels: torch.Tensor,
                 positions: torch.Tensor) -> tuple[float, torch.Tensor]:
    from captum.attr import NeuronGuidedBackprop

    warnings.filterwarnings("ignore", category=UserWarning)
    net = _no_inplace(model)
    gbp = NeuronGuidedBackprop(net, dict(net.named_modules())[layer])
    t0 = time.perf_counter()
    out = [gbp.attribute(windows[i:i + 1], neuron_selector=(int(channels[i]), int(positions[i, 0]),
                                                            int(positions[i, 1]))) for i in range(len(windows))]
    return time.perf_counter() - t0, torch.cat(out)


def _no_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are not in place (captum's and zennit's module hooks need that)."""
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/all-cnn-c.safetensors")
    ap.add_argument("--layer", default="conv6")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--limit", type=int, help="first N test images (default: all 10,000)")
    ap.add_argument("--batch-size", type=int, default=100, help="zennit-crp's batch size")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--skip-crp", action="store_true")
    ap.add_argument("--skip-captum", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = checkpoint.load(args.checkpoint)
    splits = data.load(None)
    images, labels = splits.x_test[:args.limit], splits.y_test[:args.limit]
    print(f"{args.checkpoint}, {args.layer}, {len(images)} test images, top-{args.k}, cpu, "
          f"{torch.get_num_threads()} threads")
    t32, s = ours(model, images, meta.preprocess, args.layer, args.k, "off")
    t16, s16 = ours(model, images, meta.preprocess, args.layer, args.k, "on")
    assert (s.image_index == s16.image_index).all()
    print("\n(1) top-k images per channel\n| tool | seconds | vs ours (bf16) | channels with identical top-k | "
          "picks in common |\n|---|---:|---:|---:|---:|")
    print(f"| ours, fp32 | {t32:.1f} | {t32 / t16:.2f}x | - | - |\n| ours, bf16 + fp32 rescoring | {t16:.1f} | 1.00x "
          "| (identical to fp32) | - |")
    if not args.skip_crp:
        x = meta.preprocess(images)
        tc, theirs = crp_topk(model, x, labels, args.layer, args.k, args.batch_size)
        mine = s.image_index.T  # (k, C)
        same_set = sum(set(mine[:, c]) == set(theirs[:, c]) for c in range(mine.shape[1]))
        common = sum(len(set(mine[:, c]) & set(theirs[:, c])) for c in range(mine.shape[1]))
        print(f"| zennit-crp FeatureVisualization (activation, max) | {tc:.1f} | {tc / t16:.2f}x | "
              f"{same_set}/{mine.shape[1]} | {common}/{mine.size} |")
    if not args.skip_captum:
        win = f2._window_size(s)
        picks = f2._picks(s, list(range(s.num_filters)))
        origin = f2._window_origin(picks["rf_start"], s, win)
        windows = f2._windows(images, picks["image"], origin, win, meta.preprocess, torch.device("cpu"))
        pos = picks["positions"] - origin // torch.tensor(s.rf_stride)
        t0 = time.perf_counter()
        mine = vis.reconstruct_at(model, windows, method="guided", layer=args.layer, channels=picks["channel"],
                                  positions=pos)
        t_ours = time.perf_counter() - t0
        t_cap, theirs = captum_picks(model, windows, args.layer, picks["channel"], pos)
        diff = float((mine - theirs).abs().max()) / float(theirs.abs().max())
        print(f"\n(2) guided backprop of {len(windows)} picks on {win[0]}x{win[1]} windows\n| tool | seconds | ratio |"
              f"\n|---|---:|---:|\n| ours: vis.reconstruct_at, one call | {t_ours:.1f} | 1.00x |\n"
              f"| captum NeuronGuidedBackprop, one call per pick | {t_cap:.1f} | {t_cap / t_ours:.2f}x |\n"
              f"max |ours - captum| / max |captum| = {diff:.2g}")


if __name__ == "__main__":
    main()
