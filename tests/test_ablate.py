"""allconv-ablate: the grid's cells (regularizer x optimizer x seed, per model and protocol, one budget), resumable
after an interruption with finished cells kept, diverged runs counted as results, and the report's table and figure.

Tiny CPU runs: Strided-CNN-A on 64 random images, one epoch each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from allconv import ablate, train as T
from allconv.config import TrainConfig


@pytest.fixture
def npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    path = tmp_path / "random.npz"
    np.savez(path, x_train=rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8), y_train=np.arange(160) % 10,
             x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), y_test=np.arange(32) % 10)
    return str(path)


def test_cells_cover_the_grid_with_one_budget_per_protocol() -> None:
    base = TrainConfig(epochs=3, train_limit=1000)
    got = ablate.cells(base, ["model-a", "all-cnn-c"], ["paper", "fast"], [0, 1])
    assert len(got) == 2 * 2 * 4 * 2 * 2 and got[0][0] == "model-a/paper/bn-sgd-s0"
    resolved = {name: cfg.resolved() for name, cfg in got}
    assert resolved["all-cnn-c/fast/dropout-adamw-s1"].dropout and not resolved["all-cnn-c/fast/dropout-adamw-s1"].batchnorm
    assert resolved["model-a/paper/neither-sgd-s0"].schedule == "step" and resolved["model-a/fast/both-sgd-s0"].schedule \
        == "onecycle"
    for protocol in ("paper", "fast"):
        same = {(c.epochs, c.train_limit, c.schedule, c.warmup, c.val_size) for n, c in resolved.items()
                if f"/{protocol}/" in n}
        assert len(same) == 1  # every cell of a protocol: the same schedule, budget and subset


def test_grid_resumes_keeps_finished_cells_and_reports(npz: str, tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "grid"
    args = ["--models", "strided-cnn-a", "--protocols", "fast", "--seeds", "0", "--epochs", "1", "--train-limit",
            "64", "--batch-size", "32", "--val-size", "32", "--data", npz, "--out", str(root), "--quiet"]
    real, calls = T.Run.fit, []

    def cut(self, stop_after=None):  # noqa: ANN001
        calls.append(self.out.name)
        if len(calls) == 3:
            raise T.Interrupted(self.out, 1, "SIGINT")
        return real(self, stop_after)

    monkeypatch.setattr(T.Run, "fit", cut)
    assert ablate.main(args) == 130
    first = (root / "strided-cnn-a/fast/bn-sgd-s0/model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(T.Run, "fit", lambda self, stop_after=None: (calls.append(self.out.name),
                                                                      real(self, stop_after))[1])
    assert ablate.main(["--resume", str(root), "--quiet", "--doc", str(tmp_path / "docs")]) == 0
    assert calls[3:] == ["bn-sgd-s0", "bn-adamw-s0", "dropout-sgd-s0", "dropout-adamw-s0", "both-sgd-s0",
                         "both-adamw-s0", "neither-sgd-s0", "neither-adamw-s0"][2:]  # the two finished: kept
    assert (root / "strided-cnn-a/fast/bn-sgd-s0/model.safetensors").stat().st_mtime_ns == first
    md = (tmp_path / "docs" / "ablations.md").read_text()
    assert "## strided-cnn-a, fast protocol" in md and md.count("\n| ") == 1 + 8  # header + 8 cells
    assert "| neither | adamw | " in md and (tmp_path / "docs" / "ablations.png").stat().st_size > 5000
    plan = json.loads((root / "plan.json").read_text())
    assert plan["kind"] == "grid" and plan["status"] == "done" and len(plan["runs"]) == 8


def test_diverged_cells_are_results(npz: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell that diverges is reported in the diverged column, not as a crash."""
    from allconv.runset import grid

    def blow_up(self, bar):  # noqa: ANN001
        raise T.Diverged("loss is nan at step 3")

    monkeypatch.setattr(T.Run, "train_epoch", blow_up)
    base = TrainConfig(model="strided-cnn-a", data=npz, epochs=1, train_limit=64, batch_size=32, val_size=32,
                       quiet=True,
                       out=str(tmp_path / "g"), lr=0.1, batchnorm=False, dropout=False)
    cells = [("strided-cnn-a/fast/neither-sgd-s0", base)]
    grid(base, cells)
    md = Path(ablate.report(tmp_path / "g")).read_text()
    assert "| neither | sgd | - | - | never (0/1) | never (0/1) | 1/1 |" in md


def test_bad_arguments_are_one_line(capsys) -> None:
    for argv, msg in ((["--models", "model-z", "--epochs", "1", "--out", "x"], "--models 'model-z': unknown"),
                      (["--out", "x"], "--out ROOT and --epochs N are required"),
                      (["--seeds", "a", "--epochs", "1", "--out", "x"], "--seeds 'a': give integers"),
                      (["--report", "/nonexistent"], "holds no grid")):
        assert ablate.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_cell_row_counts_the_seeds_that_reach_each_target() -> None:
    """Mean first epoch at >= 50% and >= 80% val accuracy over the seeds that got there; "-" for a cell not run."""
    def run(accs: list[float], finished: bool = True) -> dict:
        hist = [{"epoch": e + 1, "val_acc": a} for e, a in enumerate(accs)]
        return {"reg": "bn", "opt": "sgd", "history": hist, "diverged": None, "finished": finished,
                "val": accs[-1] if accs else None, "test": accs[-1] if accs else None,
                "to": {t: next((h["epoch"] for h in hist if h["val_acc"] >= t), None) for t in ablate.TARGETS}}

    row = ablate._cell_row([run([0.4, 0.6, 0.85]), run([0.55, 0.7, 0.75])])
    assert row == "| bn | sgd | 20.00 ± 5.00 | 20.00 ± 5.00 | 1.5 (2/2) | 3.0 (1/2) | 0/2 |"
    assert ablate._cell_row([run([], finished=False)]) == "| bn | sgd | - | - | - | - | 0/1 (1 not run) |"


def test_an_interrupt_outside_the_grids_runs_is_one_line(npz: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    import allconv.runset as S

    def stop(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt()

    root = tmp_path / "grid"
    args = ["--models", "strided-cnn-a", "--protocols", "fast", "--seeds", "0", "--epochs", "1", "--train-limit",
            "64", "--batch-size", "32", "--val-size", "32", "--data", npz, "--out", str(root), "--quiet"]
    monkeypatch.setattr(S, "grid", stop)  # before the grid's plan is saved
    assert ablate.main(args) == 130
    assert capsys.readouterr().err.strip() == "interrupted outside the grid's runs: run it again"
    monkeypatch.undo()
    monkeypatch.setattr(ablate, "report", stop)  # after its runs, in the report
    assert ablate.main(args) == 130
    assert capsys.readouterr().err.strip() == ("interrupted outside the grid's runs: continue with allconv-ablate "
                                                f"--resume {root}")
    monkeypatch.undo()
    assert ablate.main(["--resume", str(root), "--quiet"]) == 0 and (root / "ablations.md").is_file()
