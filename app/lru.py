"""Memoization bounded in entries and in bytes, shared by every session: ``st.cache_data``'s job (which it bounds in
entries only), so the server's memory cannot grow with the number of images, layers and methods visitors try.

``memo(max_entries, max_bytes)`` keys a function's results by its arguments whose names do not start with ``_`` (as
Streamlit does: models and tensors are passed as ``_model``/``_x`` and identified by the stamp and image key beside
them). ``nbytes`` sizes a result: bytes, arrays, tensors, PIL images, and dataclasses, tuples, lists and dicts of
them. The least recently used entries go first; a result larger than the whole budget is returned but not kept.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np
import torch
from PIL import Image


class BoundedLRU:
    """A thread-safe LRU map holding at most ``max_entries`` values of at most ``max_bytes`` together."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key not in self._data:
                return False, None
            self._data.move_to_end(key)
            return True, self._data[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                self._bytes -= self._data.popitem(last=False)[1][1]

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._data), self._bytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


def memo(max_entries: int, max_bytes: int, spinner: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: results kept in a ``BoundedLRU`` keyed by the non-``_`` arguments; ``spinner``: text shown while
    a miss is computed (``st.spinner``). The wrapper's ``cache`` attribute is the LRU."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        lru = BoundedLRU(max_entries, max_bytes)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            key = tuple((k, _hashable(v)) for k, v in bound.arguments.items() if not k.startswith("_"))
            hit, value = lru.get(key)
            if hit:
                return value
            value = _computed(fn, args, kwargs, spinner)
            lru.put(key, value)
            return value

        call.cache = lru  # type: ignore[attr-defined]
        return call
    return wrap


def _computed(fn: Callable, args: tuple, kwargs: dict, spinner: str | None) -> Any:
    if spinner is None:
        return fn(*args, **kwargs)
    import streamlit as st

    with st.spinner(spinner):
        return fn(*args, **kwargs)


def _hashable(v: Any) -> Hashable:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def nbytes(value: Any) -> int:
    """Approximate memory held by ``value`` (its payload: the bytes of buffers, images and tensors it contains)."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if torch.is_tensor(value):
        return value.element_size() * value.nelement()
    if isinstance(value, Image.Image):
        return len(value.getbands()) * value.width * value.height
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(nbytes(k) + nbytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(nbytes(x) for x in value)
    return sys.getsizeof(value)
