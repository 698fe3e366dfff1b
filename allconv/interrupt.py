"""SIGINT and SIGTERM stop a run at any instant, and are always reported as the interrupt they are.

Both raise where the run is (SIGTERM as ``Terminated``, a ``KeyboardInterrupt``), since every instant of a run is
resumable. Raised inside a C extension, though, the exception can come out as another one: matplotlib's bbox
converter turns it into ``ValueError: Invalid bounding box`` while the curves are drawn. So ``catching`` also
remembers which signal arrived, and ``signal_behind`` names it for whatever exception it became.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["Terminated", "catching", "signal_behind"]

_arrived: list[str] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the run is, exactly like Ctrl-C's KeyboardInterrupt."""


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
    finally:
        for s, handler in previous.items():  # what arrived stays known until the next ``catching``
            signal.signal(s, handler)


def signal_behind(e: BaseException) -> str | None:
    """``"SIGINT"`` or ``"SIGTERM"`` when ``e`` is an interrupt or was raised after one arrived, else None."""
    if isinstance(e, Terminated):
        return "SIGTERM"
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT"
    return _arrived[-1] if _arrived else None
