"""Never lose a run: a kill or a full disk at every write step of a save leaves a run that ``--resume`` continues,
bit-identical to one never interrupted; SIGINT/SIGTERM say where the run stands; an interrupted sweep resumes.

Each write step (a rename or a delete inside the run directory) is interrupted in turn by a fault injector, not by
luck. A "kill" stops the process dead at that step: nothing after it runs, not even the temp-file cleanup.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import runlog
import torch

from allconv import interrupt, rundir
from allconv import runset as S
from allconv import train as T

TINY = ["--model", "strided-cnn-a", "--batch-size", "64", "--val-size", "64", "--test-limit", "64",
        "--train-limit", "128", "--lr", "0.05", "--device", "cpu", "--quiet"]


class _Kill(BaseException):
    """The process dies here (like kill -9): raised past every ``except Exception``."""


class Faults:
    """Counts the write steps (os.replace / os.unlink) inside one directory and injects a fault at step ``at``:
    ``kill`` (nothing more happens: later renames and deletes are dropped) or ``enospc`` (the write fails)."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path) -> None:
        self.root, self.at, self.kind, self.count, self.dead = str(root), None, "kill", 0, False
        for name in ("replace", "unlink"):
            mp.setattr(os, name, self._wrap(name, getattr(os, name)))

    def arm(self, at: int | None, kind: str = "kill") -> None:
        self.at, self.kind, self.count, self.dead = at, kind, 0, False

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(path: Any, *args: Any, **kw: Any) -> Any:
            if self.dead:
                return None
            if str(path).startswith(self.root):
                if self.count == self.at:
                    if self.kind == "kill":
                        self.dead = True
                        raise _Kill(f"{name} {path}")
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                self.count += 1
            return real(path, *args, **kw)
        return step


def _same_run(a: Path, b: Path) -> None:
    wa, wb = runlog.weights(a), runlog.weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert runlog.history(a) == runlog.history(b)
    left = sorted(p.name for p in b.iterdir())
    assert not [n for n in left if n.endswith(".tmp")], left
    assert [n for n in left if rundir.is_state_file(n)] == [rundir.state_name(3)], left


@pytest.fixture
def reference(cifar10: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert T.main(TINY + ["--data", cifar10, "--epochs", "3", "--out", str(out)]) == 0
    return out


def _steps_of_one_save(cifar10: str, root: Path, faults: Faults) -> int:
    """How many write steps resuming a run and saving its next epoch take; leaves ``root/epoch-1``, a run
    stopped after its first epoch, to copy."""
    faults.arm(None)
    assert T.main(TINY + ["--data", cifar10, "--epochs", "3", "--stop-after", "1", "--out", str(root / "epoch-1")]) == 0
    out = root / "count"
    shutil.copytree(root / "epoch-1", out)
    faults.arm(10 ** 9)
    assert T.main(["--resume", str(out), "--stop-after", "1", "--quiet"]) == 0
    return faults.count


def test_a_kill_at_every_write_step_resumes_bit_identically(cifar10: str, reference: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    faults = Faults(monkeypatch, tmp_path)
    n = _steps_of_one_save(cifar10, tmp_path, faults)
    assert n >= 5  # state, model, meta.json, old state, metrics, curves...
    for at in range(n):
        out = tmp_path / f"kill-{at}"
        shutil.copytree(tmp_path / "epoch-1", out)
        faults.arm(at)
        with pytest.raises(_Kill):
            T.main(["--resume", str(out), "--quiet"])
        faults.arm(None)
        assert T.main(["--resume", str(out), "--quiet"]) == 0, f"kill at write step {at}"
        _same_run(reference, out)


def test_a_full_disk_at_every_write_step_is_one_line_and_resumes(cifar10: str, reference: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    faults = Faults(monkeypatch, tmp_path)
    n = _steps_of_one_save(cifar10, tmp_path, faults)
    for at in range(n):
        out = tmp_path / f"full-{at}"
        shutil.copytree(tmp_path / "epoch-1", out)
        capsys.readouterr()
        faults.arm(at, "enospc")
        assert T.main(["--resume", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: could not write") and "disk is full" in err and "\n" not in err, err
        assert f"--resume {out}" in err and "epoch " in err
        faults.arm(None)
        assert T.main(["--resume", str(out), "--quiet"]) == 0, f"ENOSPC at write step {at}"
        _same_run(reference, out)


def test_a_kill_in_the_first_epoch_resumes_from_the_start(cifar10: str, reference: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    faults = Faults(monkeypatch, tmp_path)
    out = tmp_path / "first"
    faults.arm(1)  # step 0 writes run.json; step 1 is the first epoch's state file
    with pytest.raises(_Kill):
        T.main(TINY + ["--data", cifar10, "--epochs", "3", "--out", str(out)])
    faults.arm(None)
    assert (out / rundir.RUN_FILE).is_file() and not (out / "model.safetensors").exists()
    assert T.main(["--resume", str(out), "--quiet"]) == 0
    _same_run(reference, out)


def test_a_kill_in_the_last_save_is_repaired_by_resume(cifar10: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "last"
    assert T.main(TINY + ["--data", cifar10, "--epochs", "1", "--stop-after", "1", "--out", str(out)]) == 0
    (out / "metrics.jsonl").write_text("")  # as if killed between the commit and the metrics write
    (out / ".model.safetensors.x.tmp").write_bytes(b"half a file")
    assert T.main(["--resume", str(out), "--quiet"]) == 2
    assert "already finished" in capsys.readouterr().err
    assert len(runlog.history(out)) == 1 and not (out / ".model.safetensors.x.tmp").exists()


@pytest.mark.parametrize("exc, code, name", [(KeyboardInterrupt, 130, "SIGINT"), (interrupt.Terminated, 143, "SIGTERM")])
def test_interrupt_is_one_line_saying_how_to_resume(cifar10: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture, exc: type, code: int,
                                                    name: str) -> None:
    real, calls = T.Run.train_epoch, []

    def interrupted_in_epoch_2(self: T.Run, bar: Any) -> Any:
        calls.append(self.epoch)
        if len(calls) == 2:
            raise exc()
        return real(self, bar)

    monkeypatch.setattr(T.Run, "train_epoch", interrupted_in_epoch_2)
    out = tmp_path / "r"
    assert T.main(TINY + ["--data", cifar10, "--epochs", "3", "--out", str(out)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted by {name}: 1 of 3 epochs are saved in {out}; continue with allconv-train "
                   f"--resume {out}"]


def test_real_sigterm_from_another_process(cifar10: str, tmp_path: Path) -> None:
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "allconv.train", *TINY, "--data", cifar10, "--epochs", "1000", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "model.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM: ") and f"--resume {out}" in last
    assert T.main(["--resume", str(out), "--stop-after", "1", "--quiet"]) == 0


def test_an_interrupted_sweep_resumes(cifar10: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    faults = Faults(monkeypatch, tmp_path / "sweep" / "lr-0.05")
    cfg = T.TrainConfig(model="strided-cnn-a", data=cifar10, epochs=2, batch_size=64, train_limit=128, val_size=64,
                        test_limit=64, device="cpu", quiet=True, out=str(tmp_path / "sweep"))
    faults.arm(3)  # inside lr 0.05's first save: the first lr has diverged and is kept
    with pytest.raises(_Kill):
        S.sweep(cfg, lrs=(1e30, 0.05, 0.01))
    faults.arm(None)
    assert (tmp_path / "sweep" / "lr-1e+30" / rundir.DIVERGED_FILE).is_file()
    args = TINY + ["--data", cifar10, "--epochs", "2", "--lr-sweep", "--out", str(tmp_path / "sweep")]
    assert T.main(args) == 2 and "--resume" in capsys.readouterr().err  # never re-run into a sweep
    assert T.main(["--resume", str(tmp_path / "sweep"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "sweep" / "plan.json").read_text())
    assert summary["status"] == "done" and [r["status"] for r in summary["runs"]] == ["diverged", "done", "done"]
    assert (tmp_path / "sweep" / "model.safetensors").is_file()
    T.main(TINY + ["--data", cifar10, "--epochs", "2", "--lr", "0.05", "--out", str(tmp_path / "plain")])
    assert all(torch.equal(a, b) for a, b in zip(runlog.weights(tmp_path / "plain").values(),
                                                 runlog.weights(tmp_path / "sweep" / "lr-0.05").values()))


def test_a_family_trains_each_net_alike_and_resumes(cifar10: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "family"
    faults = Faults(monkeypatch, root / "model-a")
    args = TINY[2:] + ["--data", cifar10, "--epochs", "1", "--out", str(root)]
    faults.arm(1)  # model-a's first state file: strided-cnn-a has finished
    with pytest.raises(_Kill):
        T.main(["--model", "strided-cnn-a,model-a"] + args)
    faults.arm(None)
    assert T.main(["--model", "strided-cnn-a,model-a"] + args) == 2  # never re-run into a family
    assert f"--resume {root}" in capsys.readouterr().err
    assert T.main(["--resume", str(root), "--quiet"]) == 0
    plan = json.loads((root / "plan.json").read_text())
    assert plan["kind"] == "family" and [r["model"] for r in plan["runs"]] == ["strided-cnn-a", "model-a"]
    for net in ("strided-cnn-a", "model-a"):
        meta = json.loads((root / net / "meta.json").read_text())
        assert meta["model"] == net and meta["config"]["lr"] == 0.05 and meta["epoch"] == 1
    table = (root / "table3.md").read_text()
    assert table.count("| - |") >= 10 and "| strided-cnn-a | " in table and "| model-a | " in table
    row = next(line for line in table.splitlines() if line.startswith("| model-a |"))
    assert row.split("|")[2].strip() != "-"  # our error is filled in
