"""``allconv-train --lr-sweep``: one run per learning rate, the best kept by validation accuracy (never by test).

A sweep is as resumable as a run. ``sweep.json`` records the plan (config and learning rates) before the first run, so
``--resume ROOT`` keeps every finished or diverged learning rate, continues the interrupted one and starts the rest.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from . import checkpoint as ckpt
from . import rundir
from .config import TrainConfig
from .errors import AllconvError
from .paper import PAPER_LRS
from .train import Interrupted, default_out, resume, train

PLAN_FILE = "sweep.json"
BEST_FILES = (ckpt.MODEL_FILE, "meta.json", "curves.png", "metrics.jsonl")


def sweep(cfg: TrainConfig, lrs: Sequence[float] = PAPER_LRS) -> dict[str, Any]:
    """Train once per learning rate under ``cfg.out`` (one ``lr-<lr>`` run each) and copy the best to the root."""
    cfg = cfg.resolved()
    root = Path(cfg.out) if cfg.out else default_out(cfg)
    rundir.refuse_existing(root)
    cfg = dataclasses.replace(cfg, out=str(root))
    plan = {"status": "running", "lrs": list(lrs), "config": dataclasses.asdict(cfg)}
    rundir.start(root, plan, PLAN_FILE)
    return _run(cfg, root, list(lrs))


def resume_sweep(root: str | Path, stop_after: int | None = None, quiet: bool | None = None) -> dict[str, Any]:
    """Continue an interrupted sweep: finished learning rates are kept, the interrupted one resumes."""
    root = Path(root)
    try:
        plan = json.loads((root / PLAN_FILE).read_text())
        cfg = TrainConfig(**plan["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AllconvError(f"{root / PLAN_FILE} is unreadable ({e}); start the sweep again in a new --out") from None
    if quiet is not None:
        cfg = dataclasses.replace(cfg, quiet=quiet)
    return _run(cfg.resolved(), root, [float(lr) for lr in plan["lrs"]])


def _run(cfg: TrainConfig, root: Path, lrs: list[float]) -> dict[str, Any]:
    results = []
    for lr in lrs:
        out = root / f"lr-{lr:g}"
        try:
            results.append(_one(dataclasses.replace(cfg, lr=lr, out=str(out)), out))
        except Interrupted as e:
            e.args = (f"interrupted by {e.signal} during lr {lr:g}: finished learning rates are kept in {root}; "
                      f"continue with allconv-train --resume {root}",)
            raise
    ok = [r for r in results if r.get("status") == "done" and r.get("val_acc") is not None]
    if not ok:
        raise AllconvError("every learning rate diverged or had no validation set; lower --lr or raise --val-size")
    best = max(ok, key=lambda r: r["val_acc"])
    summary = {"status": "done", "lrs": lrs, "config": dataclasses.asdict(cfg), "best_lr": best["lr"],
               "best_run": best["out"], "runs": results}
    for name in BEST_FILES:  # the best run's files at the root, so the sweep opens like a run; the plan goes last
        src = Path(best["out"]) / name
        rundir.guarded(root, lambda: ckpt.write_bytes(root / name, src.read_bytes()))
    rundir.guarded(root, lambda: _write_json(root / PLAN_FILE, summary))
    tqdm.write(f"sweep: best lr {best['lr']} (val acc {100 * best['val_acc']:.2f}%, test acc "
               f"{100 * best['test_acc']:.2f}%); copied to {root}", file=sys.stderr)
    return summary


def _one(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """One learning rate: its recorded result if it finished or diverged, else resume it or start it."""
    if (why := rundir.diverged(out)) is not None:
        return {"status": "diverged", "lr": cfg.lr, "message": why, "out": str(out)}
    if not (out / ckpt.MODEL_FILE).exists():
        return train(cfg)
    meta, _ = ckpt.load_meta(out)
    if meta.epoch < cfg.epochs:
        return resume(out, quiet=cfg.quiet)
    return {**meta.metrics, "lr": cfg.lr, "epoch": meta.epoch, "out": str(out)}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    ckpt.write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
