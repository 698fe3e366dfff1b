"""Hand freed memory back to the system: large blocks as soon as they are freed, the rest after each script run.

A rerun allocates and frees hundreds of MB (a reconstruction grid, a Figure 2 scan batch). glibc serves a block of
over 128 KB with its own mmap, but raises that threshold after each such free (up to 32 MB), so feature maps then
come from the heap, where a long pass's small results, kept between batches, pin the freed space: the background
Figure 2 pass over 10,000 images grew the server to 3.5 GB, and it stayed there. ``map_large_blocks`` fixes the
threshold at 1 MB, so big tensors never enter the heap. glibc also keeps freed blocks in per-thread arenas, and
Streamlit runs every session's script in its own thread; ``trim`` (``malloc_trim(0)``) returns the free pages of
every arena after a rerun, in a few ms. Elsewhere than glibc both do nothing.

Streamlit also runs a full ``gc.collect(2)`` after every script run (``runner.postScriptGC``), holding the GIL, so the
page hears that the run ended only after it: with torch, pandas and Streamlit loaded that is 400k objects and ~200 ms of
each 300 ms revisit. ``freeze_libraries`` moves what exists after the imports into the collector's permanent generation
(``gc.freeze``, made for long-lived startup objects) after each run that imported a library, so each collection
scans only what came since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache


M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
LARGE = 1 << 20  # bytes: blocks this big get their own mmap
_modules_at_freeze = 0  # len(sys.modules) when freeze_libraries last froze


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


@lru_cache(maxsize=1)
def map_large_blocks() -> bool:
    """Serve every allocation of ``LARGE`` bytes or more with its own mmap, returned to the system when freed, for
    the rest of the process; True where that was done (glibc). Once per process."""
    libc = _libc()
    return bool(libc and hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, LARGE) == 1)


def freeze_libraries() -> bool:
    """After a run that imported a library (a view's first use loads altair, pyarrow...), collect, then exempt every
    object that survives from later cyclic collections; True where that was done. Only when ``sys.modules`` grew, so a
    process freezes a few times at most, and a run's garbage is collected first, never frozen."""
    global _modules_at_freeze
    if len(sys.modules) <= _modules_at_freeze:
        return False
    _modules_at_freeze = len(sys.modules)
    gc.collect()
    gc.freeze()
    return True
