"""A set of runs under one root, trained one after another and resumable as a whole.

Three kinds: a learning-rate sweep (``--lr-sweep``: one run per LR, the best by validation accuracy, never by test, is
copied to the root) and a family (``--model all`` or ``--model a,b``: every net under one protocol and epoch budget,
so Table 3 compares like with like; ``table3.md`` is written at the root), and a grid of arbitrary cells
(``allconv.ablate``). ``plan.json`` records the config and the
members before the first run, so ``--resume ROOT`` keeps every finished or diverged member, continues the
interrupted one and starts the rest.
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
from .models import names
from .paper import PAPER_LRS
from .interrupt import Interrupted, signal_behind
from .train import default_out, resume, train

PLAN_FILE = rundir.PLAN_FILE
BEST_FILES = (ckpt.MODEL_FILE, "meta.json", "curves.png", "metrics.jsonl")


def sweep(cfg: TrainConfig, lrs: Sequence[float] = PAPER_LRS) -> dict[str, Any]:
    """Train once per learning rate under ``cfg.out`` (one ``lr-<lr>`` run each) and copy the best to the root."""
    return _start("sweep", cfg, [(f"lr-{lr:g}", {"lr": float(lr)}) for lr in lrs])


def family(cfg: TrainConfig, models: Sequence[str]) -> dict[str, Any]:
    """Train each net in ``models`` with the same config (one run per net, named after it); Table 3 at the root."""
    unknown = [m for m in models if m not in names()]
    if unknown or not models:
        raise AllconvError(f"unknown model {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(names())}")
    return _start("family", cfg, [(m, {"model": m}) for m in dict.fromkeys(models)])


def grid(cfg: TrainConfig, cells: Sequence[tuple[str, TrainConfig]]) -> dict[str, Any]:
    """Train each named cell config (an ablation grid, see ``allconv.ablate``) one after another under ``cfg.out``.
    Each cell is stored as its differences from ``cfg``, so a resume rebuilds it exactly."""
    base = dataclasses.asdict(cfg.resolved())
    members = [(name, {k: v for k, v in dataclasses.asdict(c.resolved()).items() if v != base[k] and k != "out"})
               for name, c in cells]
    return _start("grid", cfg, members)


def is_runset(root: str | Path) -> bool:
    return (Path(root) / PLAN_FILE).is_file()


def resume_runset(root: str | Path, stop_after: int | None = None, quiet: bool | None = None) -> dict[str, Any]:
    """Continue an interrupted sweep or family: finished members are kept, the interrupted one resumes."""
    root = Path(root)
    try:
        plan = json.loads((root / PLAN_FILE).read_text())
        cfg = TrainConfig(**plan["config"])
        kind, members = plan["kind"], [(m["name"], m["overrides"]) for m in plan["members"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AllconvError(f"{root / PLAN_FILE} is unreadable ({e}); start the set again in a new --out") from None
    if quiet is not None:
        cfg = dataclasses.replace(cfg, quiet=quiet)
    return _run(kind, cfg.resolved(), root, members)


def _start(kind: str, cfg: TrainConfig, members: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    cfg = cfg.resolved()
    root = Path(cfg.out) if cfg.out else default_out(cfg)
    rundir.refuse_existing(root)
    cfg = dataclasses.replace(cfg, out=str(root))
    plan = {"kind": kind, "status": "running", "config": dataclasses.asdict(cfg),
            "members": [{"name": n, "overrides": o} for n, o in members]}
    rundir.start(root, plan, PLAN_FILE)
    return _run(kind, cfg, root, members)


def _run(kind: str, cfg: TrainConfig, root: Path, members: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    results = []
    for name, overrides in members:
        out = root / name
        try:
            results.append(_one(dataclasses.replace(cfg, **overrides, out=str(out)).resolved(), out))
        except BaseException as e:  # an interrupt in a member's epochs, or before them (loading its data, say)
            if (sig := signal_behind(e)) is None:
                raise
            stopped = Interrupted(out, cfg.epochs, sig)
            stopped.args = (f"interrupted by {sig} during {name}: finished runs are kept in {root}; continue "
                            f"with allconv-train --resume {root}",)
            raise stopped from None
    summary = {"kind": kind, "status": "done", "config": dataclasses.asdict(cfg),
               "members": [{"name": n, "overrides": o} for n, o in members], "runs": results}
    if kind != "grid":  # a grid's report is allconv.ablate's
        summary.update(_best(root, results) if kind == "sweep" else _table(root, results))
    rundir.guarded(root, lambda: ckpt.write_bytes(root / PLAN_FILE, (json.dumps(summary, indent=1) + "\n").encode()))
    return summary


def _one(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """One member: its recorded result if it finished or diverged, else resume it or start it."""
    if (why := rundir.diverged(out)) is not None:
        return {"status": "diverged", "model": cfg.model, "lr": cfg.lr, "message": why, "out": str(out)}
    if not (out / ckpt.MODEL_FILE).exists():
        return {"model": cfg.model, **train(cfg)}
    meta, _ = ckpt.load_meta(out)
    if meta.epoch < cfg.epochs:
        return {"model": cfg.model, **resume(out, quiet=cfg.quiet)}
    return {**meta.metrics, "model": cfg.model, "lr": cfg.lr, "epoch": meta.epoch, "out": str(out)}


def _best(root: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A sweep's best run by validation accuracy, its files copied to the root so the sweep opens like a run."""
    ok = [r for r in results if r.get("status") == "done" and r.get("val_acc") is not None]
    if not ok:
        raise AllconvError("every learning rate diverged or had no validation set; lower --lr or raise --val-size")
    best = max(ok, key=lambda r: r["val_acc"])
    for name in BEST_FILES:
        src = Path(best["out"]) / name
        rundir.guarded(root, lambda: ckpt.write_bytes(root / name, src.read_bytes()))
    tqdm.write(f"sweep: best lr {best['lr']} (val acc {100 * best['val_acc']:.2f}%, test acc "
               f"{100 * best['test_acc']:.2f}%); copied to {root}", file=sys.stderr)
    return {"best_lr": best["lr"], "best_run": best["out"]}


def _table(root: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A family's Table 3 (ours beside the paper's) at the root, from the finished runs."""
    from .evaluate import write_table

    done = [r["out"] for r in results if r.get("status") == "done"]
    if done:
        rundir.guarded(root, lambda: write_table(done, root, echo=False))
    tqdm.write(f"family: {len(done)} of {len(results)} nets trained; Table 3 in {root / 'table3.md'}", file=sys.stderr)
    return {"table": str(root / "table3.md") if done else None}
