"""The trainer on CPU: it learns, resumes bit-identically, matches under DDP (2 gloo processes), survives divergence,
and turns bad input into one line. All runs are tiny (Strided-CNN-A, the cheapest net, on a few hundred images)."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import runlog
import torch

from allconv import train as T
from allconv.runset import sweep

TINY = ["--model", "strided-cnn-a", "--batch-size", "64", "--val-size", "64", "--test-limit", "64",
        "--device", "cpu", "--quiet"]


def test_short_cpu_run_learns(cifar10: str, tmp_path: Path) -> None:
    r = T.train(T.TrainConfig(model="strided-cnn-a", data=cifar10, epochs=3, batch_size=128, lr=0.2, train_limit=2000,
                              val_size=500, test_limit=500, device="cpu", quiet=True, out=str(tmp_path / "run")))
    assert r["status"] == "done" and r["epoch"] == 3
    assert r["val_acc"] > 0.25 and r["test_acc"] > 0.25, r  # chance is 0.10
    hist = runlog.history(tmp_path / "run")
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("opt", ["sgd", "adamw", "sgd-ema"])  # AdamW's moments and step count, and the EMA weights,
def test_resume_is_bit_identical(cifar10: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # are state too
                                 opt: str) -> None:
    args = TINY + ["--data", cifar10, "--train-limit", "256", "--epochs", "2", "--optimizer", opt.split("-")[0]]
    args += ["--lr", "0.1"] if opt.startswith("sgd") else []
    args += ["--ema", "0.9"] if opt.endswith("ema") else []
    monkeypatch.setattr(T.ckpt, "git_commit", lambda: "the first commit")  # as from a git checkout, in any copy
    assert T.main(args + ["--out", str(tmp_path / "full")]) == 0
    assert T.main(args + ["--out", str(tmp_path / "cut"), "--stop-after", "1"]) == 0
    started = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert started["epoch"] == 1
    monkeypatch.setattr(T.ckpt, "git_commit", lambda: "a later commit")
    assert T.main(["--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    full, cut = runlog.weights(tmp_path / "full"), runlog.weights(tmp_path / "cut")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    assert runlog.history(tmp_path / "full") == runlog.history(tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "meta.json").read_text())["commit"] == "the first commit"  # the start's
    first, second = (json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
    assert second["wall_s"] >= first["wall_s"] + second["epoch_s"] - 0.06  # goes on from epoch 1 (kept to 0.1 s)


def test_threads_sets_torchs_thread_count(cifar10: str, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        args = TINY + ["--data", cifar10, "--train-limit", "64", "--epochs", "1", "--threads", "1", "--stop-after", "1"]
        assert T.main(args + ["--out", str(tmp_path / "r")]) == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ddp_two_gloo_processes_match_one_process(cifar10: str, tmp_path: Path) -> None:
    """Same global batch split over 2 ranks = one process (no BN/dropout/augmentation: those are per-rank draws)."""
    args = TINY + ["--data", cifar10, "--train-limit", "256", "--epochs", "1", "--lr", "0.05", "--no-batchnorm",
                   "--no-dropout", "--augment", "none", "--no-tta", "--amp", "off"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "allconv.train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert T.main(args + ["--out", str(tmp_path / "one")]) == 0
    ddp, one = runlog.weights(tmp_path / "ddp"), runlog.weights(tmp_path / "one")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    (h_ddp,), (h_one,) = runlog.history(tmp_path / "ddp"), runlog.history(tmp_path / "one")
    assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-4)  # summed over both ranks' halves
    assert json.loads((tmp_path / "ddp" / "meta.json").read_text())["device"] == "cpu x2"


def test_divergence_is_reported_and_sweep_goes_on(cifar10: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    args = TINY + ["--data", cifar10, "--train-limit", "256", "--epochs", "1"]
    assert T.main(args + ["--lr", "1e30", "--out", str(tmp_path / "boom")]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "diverged" in ln]
    assert len(lines) == 1 and "lr 1e+30" in lines[0] and "nan" in lines[0]
    assert "diverged" in (tmp_path / "boom" / "diverged.txt").read_text()

    cfg = T.TrainConfig(model="strided-cnn-a", data=cifar10, epochs=1, batch_size=64, train_limit=256, val_size=64,
                        test_limit=64, device="cpu", quiet=True, out=str(tmp_path / "sweep"))
    summary = sweep(cfg, lrs=(1e30, 0.01))
    assert [r["status"] for r in summary["runs"]] == ["diverged", "done"]
    assert summary["best_lr"] == 0.01 and (tmp_path / "sweep" / "model.safetensors").is_file()


@pytest.mark.parametrize("extra, match", [
    (["--model", "all-cnn-d"], "unknown model 'all-cnn-d'; choose one of: model-a"),
    (["--epochs", "0"], "--epochs 0: the number of epochs must be at least 1"),
    (["--label-smoothing", "5"], "--label-smoothing 5: label smoothing must be at least 0 and below 1"),
    (["--momentum", "-0.5"], "--momentum -0.5: momentum must be at least 0 and below 1"),
    (["--lr", "nan"], "--lr nan must be a positive number"),
    (["--threads", "0"], "--threads and --stop-after must be at least 1"),
    (["--stop-after", "0"], "--threads and --stop-after must be at least 1"),
    (["--data", "/nonexistent/data.npz"], "not found"),
    (["--val-size", "999999"], "validation size"),
    (["--resume", "/nonexistent/run"], "no allconv run in /nonexistent/run"),
])
def test_bad_input_is_one_line(cifar10: str, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                               match: str) -> None:
    data = [] if "--data" in extra else ["--data", cifar10]
    assert T.main(TINY + data + ["--train-limit", "64", "--out", str(tmp_path / "r")] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


def test_existing_run_is_never_overwritten(cifar10: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = TINY + ["--data", cifar10, "--train-limit", "64", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert T.main(args) == 0
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    assert T.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    assert T.main(["--resume", str(tmp_path / "r")]) == 2  # already finished


def test_lr_schedules() -> None:
    cfg = T.TrainConfig(epochs=350, protocol="paper", lr=0.1).resolved()
    assert [T.lr_at(cfg, t) for t in (0, 199.9, 200, 250, 300)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001])
    fast = T.TrainConfig(epochs=10, warmup=0.2, lr=1.0).resolved()
    assert [T.lr_at(fast, t) for t in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1.0, 0.5, 0.0])
    assert fast.batchnorm and not T.TrainConfig(protocol="paper").resolved().batchnorm
    assert T.lr_at(T.TrainConfig(epochs=10, warmup=0.0, lr=1.0).resolved(), 0) == 1.0  # no warm-up: the peak at once


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return str(path)


def _bad_data(kind: str, tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), np.arange(80) % 10
    if kind == "zero-byte":
        (tmp_path / "empty.npz").write_bytes(b"")
        return str(tmp_path / "empty.npz")
    if kind == "label -1":
        return _npz(tmp_path / "neg.npz", x, np.where(y == 3, -1, y))
    return _npz(tmp_path / "tiny.npz", x[:, :4, :4], y)  # 4x4 images


@pytest.mark.parametrize("kind, match", [("zero-byte", "not a readable .npz file"), ("label -1", "-1"),
                                         ("4x4", "images are 4x4 but strided-cnn-a needs at least")])
def test_bad_data_is_one_line(kind: str, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    args = TINY + ["--data", _bad_data(kind, tmp_path), "--val-size", "8", "--out", str(tmp_path / "r")]
    assert T.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err, err


def _read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write into (root ignores file modes, so use sysfs there)."""
    if os.geteuid() == 0:
        return Path("/sys/allconv-test-run")
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    return d / "run"


def test_unwritable_out_is_one_line(cifar10: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("not a directory")
    for out, match in ((tmp_path / "file", "is an existing file, not a directory"),
                       (_read_only_dir(tmp_path), "choose a writable --out")):
        assert T.main(TINY + ["--data", cifar10, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and match in err and "\n" not in err, err
    assert (tmp_path / "file").read_text() == "not a directory"


def test_amp_auto_follows_the_hardware_and_is_recorded(cifar10: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from allconv import device

    cpu = torch.device("cpu")
    assert device.resolve_amp("on", cpu) and not device.resolve_amp("off", cpu)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not device.native_bf16(cpu) and not device.resolve_amp("auto", cpu)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert device.native_bf16(cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    monkeypatch.undo()
    for amp, precision in (("on", "bf16 autocast"), ("off", "fp32")):
        out = tmp_path / amp
        assert T.main(TINY + ["--data", cifar10, "--train-limit", "64", "--epochs", "1", "--amp", amp,
                              "--out", str(out)]) == 0
        meta = json.loads((out / "meta.json").read_text())
        assert meta["metrics"]["precision"] == precision and meta["config"]["amp"] == amp


def test_cpu_flags_parse_x86_and_arm(tmp_path: Path) -> None:
    from allconv.device import cpu_flags

    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert {"avx512_bf16", "avx512f"} <= cpu_flags.__wrapped__(str(tmp_path / "x86"))
    assert "bf16" in cpu_flags.__wrapped__(str(tmp_path / "arm"))
    assert cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


def test_adamw_translates_the_protocols_weight_decay() -> None:
    """Same shrinkage per step at the peak LR as the protocol's SGD: lr_sgd * wd_sgd = lr_adamw * wd_adamw."""
    from allconv.config import ADAMW_LR, PROTOCOLS

    for protocol in ("paper", "fast"):
        cfg = T.TrainConfig(protocol=protocol, optimizer="adamw").resolved()
        sgd = PROTOCOLS[protocol]
        assert cfg.lr == ADAMW_LR[protocol] and cfg.momentum == 0.9
        assert cfg.lr * cfg.weight_decay == pytest.approx(sgd["lr"] * sgd["weight_decay"])
    cfg = T.TrainConfig(protocol="paper", optimizer="adamw", lr=1e-2, weight_decay=0.3).resolved()
    assert (cfg.lr, cfg.weight_decay) == (1e-2, 0.3)
    net = T.create("model-a")
    assert isinstance(T.make_optimizer(cfg, net), torch.optim.AdamW)
    with pytest.raises(T.AllconvError, match="unknown optimizer 'adam'; choose sgd or adamw"):
        T.TrainConfig(optimizer="adam").resolved()


def test_each_epoch_and_stream_gets_its_own_seed_in_torchs_range() -> None:
    """Shuffles and augmentation differ from epoch to epoch (and between the streams a run salts apart), and a seed of
    any size still gives one ``torch.manual_seed`` takes."""
    from allconv.config import TrainConfig

    seeds = {T.epoch_seed(TrainConfig(seed=0), e, salt) for e in range(4) for salt in (0, 1)}
    assert len(seeds) == 8
    big = T.epoch_seed(TrainConfig(seed=2 ** 70 + 2 ** 62 + 5), 3, 1)  # bit 63 of the sum is set
    assert 0 <= big < 2 ** 63 and big == ((2 ** 70 + 2 ** 62 + 5) * 1_000_003 + 3 * 7919 + 1) % 2 ** 63
    torch.manual_seed(big)


def test_no_two_random_streams_share_a_salt_on_any_rank() -> None:
    """Under torchrun rank 1's dropout once took rank 0's augmentation salt; rank 0 keeps the salts of earlier runs,
    so a single-process run still reproduces the shipped checkpoints."""
    salts = [T.salt("order", 0)] + [T.salt(s, r) for r in range(8) for s in ("dropout", "augment")]
    assert len(set(salts)) == len(salts)
    assert [T.salt(s, 0) for s in ("order", "dropout", "augment")] == [1, 2, 3]
    assert {T.salt("order", r) for r in range(8)} == {1}  # one global permutation, sliced by rank


def test_an_interrupt_before_the_first_epoch_says_none_is_saved(tmp_path: Path) -> None:
    e = T.Interrupted(tmp_path / "run", 5, "SIGTERM")
    assert str(e) == (f"interrupted by SIGTERM: 0 of 5 epochs are saved in {tmp_path / 'run'}; continue with "
                      f"allconv-train --resume {tmp_path / 'run'}")


@pytest.mark.parametrize("n", [7, 8, 9, 12, 15])
def test_an_epoch_is_whole_batches_of_one_permutation_split_between_ranks(n: int) -> None:
    """Every batch is full (the last partial one is dropped, as the paper's epochs of 50k/128 batches), no index
    repeats, and two ranks' slices together are each global batch."""
    from allconv.config import TrainConfig
    from allconv.device import Dist

    cfg, cpu = TrainConfig(batch_size=4), torch.device("cpu")
    one = T.batches(cfg, n, 2, Dist(0, 1), cpu)
    assert [len(b) for b in one] == [4] * (n // 4)
    flat = torch.cat(one)
    assert len(set(flat.tolist())) == len(flat) and 0 <= int(flat.min()) and int(flat.max()) < n
    halves = zip(T.batches(cfg, n, 2, Dist(0, 2), cpu), T.batches(cfg, n, 2, Dist(1, 2), cpu))
    assert [torch.cat(h).tolist() for h in halves] == [b.tolist() for b in one]


def test_without_out_a_run_goes_under_runs_named_by_net_protocol_and_time(cifar10: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = T.TrainConfig(model="strided-cnn-a", data=cifar10, epochs=1, batch_size=64, train_limit=64, val_size=64,
                        test_limit=64, device="cpu", quiet=True)
    r = T.train(cfg)
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(rf"strided-cnn-a-{cfg.resolved().protocol}-\d{{8}}-\d{{6}}", run.name), run.name
    assert r["out"] == str(Path("runs") / run.name) and (run / "model.safetensors").is_file()


def test_a_family_exits_1_when_a_net_diverges_and_a_sweep_0_whatever_its_lrs_did(cifar10: str,
                                                                                  tmp_path: Path) -> None:
    tiny = TINY[2:] + ["--data", cifar10, "--epochs", "2", "--train-limit", "128"]
    family = ["--model", "strided-cnn-a,model-a"] + tiny
    assert T.main(family + ["--out", str(tmp_path / "ok")]) == 0
    assert T.main(family + ["--lr", "1e30", "--out", str(tmp_path / "nan")]) == 1
    assert T.main(TINY[:2] + tiny + ["--lr-sweep", "--out", str(tmp_path / "sweep")]) == 0
