"""The training loop: the LR the optimizer actually steps with (not ``lr_at`` alone), what an epoch counts, and
when the step model is compiled.

Tiny CPU runs (Strided-CNN-A on a 256-image random .npz, 4 steps per epoch), each a second or two.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

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
                        val_size=64, test_limit=64, device="cpu", quiet=True, out=str(tmp_path / "run"))
    run = T.Run(cfg.resolved(), tmp_path / "run")
    loss, acc, seen = run.train_epoch(None)
    assert seen == 128 and acc * 128 == pytest.approx(round(acc * 128), abs=1e-9) and loss > 0
    run.fit()
    h = run.history[-1]
    assert 0 < h["wall_s"] <= h["epoch_s"] + 0.01  # the wall clock starts at 0 with the run, and one epoch ran


@pytest.mark.parametrize("flag, device, compiled", [("on", "cpu", True), ("on", "cuda", True), ("auto", "cpu", False),
                                                    ("auto", "cuda", True), ("off", "cpu", False),
                                                    ("off", "cuda", False)])
def test_the_step_model_is_compiled_when_asked_or_auto_on_a_gpu(flag: str, device: str, compiled: bool) -> None:
    run = SimpleNamespace(cfg=T.TrainConfig(compile=flag), device=torch.device(device), dd=Dist())
    net = nn.Linear(2, 2)
    wrapped = T.Run._wrap(run, net)  # torch.compile is lazy: nothing compiles until the first call
    assert (wrapped is not net) == compiled and isinstance(wrapped, nn.Module)
