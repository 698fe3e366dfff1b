"""Hand freed memory back to the system after each script run.

A rerun allocates and frees hundreds of MB (a reconstruction grid, a Figure 2 scan batch). glibc keeps freed blocks
in per-thread arenas, and Streamlit runs every session's script in its own thread, so without this the server's
resident memory only grows (to 1-2 GB over a session) although the caches hold far less. ``malloc_trim(0)`` returns
the free pages of every arena; it takes a few ms. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def trim() -> bool:
    """Release free heap pages to the system; True where that was done (glibc)."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0) is not None)
