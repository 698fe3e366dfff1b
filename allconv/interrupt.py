"""SIGINT and SIGTERM stop a run at any instant, and are always reported as the interrupt they are.

Both raise where the run is (SIGTERM as ``Terminated``, a ``KeyboardInterrupt``), since every instant of a run is
resumable. Raised inside a C extension, though, the exception can come out as another one: matplotlib's bbox
converter turns it into ``ValueError: Invalid bounding box`` while the curves are drawn. So ``catching`` remembers
which signal arrived: within it ``signal_behind`` names the signal behind whatever exception it became, and what
leaves it as such an exception leaves as the interrupt it was. Once it exits, it forgets: an error raised later, in
the same process, is never taken for an interrupt.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import rundir
from .errors import AllconvError

__all__ = ["Interrupted", "Terminated", "catching", "exit_status", "signal_behind"]

_arrived: list[str] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the run is, exactly like Ctrl-C's KeyboardInterrupt."""


class Interrupted(AllconvError):
    """SIGINT or SIGTERM during a run: every instant is resumable, so say where the run stands and how to continue."""

    def __init__(self, out: Path, epochs: int, sig: str = "SIGINT") -> None:
        self.signal = sig
        done = rundir.committed_epoch(out) or 0
        super().__init__(f"interrupted by {sig}: {done} of {epochs} epochs are saved in {out}; continue with "
                         f"allconv-train --resume {out}")


def _raise(signum: int, frame: Any) -> None:
    _arrived.append(signal.Signals(signum).name)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def catching() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise and are remembered (main thread only; elsewhere Python's defaults stay)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _arrived.clear()
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Exception as e:
        if isinstance(e, AllconvError) or (sig := signal_behind(e)) is None:
            raise
        raise (Terminated() if sig == "SIGTERM" else KeyboardInterrupt()) from e
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _arrived.clear()


def signal_behind(e: BaseException) -> str | None:
    """``"SIGINT"`` or ``"SIGTERM"`` when ``e`` is an interrupt or, within ``catching``, was raised after one."""
    if isinstance(e, Interrupted):
        return e.signal
    if isinstance(e, Terminated):
        return "SIGTERM"
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT"
    return _arrived[-1] if _arrived else None


def exit_status(e: KeyboardInterrupt | Interrupted, otherwise: str) -> int:
    """Say what the interrupt ``e`` left on stderr (an ``Interrupted`` says it; else ``otherwise``): exit 143 or 130."""
    print(str(e) if isinstance(e, Interrupted) else otherwise, file=sys.stderr)
    return 143 if signal_behind(e) == "SIGTERM" else 130
