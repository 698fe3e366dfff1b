"""Accuracy of a net on a split, and ``allconv-eval``: one checkpoint's val/test accuracy, or the paper's Table 3."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .argparsing import Parser
from .errors import AllconvError
from .paper import TABLE3_ERROR, TABLE3_PARAMS
from .preprocess import Preprocess


CALIBRATE = 256  # images of the first batch run in both precisions to measure bf16's logit error
SAFETY = 4.0  # a bf16 top-1 is trusted when its margin exceeds SAFETY x 2 x the worst logit error seen


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, preprocess: Preprocess, *, batch_size: int = 500,
             tta: bool = False, amp: bool = False, progress: bool = False) -> float:
    """Top-1 accuracy over uint8 images ``x``; ``tta`` averages the logits of each image and its mirror. With ``amp``
    the logits come from bf16 and every image whose top two are close is rescored in fp32 (``predict``), so the
    figure is fp32's."""
    pred = predict(model, x, preprocess, batch_size=batch_size, tta=tta, amp=amp, progress=progress)
    return (pred == y.to(pred.device)).sum().item() / max(len(x), 1)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, preprocess: Preprocess, *, batch_size: int = 500, tta: bool = False,
            amp: bool = False, progress: bool = False) -> torch.Tensor:
    """fp32's top-1 class of each uint8 image, computed at bf16 speed when ``amp``.

    Why exact: a bf16 top-1 can differ from fp32's only where the top-two margin is under twice the logit error. The
    error is measured on the first ``CALIBRATE`` images (both precisions), and any image whose bf16 margin is under
    ``SAFETY`` times twice that worst error is run again in fp32."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    tol = _tolerance(model, x[:CALIBRATE], preprocess, dev, tta) if amp else 0.0
    out = []
    with tqdm(total=len(x), unit="img", desc="evaluating", disable=None if progress else True, leave=False) as bar:
        for i in range(0, len(x), batch_size):
            xb = preprocess(x[i:i + batch_size].to(dev, non_blocking=True))
            xb = xb.contiguous(memory_format=torch.channels_last)
            logits = _logits(model, xb, tta, amp)
            if amp:
                top2 = logits.topk(2, dim=1).values
                close = (top2[:, 0] - top2[:, 1] <= tol).nonzero().flatten()
                if len(close):
                    logits[close] = _logits(model, xb[close], tta, False)
            out.append(logits.argmax(1))
            bar.update(len(xb))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=dev)


def _logits(model: nn.Module, xb: torch.Tensor, tta: bool, amp: bool) -> torch.Tensor:
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(xb).float()
        if tta:
            logits = logits + model(xb.flip(3)).float()
    return logits


def _tolerance(model: nn.Module, x: torch.Tensor, preprocess: Preprocess, dev: torch.device, tta: bool) -> float:
    """``SAFETY`` x 2 x the largest |bf16 - fp32| logit difference on ``x``: margins under it are rescored."""
    if len(x) == 0:
        return 0.0
    xb = preprocess(x.to(dev)).contiguous(memory_format=torch.channels_last)
    err = (_logits(model, xb, tta, True) - _logits(model, xb, tta, False)).abs().max().item()
    return SAFETY * 2 * err


def table3(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per checkpoint: our test error beside the paper's (Table 3, no augmentation)."""
    from .checkpoint import load_meta
    from .models import names

    rows = []
    for p in paths:
        meta, tensors = load_meta(p)
        acc = meta.metrics.get("test_acc")
        rows.append({"model": meta.model, "err": None if acc is None else round(100 * (1 - acc), 2),
                     "paper_err": TABLE3_ERROR[meta.model], "params": meta.metrics.get("params"),
                     "paper_params": TABLE3_PARAMS[meta.model], "epochs": meta.epoch,
                     "wall_s": meta.metrics.get("wall_s"), "img_per_s": meta.metrics.get("img_per_s"),
                     "device": meta.device, "data": meta.data, "path": str(p)})
    for name in sorted(set(names()) - {r["model"] for r in rows}):  # the paper's full table, "-" where we have none
        rows.append({"model": name, "err": None, "paper_err": TABLE3_ERROR[name], "params": None,
                     "paper_params": TABLE3_PARAMS[name], "epochs": None, "wall_s": None, "img_per_s": None,
                     "device": "", "data": "", "path": None})
    order = {n: i for i, n in enumerate(names())}
    return sorted(rows, key=lambda r: order[r["model"]])


def table3_markdown(rows: list[dict[str, Any]]) -> str:
    """Rows of ``table3`` as a markdown table."""
    def fmt(v: Any, spec: str = "") -> str:
        return "-" if v is None else format(v, spec)

    lines = ["| model | error % (ours) | error % (paper) | params (ours) | params (paper) | epochs | wall s | img/s |"
             " device |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {fmt(r['err'], '.2f')} | {r['paper_err']:.2f} | {fmt(r['params'], ',')} | "
                     f"{r['paper_params']} | {fmt(r['epochs'])} | {fmt(r['wall_s'], '.0f')} | {fmt(r['img_per_s'], ',.0f')}"
                     f" | {r['device'] or '-'} |")
    return "\n".join(lines) + "\n"


def _eval_one(path: str, data: str | None, device: str, amp: str) -> None:
    from . import data as datamod
    from .checkpoint import load
    from .device import resolve_amp

    model, meta = load(path, device=device)
    splits = datamod.load(data)
    tta = bool(meta.config.get("tta", False))
    acc = accuracy(model, splits.x_test, splits.y_test, meta.preprocess, tta=tta, progress=True,
                   amp=resolve_amp(amp, next(model.parameters()).device))
    print(f"{meta.model} ({path}) on {splits.name} test ({len(splits.y_test)} images{', flip TTA' if tta else ''}): "
          f"accuracy {100 * acc:.2f}%  error {100 * (1 - acc):.2f}%")
    val = meta.metrics.get("val_acc")
    if val is not None:
        print(f"validation accuracy recorded at training time: {100 * val:.2f}%  error {100 * (1 - val):.2f}%")


def write_table(paths: Sequence[str | Path], out: str | Path, echo: bool = True) -> None:
    """Write ``table3.md`` and ``table3.png`` for these checkpoints into ``out`` (and print the table)."""
    from .checkpoint import write_bytes
    from .plots import table3_chart

    rows = table3(paths)
    md = table3_markdown(rows)
    out_dir = Path(out)
    write_bytes(out_dir / "table3.md", md.encode())
    table3_chart(rows, out_dir / "table3.png")
    if echo:
        print(md, end="")
        print(f"wrote {out_dir / 'table3.md'} and {out_dir / 'table3.png'}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="allconv-eval", description="Test (and val) accuracy of trained nets.")
    ap.add_argument("runs", nargs="+", help="run directories or .safetensors checkpoints")
    ap.add_argument("--table", action="store_true", help="write the paper's Table 3 with our error beside the paper's")
    ap.add_argument("--out", default=".", help="where --table writes table3.md and table3.png")
    ap.add_argument("--data", default=None, help="dataset (default: CIFAR-10, offline copy if present)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                    help="bf16 where native (auto); the accuracy is fp32's either way: close calls are rescored "
                         "in fp32")
    args = ap.parse_args(argv)
    try:
        if args.table:
            write_table(args.runs, args.out)
        else:
            for p in args.runs:
                _eval_one(p, args.data, args.device, args.amp)
    except AllconvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
