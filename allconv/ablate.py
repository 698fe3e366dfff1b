"""``allconv-ablate``: what BatchNorm, dropout and the optimizer do to these nets, as a resumable grid of runs.

The grid is {BN, dropout (the paper's: 0.2 on the input, 0.5 after each downsampling), both, neither} x {SGD with
Nesterov momentum, AdamW (``config.ADAMW_LR``; the protocol's weight decay translated)} x seeds, for each model and
protocol asked. Within a protocol every cell has the same schedule and epoch budget (and ``--train-limit`` subset);
the validation split is the same seeded hold-out throughout; test error is measured once, at the end of each run.
Diverged runs are results: they count in the table's "diverged" column and their curves stop where they diverged.

``report`` reads the runs back and writes ``ablations.md`` (a table per model and protocol: val/test error mean and
spread over seeds, epochs to reach each of ``TARGETS`` val accuracy) and ``ablations.png`` (validation curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from . import rundir
from .config import PROTOCOLS, TrainConfig
from .argparsing import Parser
from .errors import AllconvError
from .interrupt import Interrupted, catching, exit_status
from .models import names

REGULARIZERS = {"bn": (True, False), "dropout": (False, True), "both": (True, True), "neither": (False, False)}
OPTIMIZERS = ("sgd", "adamw")
TARGETS = (0.50, 0.80)  # "epochs to reach 80% validation accuracy", and 50% for short budgets that never get there


def cells(base: TrainConfig, models: Sequence[str], protocols: Sequence[str],
          seeds: Sequence[int]) -> list[tuple[str, TrainConfig]]:
    """Every cell of the grid as ``("<model>/<protocol>/<regularizer>-<optimizer>-s<seed>", config)``."""
    out = []
    for model, protocol, (reg, (bn, drop)), opt, seed in itertools.product(
            models, protocols, REGULARIZERS.items(), OPTIMIZERS, seeds):
        cfg = dataclasses.replace(base, model=model, protocol=protocol, batchnorm=bn, dropout=drop, optimizer=opt,
                                  seed=seed)
        out.append((f"{model}/{protocol}/{reg}-{opt}-s{seed}", cfg))
    return out


def report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write ``ablations.md`` and ``ablations.png`` (into ``out``, default ``root``) from the grid's runs."""
    root = Path(root)
    try:
        plan = json.loads((root / rundir.PLAN_FILE).read_text())
    except (OSError, ValueError) as e:
        raise AllconvError(f"{root} holds no grid ({rundir.PLAN_FILE}: {e}); run allconv-ablate first") from None
    runs = [_read(root / m["name"], m["name"]) for m in plan["members"]]
    dest = Path(out) if out else root
    dest.mkdir(parents=True, exist_ok=True)
    _curves([r for r in runs if r["history"]], dest / "ablations.png")
    md = _markdown(runs, plan["config"], dest / "ablations.png")
    (dest / "ablations.md").write_text(md)
    return dest / "ablations.md"


def _read(run: Path, name: str) -> dict[str, Any]:
    """One cell's outcome: its history (from ``metrics.jsonl``), final val/test accuracy, and whether it diverged."""
    model, protocol, cell = name.split("/")
    reg, opt, _ = cell.rsplit("-", 2)
    hist = []
    if (run / "metrics.jsonl").is_file():
        hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    why = rundir.diverged(run)
    last = hist[-1] if hist else {}
    return {"model": model, "protocol": protocol, "reg": reg, "opt": opt, "history": hist, "diverged": why,
            "finished": why is None and bool(last.get("test_acc") is not None), "val": last.get("val_acc"),
            "test": last.get("test_acc"),
            "to": {t: next((h["epoch"] for h in hist if (h.get("val_acc") or 0) >= t), None) for t in TARGETS}}


def _cell_row(runs: list[dict[str, Any]]) -> str:
    """``| reg | opt | val err | test err | epochs to 50% | epochs to 80% | diverged |`` over a cell's seeds."""
    ok = [r for r in runs if r["finished"]]
    val = _spread([100 * (1 - r["val"]) for r in ok])
    test = _spread([100 * (1 - r["test"]) for r in ok])
    div = sum(r["diverged"] is not None for r in runs)
    missing = len(runs) - len(ok) - div
    reach = {t: [r["to"][t] for r in ok if r["to"][t] is not None] for t in TARGETS}
    to = " | ".join("-" if missing == len(runs) else f"{statistics.mean(e):.1f} ({len(e)}/{len(runs)})" if e
                    else f"never (0/{len(runs)})" for e in reach.values())
    return (f"| {runs[0]['reg']} | {runs[0]['opt']} | {val} | {test} | {to} | {div}/{len(runs)}"
            f"{f' ({missing} not run)' if missing else ''} |")


def _spread(xs: list[float]) -> str:
    """Mean and half the range (``12.3 ± 0.4``), or one value, or ``-``."""
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.2f}" + (f" ± {(max(xs) - min(xs)) / 2:.2f}" if len(xs) > 1 else "")


def _markdown(runs: list[dict[str, Any]], config: dict[str, Any], png: Path) -> str:
    lines = ["# Ablations: BatchNorm, dropout and the optimizer", "",
             f"Epochs {config.get('epochs')} per run; training subset {config.get('train_limit') or 'all'} images; "
             f"validation {config.get('val_size')} held-out training images (seed 0 split); test error on the "
             f"{Path(config.get('data') or 'CIFAR-10').name} test split, once, at the end. Error in % as mean ± half "
             "the range over seeds; \"epochs to X\": mean first epoch with val accuracy >= X over the seeds that "
             "reached it (how many did, in brackets).", ""]
    key = lambda r: (r["model"], r["protocol"])  # noqa: E731
    for (model, protocol), group in itertools.groupby(sorted(runs, key=key), key=key):
        group = list(group)
        lines += [f"## {model}, {protocol} protocol", "",
                  "| regularization | optimizer | val error % | test error % | "
                  + "".join(f"epochs to {t:.0%} | " for t in TARGETS) + "diverged |",
                  "|---|---|---:|---:|" + "---:|" * len(TARGETS) + "---:|"]
        for reg, opt in itertools.product(REGULARIZERS, OPTIMIZERS):
            cell = [r for r in group if r["reg"] == reg and r["opt"] == opt]
            if cell:
                lines.append(_cell_row(cell))
        lines.append("")
    lines += [f"![validation curves]({png.name})", ""]
    return "\n".join(lines)


def _curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Validation accuracy per epoch: one panel per (model, protocol), one line per run (seeds share a colour)."""
    from .plots import plt, save_png

    panels = sorted({(r["model"], r["protocol"]) for r in runs})
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.6), squeeze=False)
    colours = {c: f"C{i}" for i, c in enumerate(itertools.product(REGULARIZERS, OPTIMIZERS))}
    for ax, panel in zip(axes[0], panels):
        seen = set()
        for r in (r for r in runs if (r["model"], r["protocol"]) == panel):
            pts = [(h["epoch"], h["val_acc"]) for h in r["history"] if h.get("val_acc") is not None]
            label = f"{r['reg']}, {r['opt']}"
            if pts:
                ax.plot(*zip(*pts), color=colours[(r["reg"], r["opt"])], ls="--" if r["diverged"] else "-",
                        label=None if label in seen else label)
                seen.add(label)
        ax.set_title(f"{panel[0]}, {panel[1]}"), ax.set_xlabel("epoch"), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (dashed: diverged)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="lower right")
    save_png(fig, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = Parser(prog="allconv-ablate", description="BN x dropout x optimizer grid, resumable.")
    ap.add_argument("--models", default="model-a,all-cnn-c", help="comma list of nets (default model-a,all-cnn-c)")
    ap.add_argument("--protocols", default="paper,fast", help="comma list of protocols (default paper,fast)")
    ap.add_argument("--seeds", default="0,1", help="comma list of seeds (default 0,1)")
    ap.add_argument("--epochs", type=int, required=False, help="epochs per run (same for every cell)")
    ap.add_argument("--train-limit", type=int, help="train on the first N images of the training split")
    ap.add_argument("--batch-size", type=int, help="batch size for every cell (default: the protocol's)")
    ap.add_argument("--val-size", type=int, default=5000, help="held-out training images for validation")
    ap.add_argument("--data", help="dataset (default CIFAR-10)")
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="root of the grid's runs")
    ap.add_argument("--resume", metavar="ROOT", help="continue an interrupted grid")
    ap.add_argument("--report", metavar="ROOT", help="only write the report of a grid's runs")
    ap.add_argument("--doc", help="where the report goes (default: the grid's root), e.g. docs")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the grid, then write its report; exit 2 on bad input, 130/143 when interrupted."""
    import torch

    from .runset import grid, is_runset, resume_runset

    args = parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.report:
            print(f"wrote {report(args.report, args.doc)}")
            return 0
        with catching():  # SIGTERM too stops a run where --resume continues it
            if args.resume:
                resume_runset(args.resume, quiet=args.quiet or None)
                root = args.resume
            else:
                root = _start(args, grid)
        print(f"wrote {report(root, args.doc)}")
        return 0
    except (Interrupted, KeyboardInterrupt) as e:  # the latter outside the grid's runs
        root = args.resume or args.out
        again = f"continue with allconv-ablate --resume {root}" if root and is_runset(root) else "run it again"
        return exit_status(e, f"interrupted outside the grid's runs: {again}")
    except AllconvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _start(args: argparse.Namespace, grid: Any) -> str:
    models, protocols = _list(args.models, names(), "--models"), _list(args.protocols, list(PROTOCOLS), "--protocols")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise AllconvError(f"--seeds {args.seeds!r}: give integers, e.g. 0,1") from None
    if not args.out or not args.epochs:
        raise AllconvError("--out ROOT and --epochs N are required: the grid's runs go under ROOT, N epochs each")
    base = TrainConfig(model=models[0], protocol=protocols[0], data=args.data, epochs=args.epochs,
                       batch_size=args.batch_size, train_limit=args.train_limit, val_size=args.val_size,
                       amp=args.amp, out=args.out,
                       quiet=args.quiet)
    grid(base, cells(base, models, protocols, seeds or [0]))
    return args.out


def _list(spec: str, allowed: list[str], flag: str) -> list[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise AllconvError(f"{flag} {spec!r}: unknown {bad[0] if bad else '(none)'!r}; choose from {', '.join(allowed)}")
    return items


if __name__ == "__main__":
    sys.exit(main())
