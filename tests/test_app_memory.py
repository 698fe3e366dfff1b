"""app.memory: the server gives freed memory back, and Streamlit's collection after each rerun stays cheap."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from app import memory

REPO = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_memory_trim_returns_free_pages_on_glibc() -> None:
    assert memory.trim() is GLIBC


HEAP = """
import ctypes, sys, torch
from app import memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
assert memory.map_large_blocks()
done = torch.empty(30 << 20, dtype=torch.uint8)
del done  # without the fix, this free raises glibc's mmap threshold to 30 MB
before = libc.mallinfo2().hblkhd
maps = torch.empty(20 << 20, dtype=torch.uint8)
print((libc.mallinfo2().hblkhd - before) >> 20)
"""


def test_a_freed_feature_map_goes_back_to_the_system() -> None:
    """After a 30 MB tensor is freed, a 20 MB one still gets its own mmap (so its free returns it to the system),
    where glibc alone would serve it from the heap: a long scan's kept results then pin such blocks (3.5 GB)."""
    if not GLIBC:
        pytest.skip("mallopt and mallinfo2 are glibc's")
    out = subprocess.run([sys.executable, "-c", HEAP], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert int(out.stdout) >= 20, f"a 20 MB tensor took {out.stdout.strip()} MB of mmapped blocks"


FROZEN = """
import gc, weakref, torch, streamlit
from app import memory
assert memory.freeze_libraries()
frozen = gc.get_freeze_count()
assert not memory.freeze_libraries()  # no library imported since: nothing more frozen
import json.tool  # a run that imports a library freezes again
assert memory.freeze_libraries() and gc.get_freeze_count() > frozen
class Node: pass
a, b = Node(), Node()
a.b, b.a = b, a  # a cycle made after startup, as a rerun makes
dead = weakref.ref(a)
del a, b
gc.collect(2)
print(frozen, len(gc.get_objects()), dead() is None)
"""


def test_the_collection_after_each_rerun_skips_the_libraries_but_frees_new_cycles() -> None:
    """Streamlit runs ``gc.collect(2)`` after every rerun, holding the GIL (~200 ms over torch's and Streamlit's
    objects); after ``freeze_libraries`` it scans only what came since, and still frees a cycle made then."""
    out = subprocess.run([sys.executable, "-c", FROZEN], capture_output=True, text=True, check=True, cwd=REPO)
    frozen, scanned, freed = out.stdout.split()
    assert int(frozen) > 10 * int(scanned), f"{scanned} objects left to scan after freezing {frozen}"
    assert freed == "True"
