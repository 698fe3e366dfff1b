"""The training loop: the LR the optimizer actually steps with (not ``lr_at`` alone), what an epoch counts, and
when the step model is compiled.

Tiny CPU runs (Strided-CNN-A on a 256-image random .npz, 4 steps per epoch), each a second or two.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import runlog
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from tqdm import tqdm

from allconv import train as T
from allconv.config import lr_at
from allconv.device import Dist


@pytest.fixture
def npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """256 random 32x32 training images and 64 test images; the array cache kept in the temp dir."""
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    path = tmp_path / "random.npz"
    np.savez(path, x_train=rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), y_train=np.arange(256) % 10,
             x_test=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), y_test=np.arange(64) % 10)
    return str(path)


@pytest.mark.parametrize("protocol", ["fast", "paper"])  # one-cycle and step schedules
def test_optimizer_steps_with_the_schedule_at_each_fractional_epoch(npz: str, tmp_path: Path, protocol: str) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", protocol=protocol, data=npz, epochs=2, batch_size=32, lr=0.1,
                        train_limit=128, val_size=64, test_limit=64, device="cpu", quiet=True,
                        out=str(tmp_path / "run"))
    used: list[list[float]] = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: used.append(
        [g["lr"] for g in opt.param_groups]))
    try:
        r = T.train(cfg)
    finally:
        hook.remove()
    assert r["status"] == "done"
    resolved, steps = cfg.resolved(), 128 // 32
    want = [lr_at(resolved, e + i / steps) for e in range(2) for i in range(steps)]
    assert len(set(want)) > 2  # the schedule moves within these steps, so an offset shows
    assert len(used) == len(want) and all(len(set(lrs)) == 1 for lrs in used), used
    assert [lrs[0] for lrs in used] == pytest.approx(want, rel=1e-12, abs=0), (
        "the loop's learning rate at step i of epoch e is not lr_at(cfg, e + i / steps)")


def test_an_epoch_counts_each_image_once_and_the_run_its_own_time(npz: str, tmp_path: Path) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=1, batch_size=32, lr=0.05, train_limit=128,
                        val_size=64, test_limit=64, device="cpu", amp="off", quiet=True, out=str(tmp_path / "run"))
    run = T.Run(cfg.resolved(), tmp_path / "run")
    loss, acc, seen = run.train_epoch(None)
    assert seen == 128 and acc * 128 == pytest.approx(round(acc * 128), abs=1e-9)
    assert 0 <= acc < 0.5 and 1 < loss < 10  # random labels: chance accuracy (0.1) and a mean cross-entropy near 2.3
    t0 = time.perf_counter()
    run.fit()
    h, elapsed = run.history[-1], time.perf_counter() - t0
    assert 0 < h["wall_s"] <= h["epoch_s"] + 0.01 <= elapsed + 0.02  # the wall clock starts at 0 with the run
    assert h["img_per_s"] * h["epoch_s"] == pytest.approx(128, rel=0.1)
    for key, digits in (("train_loss", 5), ("train_acc", 5), ("epoch_s", 2), ("img_per_s", 1), ("wall_s", 2)):
        assert round(h[key], digits) == h[key], key  # the record's precision
    m = run.meta("done").metrics
    assert (m["wall_s"], m["img_per_s"], m["train_loss"]) == (round(run.wall, 1), h["img_per_s"], h["train_loss"])
    assert m["test_err"] == round(1 - m["test_acc"], 5) and m["precision"] == "fp32"
    run.history = [dict(h, img_per_s=100.0), dict(h, img_per_s=100.25)]
    assert run.meta("done").metrics["img_per_s"] == 100.1  # the epochs' mean, to 0.1 image/s


def test_test_every_measures_the_test_split_on_those_epochs_and_the_last(npz: str, tmp_path: Path) -> None:
    for every, measured in ((0, [3]), (2, [2, 3])):
        cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=3, batch_size=64, lr=0.05, train_limit=64,
                            val_size=64, test_limit=64, test_every=every, device="cpu", quiet=True,
                            out=str(tmp_path / f"every{every}"))
        r = T.train(cfg)
        history = runlog.history(tmp_path / f"every{every}")
        assert [h["epoch"] for h in history if h["test_acc"] is not None] == measured
    rates = [json.loads(line)["img_per_s"] for line in (tmp_path / "every2" / "metrics.jsonl").read_text().splitlines()]
    assert len(rates) == 3 and r["img_per_s"] == round(sum(rates) / 3, 1)  # the run's rate: the epochs' mean


def test_ema_weights_follow_the_net_at_the_decay_and_are_what_is_evaluated(npz: str, tmp_path: Path) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=1, batch_size=64, lr=0.05, train_limit=64,
                        val_size=64, test_limit=64, ema=0.9, batchnorm=True, device="cpu", quiet=True,
                        out=str(tmp_path / "run"))
    run = T.Run(cfg.resolved(), tmp_path / "run")
    assert run.eval_net is run.ema and run.ema is not run.net
    with torch.no_grad():
        for p in run.ema.parameters():
            p.zero_()
        for b in run.net.buffers():
            b.fill_(3)
    run._update_ema()
    for e, p in zip(run.ema.parameters(), run.net.parameters()):
        assert torch.allclose(e, 0.1 * p, rtol=1e-6, atol=1e-7)  # 0.9 * old (zero) + 0.1 * the net's
    assert all((b == 3).all() for b in run.ema.buffers())  # BN statistics copied, not averaged


@pytest.mark.parametrize("flag, device, compiled", [("on", "cpu", True), ("on", "cuda", True), ("auto", "cpu", False),
                                                    ("auto", "cuda", True), ("off", "cpu", False),
                                                    ("off", "cuda", False)])
def test_the_step_model_is_compiled_when_asked_or_auto_on_a_gpu(flag: str, device: str, compiled: bool) -> None:
    run = SimpleNamespace(cfg=T.TrainConfig(compile=flag), device=torch.device(device), dd=Dist())
    net = nn.Linear(2, 2)
    wrapped = T.Run._wrap(run, net)  # torch.compile is lazy: nothing compiles until the first call
    assert (wrapped is not net) == compiled and isinstance(wrapped, nn.Module)


def _steps_run(npz: str, tmp_path: Path, lr: float = 0.05) -> T.Run:
    """A run of 60 steps per epoch (120 images in batches of 2)."""
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=1, batch_size=2, lr=lr, train_limit=120,
                        val_size=64, test_limit=64, device="cpu", quiet=True, out=str(tmp_path / "run"))
    return T.Run(cfg.resolved(), tmp_path / "run")


@pytest.mark.parametrize("world", [1, 2])
def test_progress_syncs_every_25_steps_and_at_the_end(npz: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      world: int) -> None:
    """The loss is read from the device (a host sync) only every 25 steps and after the last, never per step; the
    rate shown is the whole job's (as rank 0 of 2, the other rank's sums stand in as equal to this one's)."""
    real, steps = T.Run._progress, []

    def progress(self: T.Run, bar: tqdm, step: int, *args: object) -> None:
        steps.append(step)
        real(self, bar, step, *args)

    monkeypatch.setattr(T.Run, "_progress", progress)
    run = _steps_run(npz, tmp_path)
    run.dd = Dist(rank=0, world=world)
    monkeypatch.setattr(T.dist, "all_reduce", lambda t: t.mul_(world))
    monkeypatch.setattr(T, "time", SimpleNamespace(perf_counter=itertools.count(1).__next__))  # a tick a reading
    with tqdm(total=60, file=io.StringIO()) as bar:
        assert run.train_epoch(bar)[2] == 120
        assert steps == [25, 50, 60] and bar.n == 60
        shown = dict(kv.split("=") for kv in bar.postfix.split(", "))
        assert 0 < float(shown["loss"]) < 10 and 0 <= float(shown["acc"]) <= 1  # means, not sums
        assert shown["img_s"] == "40"  # 120 images in 3 ticks (one per reading: start, steps 25, 50 and 60)


def test_without_a_bar_divergence_is_checked_every_25_steps(npz: str, tmp_path: Path) -> None:
    """Logits turn NaN at step 30: the check at step 50 (not every step, nor at 25) stops the epoch."""
    assert _steps_run(npz, tmp_path / "fine").train_epoch(None)[2] == 120  # finite: no check raises
    run, calls = _steps_run(npz, tmp_path / "nan"), []

    def nan_from_step_30(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        logits = run.net(x)
        return logits * float("nan") if len(calls) >= 30 else logits

    run.step_model = nan_from_step_30
    with pytest.raises(T.Diverged, match=r"^loss is nan at step 50$"):
        run.train_epoch(None)


def test_without_quiet_each_epoch_shows_its_bar_and_one_line(npz: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=2, batch_size=64, lr=0.05, train_limit=64,
                        val_size=64, test_limit=64, device="cpu", out=str(tmp_path / "run"))
    T.train(cfg)
    err = capsys.readouterr().err
    for epoch in (1, 2):  # one step each; the bar stays on screen when done
        assert re.search(rf"epoch {epoch}/2: 100%[^\r\n]*\| 1/1 \[[^\r\n]*\]\n", err), err
    lines = [line for line in err.splitlines() if re.match(r"(epoch \d/2: loss|done:)", line)]
    assert len(lines) == 3, err
    assert re.fullmatch(r"epoch 1/2: loss \d+\.\d{4}  train acc \d+\.\d\d%  val acc \d+\.\d\d%  [\d,]+ img/s  "
                        r"\d+\.\ds", lines[0]), lines[0]  # the test split is measured in the last epoch only
    assert re.search(r"val acc \d+\.\d\d%  test acc \d+\.\d\d%  ", lines[1]), lines[1]
    assert lines[2].startswith("done: val acc ") and lines[2].endswith(f"checkpoint {tmp_path / 'run'}"
                                                                      "/model.safetensors"), lines[2]


def test_without_a_validation_split_val_acc_is_none_not_zero(npz: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=1, batch_size=64, lr=0.05, train_limit=64,
                        val_size=0, test_limit=64, device="cpu", out=str(tmp_path / "run"))
    r = T.train(cfg)
    assert r["val_acc"] is None and r["test_acc"] is not None and runlog.history(tmp_path / "run")[0]["val_acc"] is None
    assert "  val acc -  " in capsys.readouterr().err


def test_stop_after_counts_the_epochs_it_trains(npz: str, tmp_path: Path) -> None:
    cfg = T.TrainConfig(model="strided-cnn-a", data=npz, epochs=3, batch_size=64, lr=0.05, train_limit=64,
                        val_size=64, test_limit=64, device="cpu", quiet=True, out=str(tmp_path / "run"))
    r = T.train(cfg, stop_after=2)
    assert (r["status"], r["epoch"]) == ("stopped", 2) and r["test_acc"] is None  # the test split waits for the end
    meta = tmp_path / "run" / "meta.json"
    assert json.loads(meta.read_text())["metrics"]["status"] == "running"  # the saved model: a run to resume
    assert T.resume(tmp_path / "run")["status"] == "done" == json.loads(meta.read_text())["metrics"]["status"]


def test_resume_takes_quiet_from_its_flag_and_exits_1_when_the_run_diverges(npz: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = ["--model", "strided-cnn-a", "--data", npz, "--epochs", "3", "--batch-size", "64", "--train-limit", "64",
            "--val-size", "64", "--test-limit", "64", "--device", "cpu", "--out", str(out)]
    assert T.main(args + ["--stop-after", "1"]) == 0 and "epoch 1/3" in capsys.readouterr().err  # not quiet
    assert T.main(["--resume", str(out), "--stop-after", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet on the resume silences a run started without it

    def diverge(self: T.Run, bar: object) -> None:
        raise T.Diverged("loss is nan at step 1")

    monkeypatch.setattr(T.Run, "train_epoch", diverge)
    assert T.main(["--resume", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith("diverged: strided-cnn-a with lr ")  # said even with --quiet
