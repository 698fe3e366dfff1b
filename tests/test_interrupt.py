"""SIGINT/SIGTERM are reported as the interrupt they are, even when a C extension turned the exception into another
(matplotlib's bbox converter makes it ``ValueError: Invalid bounding box``: a SIGTERM landing while the curves were
drawn once ended a run with a traceback and exit 1). A real error is never passed off as an interrupt."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.transforms import Bbox

from allconv import interrupt
from allconv import train as T

TINY = ["--model", "strided-cnn-a", "--batch-size", "64", "--val-size", "64", "--test-limit", "64",
        "--train-limit", "128", "--lr", "0.05", "--device", "cpu", "--quiet"]


def _signal_becomes_value_error(signum: int) -> None:
    """Deliver ``signum`` to this process while matplotlib converts a bbox, as in the failing run."""
    class Hit(Bbox):
        def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
            os.kill(os.getpid(), signum)
            return super().__array__(*args, **kwargs)

    Hit([[0, 0], [1, 1]]).count_overlaps([Bbox([[0, 0], [1, 1]])])


@pytest.mark.parametrize("signum, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_matplotlib_turned_into_value_error_is_still_the_signal(signum: int, name: str) -> None:
    with interrupt.catching():
        with pytest.raises(ValueError, match="Invalid bounding box") as e:
            _signal_becomes_value_error(signum)
        assert interrupt.signal_behind(e.value) == name


def test_without_a_signal_an_error_is_an_error() -> None:
    with interrupt.catching():
        assert interrupt.signal_behind(ValueError("Invalid bounding box")) is None
        assert interrupt.signal_behind(interrupt.Terminated()) == "SIGTERM"
        assert interrupt.signal_behind(KeyboardInterrupt()) == "SIGINT"


def test_catching_restores_the_handlers_and_forgets_earlier_signals() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupt.catching():
        with pytest.raises(ValueError):
            _signal_becomes_value_error(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with interrupt.catching():
        assert interrupt.signal_behind(ValueError()) is None


def test_catching_outside_the_main_thread_changes_nothing() -> None:
    seen: list[Any] = []

    def work() -> None:
        with interrupt.catching():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=work)
    thread.start(), thread.join()
    assert seen == [before]


def test_sigterm_while_the_curves_are_drawn_is_a_resumable_interrupt(cifar10: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(T, "training_curves", lambda *a, **k: _signal_becomes_value_error(signal.SIGTERM))
    out = tmp_path / "r"
    assert T.main(TINY + ["--data", cifar10, "--epochs", "3", "--out", str(out)]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        f"interrupted by SIGTERM: 1 of 3 epochs are saved in {out}; continue with allconv-train --resume {out}"]
    monkeypatch.undo()
    assert T.main(["--resume", str(out), "--stop-after", "1", "--quiet"]) == 0


def test_a_real_error_while_the_curves_are_drawn_is_not_called_an_interrupt(cifar10: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("Invalid bounding box")

    monkeypatch.setattr(T, "training_curves", broken)
    with pytest.raises(ValueError, match="Invalid bounding box"):
        T.main(TINY + ["--data", cifar10, "--epochs", "1", "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_before_the_first_epoch_exits_as_interrupted(cifar10: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture, signum: int,
                                                              code: int) -> None:
    def load(*args: Any, **kwargs: Any) -> None:
        _signal_becomes_value_error(signum)

    monkeypatch.setattr(T.Run, "__init__", load)
    assert T.main(TINY + ["--data", cifar10, "--epochs", "1", "--out", str(tmp_path / "r")]) == code
    assert capsys.readouterr().err.strip() == ("interrupted before the first epoch began; nothing to resume: run "
                                                "the command again")


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, interrupt.Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_what_a_signal_became_leaves_catching_as_the_interrupt(signum: int, raised: type) -> None:
    with pytest.raises(KeyboardInterrupt) as e:
        with interrupt.catching():
            _signal_becomes_value_error(signum)
    assert type(e.value) is raised and isinstance(e.value.__cause__, ValueError)


def test_after_catching_a_later_error_in_the_same_process_is_an_error(cifar10: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(interrupt.Terminated):
        with interrupt.catching():
            _signal_becomes_value_error(signal.SIGTERM)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("Invalid bounding box")

    monkeypatch.setattr(T, "training_curves", broken)
    cfg = T.TrainConfig(model="strided-cnn-a", data=cifar10, epochs=1, batch_size=64, val_size=64, test_limit=64,
                        train_limit=128, device="cpu", quiet=True, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="Invalid bounding box"):
        T.train(cfg)


def test_a_signal_before_a_members_first_epoch_points_to_the_sets_resume(cifar10: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    real, starts = T.Run.__init__, []

    def load(self: T.Run, *args: Any, **kwargs: Any) -> None:
        starts.append(1)
        if len(starts) == 2:  # loading the second net's data
            _signal_becomes_value_error(signal.SIGTERM)
        real(self, *args, **kwargs)

    monkeypatch.setattr(T.Run, "__init__", load)
    root = tmp_path / "family"
    assert T.main(TINY + ["--model", "strided-cnn-a,model-a", "--data", cifar10, "--epochs", "1",
                          "--out", str(root)]) == 143
    assert capsys.readouterr().err.strip() == (f"interrupted by SIGTERM during model-a: finished runs are kept in "
                                                f"{root}; continue with allconv-train --resume {root}")
    assert T.main(["--resume", str(root), "--quiet"]) == 0 and len(starts) == 3
