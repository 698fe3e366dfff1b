"""Background Figure 2 scans (``app.precompute``): one pass scans every layer of the opened net, saves each where the
Layer view looks, the view waits for a pass in progress instead of scanning again, and the picks are the ones a
scan of that layer alone gives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app import cache, precompute, scans, sources
from app.config import SCAN_TOP_K
from app.lru import BoundedLRU
from appkit import ok, run
from vis import figure2


@pytest.fixture()
def warm(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    monkeypatch.setenv("ALLCONV_PRECOMPUTE", "1")
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))  # a cold disk cache for this test
    monkeypatch.setattr(precompute, "_JOBS", {})
    monkeypatch.setattr(cache, "_SCANS", BoundedLRU(16, 1 << 26))  # no scan in memory from an earlier test either
    return env


def _job(env: dict[str, Path]) -> precompute.Job:
    stamp = sources.stamp(env["ckpt"])
    (job,) = [j for k, j in precompute._JOBS.items() if k[0] == stamp]
    return job


def test_opening_a_net_scans_every_layer_once_in_the_background(warm: dict[str, Path]) -> None:
    ok(run())
    job = _job(warm)
    assert job.layers == [f"conv{i}" for i in range(1, 10)]
    job.ended.wait()
    assert not job.error and job.done == job.total == 20
    stamp, source = sources.stamp(warm["ckpt"]), str(warm["data"])
    net = cache.model(stamp)
    images = cache.dataset(source).x_test
    for layer in ("conv1", "conv6", "conv9"):
        saved = figure2.load_scan(scans.scan_path(scans.disk_keys(stamp, "test", [layer], images)[layer]))
        alone = figure2.scan(net.model, images, net.preprocess, layer=layer, top_k=SCAN_TOP_K, progress=False)
        for name in ("values", "image_index", "positions", "boxes"):
            np.testing.assert_array_equal(getattr(saved, name), getattr(alone, name), err_msg=f"{layer} {name}")
    ok(run())  # a second page: everything is on disk, no new pass
    assert len(precompute._JOBS) == 1


def test_the_layer_view_waits_for_the_pass_in_progress(warm: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real = scans.compute
    monkeypatch.setattr(scans, "compute", lambda *a, **k: computed.append(a[3]) or real(*a, **k))
    slow = precompute.scan_layers
    monkeypatch.setattr(precompute, "scan_layers", lambda *a, **k: time.sleep(1.5) or slow(*a, **k))  # still running
    monkeypatch.setattr(precompute, "STALL_S", 600.0)  # however busy this machine (the pass runs at the lowest priority)
    at = ok(run({"view": "Layer", "layer": "conv6"}))
    _job(warm).ended.wait()
    assert computed == []  # the view took the background pass's scan from disk
    assert len(at.get("vega_lite_chart")) == 3  # and drew its three figures


def test_off_switch_and_one_pass_at_a_time(warm: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a = sources.stamp(warm["ckpt"])
    net = cache.model(a)
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    monkeypatch.setenv("ALLCONV_PRECOMPUTE", "0")
    assert precompute.start(a, "", "test", net, images, ["conv1"]) is None and not precompute._JOBS
    monkeypatch.setenv("ALLCONV_PRECOMPUTE", "1")
    busy = precompute._JOBS[("busy", "", "test", 1)] = precompute.Job(["conv1"])
    assert precompute.start(a, "", "test", net, images, ["conv1"]) is None  # another pass is running
    busy.ended.set()
    job = precompute.start(a, "", "test", net, images, ["conv1"])
    assert job is not None
    job.ended.wait()
    assert not job.error and precompute.start(a, "", "test", net, images, ["conv1"]) is job


def test_scans_already_on_disk_are_remembered(warm: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ok(run())
    _job(warm).ended.wait()
    monkeypatch.setattr(precompute, "_JOBS", {})  # a restarted server: the scans are on disk
    looked: list[dict] = []
    real = scans.find
    monkeypatch.setattr(scans, "find", lambda key: looked.append(key) or real(key))
    ok(run())
    assert len(looked) == 9 and _job(warm).ended.is_set() and _job(warm).layers == []
    ok(run())
    assert len(looked) == 9  # the second page did not look at the disk again


def test_a_visitor_stops_waiting_for_a_starved_pass() -> None:
    """A pass at the lowest priority on a busy CPU can stall; the Layer view then scans at its own priority."""
    stuck = precompute.Job(["conv6"], done=3, total=10)
    t0 = time.monotonic()
    assert stuck.wait(stall_s=0.6) is False and time.monotonic() - t0 >= 0.6  # returned, though it never ended
    moving = precompute.Job(["conv6"], total=10)

    def advance() -> None:
        for _ in range(10):
            time.sleep(0.3)
            moving.done += 1
        moving.ended.set()

    threading.Thread(target=advance).start()
    assert moving.wait(stall_s=0.6) is True and moving.done == 10  # 3 s in all, but never 0.6 s without progress


def test_the_layer_view_scans_itself_when_the_pass_is_starved(warm: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real = scans.compute
    monkeypatch.setattr(scans, "compute", lambda *a, **k: computed.append(a[3]) or real(*a, **k))
    release = threading.Event()
    slow = precompute.scan_layers
    monkeypatch.setattr(precompute, "scan_layers", lambda *a, **k: release.wait() and slow(*a, **k))  # starved
    monkeypatch.setattr(precompute, "STALL_S", 0.5)
    try:
        at = ok(run({"view": "Layer", "layer": "conv6"}))
        assert computed == ["conv6"] and len(at.get("vega_lite_chart")) == 3
    finally:
        release.set()
        _job(warm).ended.wait()
