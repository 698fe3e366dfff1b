"""Training: ``allconv-train``. One readable loop (airbench style) that is fast on a GPU and exact on a CPU.

The dataset lives on the device as uint8; each batch is gathered, normalized and augmented there. Every random draw
of epoch ``e`` (permutation, augmentation, dropout) is seeded from ``(seed, e)``, so a run is a pure function of its
config: a run killed after epoch k and resumed ends bit-identical (on CPU) to one never interrupted. Under ``torchrun``
each rank takes its slice of the same global batch (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import checkpoint as ckpt
from . import data as datamod
from . import rundir, warmstart
from .augment import flip_translate
from .config import PROTOCOLS, TrainConfig, lr_at
from .device import Dist, native_bf16, pick_device, resolve_amp, setup_distributed
from .errors import AllconvError
from .evaluate import accuracy
from .interrupt import Interrupted, catching, exit_status, signal_behind
from .models import check_input_size, create, names, num_parameters
from .plots import training_curves
from .preprocess import Preprocess
from .trainargs import parse_args

__all__ = ["Data", "Diverged", "Interrupted", "PROTOCOLS", "Run", "TrainConfig", "lr_at", "main", "resume", "train"]


class Diverged(Exception):
    """The loss became NaN or infinite."""


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
    check_input_size(cfg.model, *s.x_train.shape[-2:])
    x_tr, y_tr, x_val, y_val = datamod.split_validation(s.x_train, s.y_train, cfg.val_size, cfg.seed)
    if cfg.train_limit:
        x_tr, y_tr = x_tr[:cfg.train_limit], y_tr[:cfg.train_limit]
    x_te, y_te = (s.x_test[:cfg.test_limit], s.y_test[:cfg.test_limit]) if cfg.test_limit else (s.x_test, s.y_test)
    pre = Preprocess.fit(cfg.preprocess, x_tr).to(device)
    d = Data(*(t.to(device) for t in (x_tr, y_tr, x_val, y_val, x_te, y_te)), classes=list(s.classes), name=s.name)
    return d, pre


def make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov, L2 weight decay) or AdamW (beta1 = momentum, decoupled decay)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999),
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def epoch_seed(cfg: TrainConfig, epoch: int, salt: int) -> int:
    return (cfg.seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63)


def salt(stream: str, rank: int) -> int:
    """``epoch_seed``'s salt for one random stream: the batch order is one permutation for every rank, dropout and
    augmentation one stream per rank, and no two streams share a salt (rank 0 keeps 1, 2, 3, as runs always had)."""
    return {"order": 1, "dropout": 2 + 2 * rank, "augment": 3 + 2 * rank}[stream]


def batches(cfg: TrainConfig, n: int, epoch: int, dd: Dist, device: torch.device) -> list[torch.Tensor]:
    """This rank's index slices of one seeded permutation, in global batches of ``cfg.batch_size``."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg, epoch, salt("order", dd.rank)))
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
        self.amp = resolve_amp(cfg.amp, self.device)
        self.dd = setup_distributed(self.device)
        if self.dd.main and not resume:
            rundir.start(out, dataclasses.asdict(cfg))
        self.data, self.pre = prepare_data(cfg, self.device)
        torch.manual_seed(cfg.seed)
        self.net = create(cfg.model, len(self.data.classes), cfg.dropout, cfg.batchnorm).to(self.device)
        self.init = warmstart.init_from(self.net, cfg.init, self.pre(self.data.x_train[:500])) if cfg.init and \
            not resume else None
        self.frozen = warmstart.frozen_layers(self.net, cfg.freeze)
        warmstart.freeze(self.net, self.frozen)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg, self.net)
        self.ema = create(cfg.model, len(self.data.classes), False, cfg.batchnorm).to(self.device) if cfg.ema else None
        if self.ema is not None:
            self.ema.load_state_dict(self.net.state_dict())
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.wall = 0.0
        self.commit = ckpt.git_commit()  # the code that starts the run (a resume keeps the first one)
        if resume:
            self._restore()
        self.step_model = self._wrap(self.net)

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
        torch.manual_seed(epoch_seed(cfg, e, salt("dropout", self.dd.rank)))
        aug_gen = torch.Generator(self.device).manual_seed(epoch_seed(cfg, e, salt("augment", self.dd.rank)))
        idx_list = batches(cfg, len(d.y_train), e, self.dd, self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        self.net.train()
        warmstart.frozen_eval(self.net, self.frozen)
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
        """Accuracy in fp32 whatever the training precision, so a reported figure never depends on ``--amp``."""
        if len(y) == 0:
            return None
        return accuracy(self.eval_net, x, y, self.pre, tta=self.cfg.tta)

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.amp else "fp32"

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or ``stop_after`` more epochs), committing a resumable checkpoint every epoch."""
        cfg = self.cfg
        native = "native" if native_bf16(self.device) else "no native bf16"
        self._log(f"{cfg.model}: {num_parameters(self.net):,} parameters, {len(self.data.y_train):,} train / "
                  f"{len(self.data.y_val):,} val / {len(self.data.y_test):,} test images on {self.device}"
                  f"{f' x{self.dd.world}' if self.dd.world > 1 else ''} ({self.precision}; {native}), protocol "
                  f"{cfg.protocol}, lr {cfg.lr}")
        done = 0
        try:
            while self.epoch < cfg.epochs and (stop_after is None or done < stop_after):
                if (result := self._one_epoch()) is not None:
                    return result
                done += 1
        except BaseException as e:  # an interrupt, or what a C extension made of one (see ``interrupt``)
            if (sig := signal_behind(e)) is None:
                raise
            raise Interrupted(self.out, cfg.epochs, sig) from None
        return self._finish()

    def _one_epoch(self) -> dict[str, Any] | None:
        """Train one epoch and commit it; a divergence ends the run (its result is returned)."""
        cfg, t0 = self.cfg, time.perf_counter()
        bar = tqdm(total=max(len(self.data.y_train) // min(cfg.batch_size, len(self.data.y_train)), 1),
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", leave=True, file=sys.stderr,
                   disable=cfg.quiet or not self.dd.main, dynamic_ncols=True)
        try:
            loss, acc, seen = self.train_epoch(bar)
        except Diverged as e:
            return self._diverged(str(e))
        finally:
            bar.close()
        self.wall += time.perf_counter() - t0
        self.epoch += 1
        self._end_epoch(loss, acc, seen, time.perf_counter() - t0)
        return None

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
            val = f"{100 * rec['val_acc']:.2f}%" if rec["val_acc"] is not None else "-"
            tst = f"  test acc {100 * test:.2f}%" if test is not None else ""
            self._log(f"epoch {self.epoch}/{cfg.epochs}: loss {loss:.4f}  train acc {100 * acc:.2f}%  val acc {val}"
                      f"{tst}  {rec['img_per_s']:,.0f} img/s  {secs:.1f}s")

    def meta(self, status: str) -> ckpt.Meta:
        h = self.history[-1] if self.history else {}
        metrics = {"status": status, "val_acc": h.get("val_acc"), "test_acc": h.get("test_acc"),
                   "train_loss": h.get("train_loss"), "wall_s": round(self.wall, 1),
                   "img_per_s": round(sum(x["img_per_s"] for x in self.history) / max(len(self.history), 1), 1),
                   "params": sum(p.numel() for p in self.net.parameters()), "precision": self.precision,
                   **({"init": self.init} if self.init else {}), **({"frozen": self.frozen} if self.frozen else {})}
        if metrics["test_acc"] is not None:
            metrics["test_err"] = round(1 - metrics["test_acc"], 5)
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return ckpt.Meta(model=self.cfg.model, num_classes=len(self.data.classes), classes=self.data.classes,
                         batchnorm=self.cfg.batchnorm, dropout=self.cfg.dropout, preprocess=self.pre.to("cpu"),
                         protocol=self.cfg.protocol, epoch=self.epoch, epochs=self.cfg.epochs, metrics=metrics,
                         history=self.history, data=self.data.name, device=f"{dev} x{self.dd.world}",
                         commit=self.commit, config=dataclasses.asdict(self.cfg))

    def _save(self) -> None:
        """Commit this epoch (see ``rundir``), then redraw the curves (derived, so not part of the commit)."""
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for i, p in enumerate(self.net.parameters()):  # SGD's momentum, AdamW's moments and step count
            for key, value in self.opt.state.get(p, {}).items():
                if torch.is_tensor(value):
                    state["momentum." + str(i) if key == "momentum_buffer" else f"opt.{i}.{key}"] = value
        meta = self.meta("done" if self.epoch == self.cfg.epochs else "running")
        rundir.commit(self.out, self.eval_net, meta, state)
        rundir.guarded(self.out, lambda: training_curves(self.history, self.out / "curves.png",
                                                         f"{self.cfg.model} ({self.cfg.protocol})"))

    def _restore(self) -> None:
        meta, _ = ckpt.load_meta(self.out)
        self.init = meta.metrics.get("init")
        state = rundir.read_state(self.out, meta.epoch)
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        for i, p in enumerate(self.net.parameters()):
            if f"momentum.{i}" in state:
                self.opt.state[p]["momentum_buffer"] = state[f"momentum.{i}"].to(self.device)
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if f"opt.{i}.{key}" in state:
                    value = state[f"opt.{i}.{key}"]
                    self.opt.state[p][key] = value if key == "step" else value.to(self.device)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.load(self.out)[0].state_dict())
        self.epoch, self.history, self.commit = meta.epoch, meta.history, meta.commit or self.commit
        self.wall = meta.metrics.get("wall_s") or 0.0
        if self.dd.main:  # derived files may lag the model file after a kill: rewrite them from it
            rundir.restored(self.out, meta)

    def _diverged(self, why: str) -> dict[str, Any]:
        msg = f"diverged: {self.cfg.model} with lr {self.cfg.lr} in epoch {self.epoch + 1} ({why}); run stopped"
        if self.dd.main:  # reported even with --quiet: a sweep's log must say why a learning rate has no result
            tqdm.write(msg, file=sys.stderr)
            rundir.guarded(self.out, lambda: rundir.mark_diverged(self.out, msg))
        return {"status": "diverged", "lr": self.cfg.lr, "message": msg, "out": str(self.out)}

    def _finish(self) -> dict[str, Any]:
        m = self.meta("done" if self.epoch == self.cfg.epochs else "stopped").metrics
        if self.dd.main and self.epoch == self.cfg.epochs:
            te = m["test_acc"]
            self._log(f"done: val acc {100 * (m['val_acc'] or 0):.2f}%  test acc {100 * te:.2f}% (error "
                      f"{100 * (1 - te):.2f}%) in {m['wall_s']:.0f}s; checkpoint {self.out / ckpt.MODEL_FILE}")
        return {**m, "lr": self.cfg.lr, "epoch": self.epoch, "out": str(self.out)}

    def _log(self, msg: str) -> None:
        if self.dd.main and not self.cfg.quiet:
            tqdm.write(msg, file=sys.stderr)


def default_out(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model}-{cfg.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run one configuration; returns its final metrics (``status``: done, stopped or diverged)."""
    cfg = cfg.resolved()
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    rundir.refuse_existing(out)
    return Run(dataclasses.replace(cfg, out=str(out)), out).fit(stop_after)


def resume(run_dir: str | Path, stop_after: int | None = None, quiet: bool | None = None) -> dict[str, Any]:
    """Continue an interrupted run exactly where it stopped (same config, schedule, RNG, epoch). A run killed
    before its first epoch finished starts that epoch again."""
    out = Path(run_dir)
    if (why := rundir.diverged(out)) is not None:
        raise AllconvError(f"{out} diverged ({why.split('(')[-1].rstrip(')')}); start a new run with a lower --lr")
    if (out / ckpt.MODEL_FILE).exists():
        meta, _ = ckpt.load_meta(out)
        config, started = meta.config, True
    elif (out / rundir.RUN_FILE).is_file():
        config, started = rundir.read_config(out), False
    else:
        raise AllconvError(f"no allconv run in {out} (no {ckpt.MODEL_FILE} or {rundir.RUN_FILE}); pass the --out "
                           "directory of an allconv-train run")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known})
    cfg = dataclasses.replace(cfg, out=str(out), quiet=cfg.quiet if quiet is None else quiet).resolved()
    if started and meta.epoch >= cfg.epochs:
        rundir.restored(out, meta)  # a kill in the last save may have left derived files behind: repair them
        raise AllconvError(f"{out} already finished all {cfg.epochs} epochs; nothing to resume")
    return Run(cfg, out, resume=started).fit(stop_after)


def main(argv: Sequence[str] | None = None) -> int:
    """``allconv-train``: exit 0 done, 1 diverged, 2 bad input or disk, 130/143 interrupted (resumable)."""
    args = parse_args(argv)
    try:
        with catching():
            return _run_command(args)
    except (Interrupted, KeyboardInterrupt) as e:  # the latter outside a run's epochs (loading data, say)
        return exit_status(e, "interrupted before the first epoch began; nothing to resume: run the command again")
    except AllconvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_command(args: argparse.Namespace) -> int:
    """What ``main`` runs once the arguments parse: a resume, a family, a sweep or one net."""
    from .runset import family, is_runset, resume_runset, sweep

    if args.threads is not None and args.threads < 1 or args.stop_after is not None and args.stop_after < 1:
        raise AllconvError("--threads and --stop-after must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        r = (resume_runset if is_runset(args.resume) else resume)(args.resume, args.stop_after, args.quiet or None)
        return 1 if r.get("status") == "diverged" else 0
    models = names() if args.model == "all" else args.model.split(",")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                         if hasattr(args, f.name) and f.name != "model"}, model=models[0])
    if len(models) > 1:
        if args.lr_sweep:
            raise AllconvError("--lr-sweep takes one --model; sweep each net on its own")
        r = family(cfg, models)
        return 1 if any(x.get("status") == "diverged" for x in r["runs"]) else 0
    if args.lr_sweep:
        sweep(cfg)
        return 0
    r = train(cfg, args.stop_after)
    return 1 if r.get("status") == "diverged" else 0


if __name__ == "__main__":
    sys.exit(main())
