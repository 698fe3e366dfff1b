"""Training: ``allconv-train``. One readable loop (airbench style) that is fast on a GPU and exact on a CPU.

The dataset lives on the device as uint8; each batch is gathered, normalized and augmented there. Every random draw
of epoch ``e`` (permutation, augmentation, dropout) is seeded from ``(seed, e)``, so a run is a pure function of its
config: a run killed after epoch k and resumed ends bit-identical (on CPU) to one never interrupted. Under ``torchrun``
each rank takes its slice of the same global batch (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import checkpoint as ckpt
from . import data as datamod
from .augment import flip_translate
from .errors import AllconvError
from .evaluate import accuracy
from .models import create, names, num_parameters
from .paper import PAPER_EPOCHS, PAPER_LRS, PAPER_MILESTONES
from .plots import training_curves
from .preprocess import Preprocess

PROTOCOLS: dict[str, dict[str, Any]] = {
    # The paper (section 3.2): SGD, momentum 0.9, weight decay 0.001, dropout, LR x0.1 at 200/250/300 of 350 epochs.
    "paper": dict(epochs=PAPER_EPOCHS, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=1e-3,
                  label_smoothing=0.0, augment="none", ema=0.0, tta=False, dropout=True, batchnorm=False,
                  schedule="step", warmup=0.0),
    # Best accuracy per second for these exact nets: one-cycle LR, big batches, flips+translations, smoothing, TTA.
    # BatchNorm is on: without it (and without dropout) the ReLU on the class conv dies within a few dozen steps at
    # any fast learning rate (all ten class maps go negative, the loss sticks at ln 10).
    "fast": dict(epochs=40, batch_size=512, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 label_smoothing=0.2, augment="flip-translate", ema=0.0, tta=True, dropout=False, batchnorm=True,
                 schedule="onecycle", warmup=0.15),
}


@dataclass
class TrainConfig:
    """Everything a run depends on; ``None`` fields take the protocol's default."""

    model: str = "all-cnn-c"
    protocol: str = "fast"
    data: str | None = None
    download: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    augment: str | None = None
    translate: int = 2
    ema: float | None = None
    tta: bool | None = None
    dropout: bool | None = None
    batchnorm: bool | None = None
    schedule: str | None = None
    warmup: float | None = None
    preprocess: str = "standardize"
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"
    amp: str = "auto"
    test_every: int = 0
    out: str | None = None
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every protocol default filled in."""
        if self.protocol not in PROTOCOLS:
            raise AllconvError(f"unknown protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if self.model not in names():
            raise AllconvError(f"unknown model {self.model!r}; choose one of: {', '.join(names())}")
        filled = {k: v for k, v in PROTOCOLS[self.protocol].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        if cfg.augment not in ("none", "flip-translate"):
            raise AllconvError(f"unknown augmentation {cfg.augment!r}; choose none or flip-translate")
        if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
            raise AllconvError("epochs, batch size and learning rate must be positive")
        return cfg


class Diverged(Exception):
    """The loss became NaN or infinite."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AllconvError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
        if "LOCAL_RANK" in os.environ and name == "cuda":
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    elif name != "cpu":
        raise AllconvError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def lr_at(cfg: TrainConfig, t: float) -> float:
    """Learning rate at fractional epoch ``t``: the paper's step schedule (milestones scaled to the run's length)
    or a one-cycle (linear warm-up, linear decay to zero)."""
    if cfg.schedule == "step":
        drops = sum(t >= m * cfg.epochs / PAPER_EPOCHS for m in PAPER_MILESTONES)
        return cfg.lr * 0.1 ** drops
    frac = t / cfg.epochs
    if frac < cfg.warmup:
        return cfg.lr * frac / cfg.warmup
    return cfg.lr * max(0.0, (1 - frac) / (1 - cfg.warmup))


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    name: str


def prepare_data(cfg: TrainConfig, device: torch.device) -> tuple[Data, Preprocess]:
    """Load, split off the seeded validation set, fit preprocessing on the training split, move all to the device."""
    s = datamod.load(cfg.data, download=cfg.download)
    x_tr, y_tr, x_val, y_val = datamod.split_validation(s.x_train, s.y_train, cfg.val_size, cfg.seed)
    if cfg.train_limit:
        x_tr, y_tr = x_tr[:cfg.train_limit], y_tr[:cfg.train_limit]
    x_te, y_te = (s.x_test[:cfg.test_limit], s.y_test[:cfg.test_limit]) if cfg.test_limit else (s.x_test, s.y_test)
    pre = Preprocess.fit(cfg.preprocess, x_tr).to(device)
    d = Data(*(t.to(device) for t in (x_tr, y_tr, x_val, y_val, x_te, y_te)), classes=list(s.classes), name=s.name)
    return d, pre


def epoch_seed(cfg: TrainConfig, epoch: int, salt: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63)


def batches(cfg: TrainConfig, n: int, epoch: int, dd: Dist, device: torch.device) -> list[torch.Tensor]:
    """This rank's index slices of one seeded permutation, in global batches of ``cfg.batch_size``."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg, epoch, 1))
    perm = torch.randperm(n, generator=gen).to(device)
    bs = min(cfg.batch_size, n)
    if bs % dd.world:
        raise AllconvError(f"batch size {bs} is not divisible by the {dd.world} processes; change --batch-size")
    per = bs // dd.world
    return [perm[i + dd.rank * per: i + (dd.rank + 1) * per] for i in range(0, n - bs + 1, bs)]


class Run:
    """One training run: model, optimizer, data, history; ``fit()`` runs it to the end (or resumes it)."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False) -> None:
        self.cfg, self.out = cfg, out
        self.device = pick_device(cfg.device)
        self.dd = setup_distributed(self.device)
        self.data, self.pre = prepare_data(cfg, self.device)
        torch.manual_seed(cfg.seed)
        self.net = create(cfg.model, len(self.data.classes), cfg.dropout, cfg.batchnorm).to(self.device)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
        self.ema = create(cfg.model, len(self.data.classes), False, cfg.batchnorm).to(self.device) if cfg.ema else None
        if self.ema is not None:
            self.ema.load_state_dict(self.net.state_dict())
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.wall = 0.0
        if resume:
            self._restore()
        self.step_model = self._wrap(self.net)
        self.amp = self.device.type == "cuda" if cfg.amp == "auto" else cfg.amp == "on"

    def _wrap(self, net: nn.Module) -> nn.Module:
        model: nn.Module = net
        if self.dd.world > 1:
            model = nn.parallel.DistributedDataParallel(net, device_ids=[self.device.index] if self.device.index
                                                        is not None else None)
        if self.cfg.compile == "on" or (self.cfg.compile == "auto" and self.device.type == "cuda"):
            model = torch.compile(model)
        return model

    # ---- one epoch -------------------------------------------------------------------------------------------
    def train_epoch(self, bar: tqdm | None) -> tuple[float, float, int]:
        cfg, d, e = self.cfg, self.data, self.epoch
        torch.manual_seed(epoch_seed(cfg, e, 2 + self.dd.rank))  # dropout
        aug_gen = torch.Generator(self.device).manual_seed(epoch_seed(cfg, e, 3 + self.dd.rank))
        idx_list = batches(cfg, len(d.y_train), e, self.dd, self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        self.net.train()
        for i, idx in enumerate(idx_list):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(cfg, e + i / len(idx_list))
            x = self.pre(d.x_train[idx])
            if cfg.augment == "flip-translate":
                x = flip_translate(x, aug_gen, cfg.translate)
            else:
                x = x.contiguous(memory_format=torch.channels_last)
            y = d.y_train[idx]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                self._update_ema()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if bar is not None and (i % 25 == 24 or i == len(idx_list) - 1):
                self._progress(bar, i + 1, loss_sum, correct, seen, t0)
            elif i % 25 == 24 and not torch.isfinite(loss_sum):
                raise Diverged(f"loss is {loss_sum.item()} at step {i + 1}")
        totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=self.device)])
        if self.dd.world > 1:
            dist.all_reduce(totals)
        loss_sum, n_correct, n_seen = totals.tolist()
        if not math.isfinite(loss_sum):
            raise Diverged(f"loss is {loss_sum} at the end of the epoch")
        return loss_sum / n_seen, n_correct / n_seen, int(n_seen)

    def _progress(self, bar: tqdm, steps: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                  t0: float) -> None:
        loss = loss_sum.item() / seen  # a host sync every 25 steps, never per step
        if not math.isfinite(loss):
            raise Diverged(f"loss is {loss} at step {steps}")
        rate = seen * self.dd.world / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:,.0f}")
        bar.update(steps - bar.n)

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, list(self.net.parameters()), 1 - self.cfg.ema)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    # ---- the run ---------------------------------------------------------------------------------------------
    @property
    def eval_net(self) -> nn.Module:
        return self.ema if self.ema is not None else self.net

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        if len(y) == 0:
            return None
        return accuracy(self.eval_net, x, y, self.pre, tta=self.cfg.tta, amp=self.amp)

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or ``stop_after`` more epochs), checkpointing after every epoch."""
        cfg = self.cfg
        if self.dd.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log(f"{cfg.model}: {num_parameters(self.net):,} parameters, {len(self.data.y_train):,} train / "
                      f"{len(self.data.y_val):,} val / {len(self.data.y_test):,} test images on {self.device}"
                      f"{f' x{self.dd.world}' if self.dd.world > 1 else ''}, protocol {cfg.protocol}, lr {cfg.lr}")
        done = 0
        while self.epoch < cfg.epochs and (stop_after is None or done < stop_after):
            t0 = time.perf_counter()
            bar = tqdm(total=max(len(self.data.y_train) // min(cfg.batch_size, len(self.data.y_train)), 1),
                       desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", leave=True, file=sys.stderr,
                       disable=cfg.quiet or not self.dd.main, dynamic_ncols=True)
            try:
                loss, acc, seen = self.train_epoch(bar)
            except Diverged as e:
                bar.close()
                return self._diverged(str(e))
            bar.close()
            self.wall += time.perf_counter() - t0
            self.epoch += 1
            done += 1
            self._end_epoch(loss, acc, seen, time.perf_counter() - t0)
        return self._finish()

    def _end_epoch(self, loss: float, acc: float, seen: int, secs: float) -> None:
        cfg = self.cfg
        last = self.epoch == cfg.epochs
        test = self.evaluate(self.data.x_test, self.data.y_test) if last or (
            cfg.test_every and self.epoch % cfg.test_every == 0) else None
        rec = {"epoch": self.epoch, "train_loss": round(loss, 5), "train_acc": round(acc, 5),
               "val_acc": self.evaluate(self.data.x_val, self.data.y_val), "test_acc": test,
               "lr": lr_at(cfg, self.epoch), "epoch_s": round(secs, 2), "img_per_s": round(seen / secs, 1),
               "wall_s": round(self.wall, 2)}
        self.history.append(rec)
        if self.dd.main:
            self._save()
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            training_curves(self.history, self.out / "curves.png", f"{cfg.model} ({cfg.protocol})")
            val = f"{100 * rec['val_acc']:.2f}%" if rec["val_acc"] is not None else "-"
            tst = f"  test acc {100 * test:.2f}%" if test is not None else ""
            self._log(f"epoch {self.epoch}/{cfg.epochs}: loss {loss:.4f}  train acc {100 * acc:.2f}%  val acc {val}"
                      f"{tst}  {rec['img_per_s']:,.0f} img/s  {secs:.1f}s")

    def meta(self, status: str) -> ckpt.Meta:
        h = self.history[-1] if self.history else {}
        metrics = {"status": status, "val_acc": h.get("val_acc"), "test_acc": h.get("test_acc"),
                   "train_loss": h.get("train_loss"), "wall_s": round(self.wall, 1),
                   "img_per_s": round(sum(x["img_per_s"] for x in self.history) / max(len(self.history), 1), 1),
                   "params": num_parameters(self.net)}
        if metrics["test_acc"] is not None:
            metrics["test_err"] = round(1 - metrics["test_acc"], 5)
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return ckpt.Meta(model=self.cfg.model, num_classes=len(self.data.classes), classes=self.data.classes,
                         batchnorm=self.cfg.batchnorm, dropout=self.cfg.dropout, preprocess=self.pre.to("cpu"),
                         protocol=self.cfg.protocol, epoch=self.epoch, epochs=self.cfg.epochs, metrics=metrics,
                         history=self.history, data=self.data.name, device=f"{dev} x{self.dd.world}",
                         commit=ckpt.git_commit(), config=dataclasses.asdict(self.cfg))

    def _save(self) -> None:
        status = "done" if self.epoch == self.cfg.epochs else "running"
        ckpt.save(self.out, self.eval_net, self.meta(status))
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for i, p in enumerate(self.net.parameters()):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                state[f"momentum.{i}"] = buf
        ckpt.save_tensors(self.out / ckpt.STATE_FILE, state, {"format": ckpt.FORMAT, "epoch": str(self.epoch)})

    def _restore(self) -> None:
        meta, _ = ckpt.load_meta(self.out)
        state, header = ckpt.read_tensors(self.out / ckpt.STATE_FILE)
        if int(header.get("epoch", -1)) != meta.epoch:
            raise AllconvError(f"{self.out}: state and model files disagree on the epoch; the run is damaged")
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        for i, p in enumerate(self.net.parameters()):
            if f"momentum.{i}" in state:
                self.opt.state[p]["momentum_buffer"] = state[f"momentum.{i}"].to(self.device)
        if self.ema is not None:
            ema_state = ckpt.load(self.out)[0].state_dict()
            self.ema.load_state_dict(ema_state)
        self.epoch, self.history = meta.epoch, meta.history
        self.wall = meta.metrics.get("wall_s") or 0.0
        if self.dd.main:  # drop metric lines written after the last checkpoint
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            ckpt.write_bytes(self.out / "metrics.jsonl", lines.encode())

    def _diverged(self, why: str) -> dict[str, Any]:
        msg = f"diverged: {self.cfg.model} with lr {self.cfg.lr} in epoch {self.epoch + 1} ({why}); run stopped"
        if self.dd.main:  # reported even with --quiet: a sweep's log must say why a learning rate has no result
            tqdm.write(msg, file=sys.stderr)
            ckpt.write_bytes(self.out / "diverged.txt", (msg + "\n").encode())
        return {"status": "diverged", "lr": self.cfg.lr, "message": msg, "out": str(self.out)}

    def _finish(self) -> dict[str, Any]:
        m = self.meta("done" if self.epoch == self.cfg.epochs else "stopped").metrics
        if self.dd.main and self.epoch == self.cfg.epochs:
            te = m["test_acc"]
            self._log(f"done: val acc {100 * (m['val_acc'] or 0):.2f}%  test acc {100 * te:.2f}% (error "
                      f"{100 * (1 - te):.2f}%) in {m['wall_s']:.0f}s; checkpoint {self.out / ckpt.MODEL_FILE}")
        return {**m, "lr": self.cfg.lr, "epoch": self.epoch, "out": str(self.out)}

    def _log(self, msg: str) -> None:
        if not self.cfg.quiet:
            tqdm.write(msg, file=sys.stderr)


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model}-{cfg.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run one configuration; returns its final metrics (``status``: done, stopped or diverged)."""
    cfg = cfg.resolved()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if (out / ckpt.MODEL_FILE).exists():
        raise AllconvError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    return Run(dataclasses.replace(cfg, out=str(out)), out).fit(stop_after)


def resume(run_dir: str | Path, stop_after: int | None = None, quiet: bool | None = None) -> dict[str, Any]:
    """Continue an interrupted run exactly where it stopped (same config, schedule, RNG, epoch)."""
    out = Path(run_dir)
    meta, _ = ckpt.load_meta(out)
    if not (out / ckpt.STATE_FILE).exists():
        raise AllconvError(f"{out} has no {ckpt.STATE_FILE}: it cannot be resumed (was it a shipped checkpoint?)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in meta.config.items() if k in known})
    if quiet is not None:
        cfg = dataclasses.replace(cfg, quiet=quiet)
    if meta.epoch >= cfg.epochs:
        raise AllconvError(f"{out} already finished all {cfg.epochs} epochs; nothing to resume")
    return Run(cfg, out, resume=True).fit(stop_after)


def sweep(cfg: TrainConfig, lrs: Sequence[float] = PAPER_LRS) -> dict[str, Any]:
    """Train once per learning rate; keep the best by validation accuracy (never by test accuracy)."""
    cfg = cfg.resolved()
    root = Path(cfg.out) if cfg.out else default_out(cfg)
    results = []
    for lr in lrs:
        r = train(dataclasses.replace(cfg, lr=lr, out=str(root / f"lr-{lr:g}")))
        results.append(r)
    ok = [r for r in results if r.get("status") == "done" and r.get("val_acc") is not None]
    if not ok:
        raise AllconvError("every learning rate diverged or had no validation set; lower --lr or raise --val-size")
    best = max(ok, key=lambda r: r["val_acc"])
    summary = {"best_lr": best["lr"], "best_run": best["out"], "runs": results}
    ckpt.write_bytes(root / "sweep.json", (json.dumps(summary, indent=1) + "\n").encode())
    for name in (ckpt.MODEL_FILE, "meta.json", "curves.png", "metrics.jsonl"):
        src = Path(best["out"]) / name
        ckpt.write_bytes(root / name, src.read_bytes())
    tqdm.write(f"sweep: best lr {best['lr']} (val acc {100 * best['val_acc']:.2f}%, test acc "
               f"{100 * best['test_acc']:.2f}%); copied to {root}", file=sys.stderr)
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="allconv-train", description="Train one of the paper's 12 nets.")
    ap.add_argument("--model", default="all-cnn-c", help=f"one of: {', '.join(names())}")
    ap.add_argument("--protocol", default="fast", choices=list(PROTOCOLS))
    ap.add_argument("--data", default=None, help="cifar10, cifar100, a .npz, an image-folder dir or archive "
                                                 "(default: CIFAR-10, the offline copy if present)")
    ap.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-sweep", action="store_true", help="train with each of the paper's LRs, keep the best by val")
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--augment", choices=["none", "flip-translate"])
    ap.add_argument("--ema", type=float, help="EMA decay of the weights per step (0: off)")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="mirror test-time averaging")
    ap.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                    help="BatchNorm after every conv (default: on in fast, off in paper)")
    ap.add_argument("--preprocess", default="standardize", choices=["standardize", "zca"])
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--train-limit", type=int, help="use only the first N training images (quick runs)")
    ap.add_argument("--test-limit", type=int, help="evaluate on only the first N test images")
    ap.add_argument("--test-every", type=int, default=0, help="also measure test accuracy every N epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="bf16 autocast (auto: on GPU)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")
    ap.add_argument("--out", help="run directory (default: runs/<model>-<protocol>-<time>)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    ap.add_argument("--stop-after", type=int, help="stop cleanly after this many epochs (continue with --resume)")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.resume:
            r = resume(args.resume, args.stop_after, args.quiet or None)
            return 1 if r.get("status") == "diverged" else 0
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                             if hasattr(args, f.name)})
        if args.lr_sweep:
            sweep(cfg)
            return 0
        r = train(cfg, args.stop_after)
        return 1 if r.get("status") == "diverged" else 0
    except AllconvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
