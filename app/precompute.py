"""Figure 2 scans of the checkpoint a visitor opens, computed once in the background (one pass at a time, our 32x32
nets over the server's dataset), so the Layer view of any of its layers is a disk read by the time a visitor gets
there.

One pass over the default dataset's test split serves every layer (``vis.scan.scan_layers``; bf16 with fp32
rescoring where native, so the picks are fp32's), and each layer's scan is saved where ``app.scans`` looks first.
The pass runs on a copy of the model: a copy has its own lock, so visitors' requests on the shared model never wait
for it. A Layer view that needs a scan still in progress shows this pass's progress bar and waits for it instead of
starting its own. ``ALLCONV_PRECOMPUTE=0`` turns it off (one-off servers, tests).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from allconv.errors import AllconvError
from vis import figure2
from vis.scan import scan_layers
from vis.sources import Source

from . import scans
from .config import SCAN_TOP_K

POLL_S = 0.25
STALL_S = 5.0  # a pass whose progress stalls this long is starved: a visitor stops waiting for it
BATCH = 100  # images per batch: the pass holds every layer's maps of a batch at once (500 peaked at ~3 GB)
_LOCK = threading.Lock()
_JOBS: dict[tuple[str, str, str, int], Job] = {}


@dataclass
class Job:
    """One background pass: the layers it scans, its progress, and when it ended (``error`` if it failed)."""

    layers: list[str]
    done: int = 0
    total: int = 1
    error: str = ""
    ended: threading.Event = field(default_factory=threading.Event)

    def wait(self, progress: Callable[[int, int], None] | None = None, stall_s: float | None = None) -> bool:
        """Block until the pass ends (True), reporting its progress meanwhile; False once it has made no progress for
        ``stall_s`` (default ``STALL_S``): at its lowest priority a busy CPU starves it (a training run beside the
        server), and a visitor then scans at their own priority rather than wait behind it."""
        stall_s = STALL_S if stall_s is None else stall_s
        seen, since = self.done, time.monotonic()
        while not self.ended.wait(POLL_S):
            if progress is not None:
                progress(self.done, self.total)
            if self.done != seen:
                seen, since = self.done, time.monotonic()
            elif time.monotonic() - since > stall_s:
                return False
        return True


def _ended() -> threading.Event:
    done = threading.Event()
    done.set()
    return done


def enabled() -> bool:
    return os.environ.get("ALLCONV_PRECOMPUTE", "1").strip() not in ("0", "false", "no", "off")


def start(stamp: str, source: str, split: str, net: Source, images: torch.Tensor, layers: list[str]) -> Job | None:
    """Scan ``layers`` of ``net`` over ``images`` in a background thread, once per (checkpoint, data, split, count),
    and return that pass (ended or not); None when precomputing is off, another pass is running, or every scan was
    on disk already (remembered, so later calls return an ended, empty pass without looking at the disk)."""
    key = (stamp, source, split, len(images))
    with _LOCK:
        if not enabled() or key in _JOBS:
            return _JOBS.get(key)
        if any(not j.ended.is_set() for j in _JOBS.values()):
            return None  # one pass at a time: a later rerun starts this one
        try:
            missing = [name for name, k in scans.disk_keys(stamp, split, layers, images).items() if not scans.find(k)]
        except AllconvError:
            return None  # the checkpoint went away: the views say so
        if not missing or len(images) == 0:  # remembered as done, so later reruns skip the disk checks
            _JOBS[key] = Job([], ended=_ended())
            return None
        job = _JOBS[key] = Job(missing)
    model = copy.deepcopy(net.model)
    threading.Thread(target=_run, args=(job, key, model, net, images), name="allconv-precompute", daemon=True).start()
    return job


def running(stamp: str, source: str, split: str, layer: str, count: int) -> Job | None:
    """The background pass that is scanning ``layer`` for this checkpoint and data, if one is still running."""
    with _LOCK:
        job = _JOBS.get((stamp, source, split, count))
    return job if job is not None and layer in job.layers and not job.ended.is_set() else None


def _yield_cpu() -> None:
    """Run this thread at the lowest priority, so visitors' requests go first; the worker threads torch starts for it
    inherit the priority (each thread that starts parallel work gets its own team)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: the pass still runs


def _run(job: Job, key: tuple[str, str, str, int], model: torch.nn.Module, net: Source, images: torch.Tensor) -> None:
    stamp, source, split, count = key

    def progress(done: int, total: int) -> None:
        job.done, job.total = done, total

    _yield_cpu()
    t0 = time.perf_counter()
    try:
        found = scan_layers(model, images, net.preprocess, layers=job.layers, top_k=min(SCAN_TOP_K, count),
                            batch_size=BATCH, progress=progress, split=split)
        keys = scans.disk_keys(stamp, split, list(found), images)
        for name, s in found.items():
            figure2.save_scan(s, scans.scan_path(keys[name]))
        logging.getLogger("allconv.app").info("precomputed Figure 2 scans of %d layers over %d images in %.1f s",
                                              len(found), count, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failed pass leaves each layer to its own scan
        job.error = f"{type(e).__name__}: {e}"
        logging.getLogger("allconv.app").exception("precomputing Figure 2 scans failed")
    finally:
        job.ended.set()
