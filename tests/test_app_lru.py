"""app.lru: memoization bounded in entries and bytes -- hits do not recompute, the least recently used go first,
a result over the whole budget is not kept, ``_`` arguments are not part of the key, sizes count the payload."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from app.lru import BoundedLRU, memo, nbytes


def test_hits_do_not_recompute_and_underscore_args_are_not_keys() -> None:
    calls: list[tuple] = []

    @memo(8, 1 << 20)
    def f(stamp: str, layer: str, _model: object, scale: int = 2) -> bytes:
        calls.append((stamp, layer, scale))
        return b"x" * scale

    assert f("a", "conv1", object()) == b"xx" and f("a", "conv1", object()) == b"xx"
    assert f("a", "conv1", None, scale=3) == b"xxx" and f("a", "conv2", None) == b"xx"
    assert calls == [("a", "conv1", 2), ("a", "conv1", 3), ("a", "conv2", 2)]
    assert f.cache.stats() == (3, 7)


def test_entries_and_bytes_bound_evict_the_least_recently_used() -> None:
    lru = BoundedLRU(max_entries=3, max_bytes=100)
    for k in "abc":
        lru.put(k, b"." * 10)
    lru.get("a")  # a is now the most recent
    lru.put("d", b"." * 10)  # 4 entries > 3: b goes
    assert [lru.get(k)[0] for k in "abcd"] == [True, False, True, True]
    lru.put("e", b"." * 75)  # 30 + 75 > 100 bytes: the least recently used (a: the gets above made it so) goes
    assert lru.stats() == (3, 95) and not lru.get("a")[0] and all(lru.get(k)[0] for k in "cde")
    lru.put("huge", b"." * 101)  # over the whole budget: returned by memo, never kept
    assert not lru.get("huge")[0] and lru.get("e")[0]


def test_nbytes_counts_the_payload() -> None:
    @dataclass
    class Detail:
        recon: torch.Tensor
        patch: np.ndarray
        png: bytes

    d = Detail(torch.zeros(3, 8, 8), np.zeros((4, 4), np.uint8), b"12345")
    assert nbytes(d) == 3 * 8 * 8 * 4 + 16 + 5
    assert nbytes((b"ab", [b"c", {"k": b"def"}])) == 2 + 1 + nbytes("k") + 3
    assert nbytes(Image.new("RGB", (10, 20))) == 600


def test_concurrent_callers_get_the_same_value() -> None:
    @memo(4, 1 << 20)
    def g(key: str) -> bytes:
        return key.encode() * 1000

    out: list[bytes] = []
    threads = [threading.Thread(target=lambda: out.append(g("k"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [b"k" * 1000] * 8 and g.cache.stats() == (1, 1000)
