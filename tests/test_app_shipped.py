"""Scans found by content (``app.identity``), and the shipped nets' scans (``app.shipped``, ``checkpoints/scans/``):
the Layer view of a shipped net opens from them on a fresh clone, without scanning."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import allconv.checkpoint
from allconv.data import load as load_data
from allconv.models import create
from allconv.errors import AllconvError
from app import cache, compute, identity, precompute, scans, shipped, sources
from app.config import DEFAULT_SCAN_LIMIT
from app.lru import BoundedLRU
from appkit import ok, run
from vis.maps import activations
from vis.sources import checkpoint_source


def test_a_scan_is_named_by_the_checkpoint_and_images_contents_not_their_paths(env: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    images = load_data(str(env["data"])).x_test
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(env["ckpt"], copy)  # another path and file time, the same bytes
    one = scans.disk_keys(sources.stamp(env["ckpt"]), "test", ["conv6"], images)
    assert sources.stamp(copy) != sources.stamp(env["ckpt"])
    assert scans.disk_keys(sources.stamp(copy), "test", ["conv6"], images.clone()) == one
    moved = images.clone()
    moved[3, 1, 4, 1] ^= 1  # one pixel's lowest bit
    assert scans.disk_keys(sources.stamp(env["ckpt"]), "test", ["conv6"], moved)["conv6"]["images"] != \
        one["conv6"]["images"]
    meta, _ = allconv.checkpoint.load_meta(env["ckpt"])
    other = allconv.checkpoint.save(tmp_path / "other.safetensors", create("all-cnn-c"), meta)  # new weights
    assert scans.disk_keys(sources.stamp(other), "test", ["conv6"], images)["conv6"]["checkpoint"] != \
        one["conv6"]["checkpoint"]
    gone = sources.stamp(shutil.copy(other, tmp_path / "gone.safetensors"))
    (tmp_path / "gone.safetensors").unlink()
    with pytest.raises(AllconvError, match=r"^checkpoint not readable: gone.safetensors \(moved or deleted"):
        identity.checkpoint(gone)


def test_the_layer_view_opens_a_shipped_scan_without_scanning(env: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allconv.checkpoint, "SHIPPED_DIR", tmp_path / "checkpoints")
    said: list[str] = []
    made = shipped.make([env["ckpt"]], scans.shipped(), limit=20, data=str(env["data"]), say=said.append)
    assert len(made) == 9 and all(p.parent == scans.shipped() for p in made) and len(said) == 1
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "fresh"))  # a fresh clone: nothing in the app's own cache
    monkeypatch.setenv("ALLCONV_PRECOMPUTE", "1")
    monkeypatch.setattr(precompute, "_JOBS", {})
    monkeypatch.setattr(cache, "_SCANS", BoundedLRU(16, 1 << 26))  # nor in memory
    computed: list[str] = []
    real = scans.compute
    monkeypatch.setattr(scans, "compute", lambda *a, **k: computed.append(a[3]) or real(*a, **k))
    at = ok(run({"view": "Layer", "layer": "conv6"}))
    assert computed == [] and len(at.get("vega_lite_chart")) == 3
    assert [j.layers for j in precompute._JOBS.values()] == [[]]  # no background pass: every layer is shipped
    assert not (tmp_path / "fresh" / "scans").exists()  # nothing written: read from the shipped folder
    (scans.shipped() / "conv6-stale.npz").write_bytes(b"")  # a scan of a checkpoint since replaced
    said.clear()
    assert shipped.make([env["ckpt"]], scans.shipped(), limit=20, data=str(env["data"]), say=said.append) == made
    assert said == ["removed conv6-stale.npz: no shipped net names it"]  # and nothing rescanned


def test_shipped_cifar10_nets_have_current_scans_with_true_values(cifar10: str) -> None:
    """Every shipped CIFAR-10 net has a scan of each layer over the 10,000 test images, under the key the app
    computes, so a retrained checkpoint without new scans fails here; All-CNN-C's top values are its activations."""
    images = load_data(cifar10).x_test[:DEFAULT_SCAN_LIMIT]
    nets = [checkpoint_source(str(p), torch.device("cpu")) for p in allconv.checkpoint.shipped()]
    assert sum(net.data in (None, "cifar10") for net in nets) >= 12
    for path, net in zip(allconv.checkpoint.shipped(), nets):
        if net.data not in (None, "cifar10"):
            continue  # the CIFAR-100 net's scans are of CIFAR-100, which CI does not unpack
        for layer, key in scans.disk_keys(sources.stamp(path), "test", compute.layers(net), images).items():
            assert scans.find(key) == [scans.scan_path(key, scans.shipped())], f"{path.name} {layer}: no current scan"
    net = checkpoint_source(str(allconv.checkpoint.SHIPPED_DIR / "all-cnn-c.safetensors"), torch.device("cpu"))
    for layer in ("conv3", "conv9"):
        key = scans.disk_keys(sources.stamp(allconv.checkpoint.SHIPPED_DIR / "all-cnn-c.safetensors"), "test", [layer],
                              images)[layer]
        s = scans.figure2.load_scan(scans.find(key)[0])
        f = np.arange(0, len(s.values), 7)
        maps = activations(net.model, net.preprocess(images[s.image_index[f, 0]]), layer)
        got = maps[np.arange(len(f)), f, s.positions[f, 0, 0], s.positions[f, 0, 1]]
        torch.testing.assert_close(got, torch.from_numpy(s.values[f, 0]), rtol=1e-4, atol=1e-4)


def test_the_shipped_cifar100_net_has_current_scans_of_cifar100(cifar100_npz: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CIFAR-100 net opens on CIFAR-100 (its own dataset, by name), so its scans are of CIFAR-100's test split."""
    monkeypatch.setenv("ALLCONV_CIFAR100", str(cifar100_npz))
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path))  # decoded arrays: never the user's cache
    path = allconv.checkpoint.SHIPPED_DIR / "all-cnn-c-cifar100.safetensors"
    net = checkpoint_source(str(path), torch.device("cpu"))
    images = load_data(net.data).x_test[:DEFAULT_SCAN_LIMIT]
    for layer, key in scans.disk_keys(sources.stamp(path), "test", compute.layers(net), images).items():
        assert scans.find(key) == [scans.scan_path(key, scans.shipped())], f"{layer}: no current scan"
