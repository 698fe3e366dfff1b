"""allconv-visualize end to end on a tiny random All-CNN-C checkpoint and a 40-image .npz: Figure 2, --image on odd
images (what was done to it, the prediction, class names on conv9), default filters that fit every layer,
--filter-maps without a scan, the default checkpoint/dataset lookup, and every bad input as one line with exit code
2."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allconv import checkpoint
from allconv.checkpoint import Meta, save
from allconv.models import create
from allconv.preprocess import Preprocess
from vis import METHODS, cli, figure2
from vis.cli import main
from vis.layout import GAP, HEAD_FONT, HEAD_H, PAD, TITLE_H, label_width, text_width

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny.npz (20 train / 20 test random images), ck.safetensors (random All-CNN-C) and odd input files."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "tiny.npz", x_train=x[:20], y_train=np.arange(20) % 10, x_test=x[20:], y_test=np.arange(20) % 10)
    torch.manual_seed(0)
    pre = Preprocess.fit("standardize", torch.from_numpy(x).permute(0, 3, 1, 2))
    save(root / "ck.safetensors", create("all-cnn-c"), Meta(model="all-cnn-c", preprocess=pre))
    Image.fromarray(rng.integers(0, 256, (20, 50, 4), dtype=np.uint8), "RGBA").save(root / "wide.png")
    Image.fromarray(rng.integers(0, 256, (28, 40), dtype=np.uint8), "L").save(root / "gray.jpg")
    (root / "notes.png").write_text("not an image")
    good = (root / "ck.safetensors").read_bytes()
    (root / "corrupt.safetensors").write_bytes(good[:8] + b"\x00" * 64)
    (root / "a_file").write_text("")
    return {"root": root, "data": root / "tiny.npz", "ckpt": root / "ck.safetensors"}


@pytest.fixture(autouse=True)
def _cache(assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_CACHE", str(assets["root"] / "cache"))


def run(assets: dict[str, Path], *args: str, data: bool = True) -> None:
    """``main`` with the tiny checkpoint (and dataset), which must succeed."""
    base = ["--checkpoint", str(assets["ckpt"]), "--quiet"] + (["--data", str(assets["data"])] if data else [])
    assert main(base + list(args)) == 0


def _lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    out, err = capsys.readouterr()
    return out.splitlines(), err.splitlines()


# --- Figure 2 ------------------------------------------------------------------------------------------------------

def test_layer_conv6_end_to_end(assets, tmp_path: Path, capsys) -> None:
    run(assets, "--layer", "conv6", "--limit", "12", "--filters", "0-2", "--top-k", "3", "--out", str(tmp_path))
    out, err = _lines(capsys)
    png, npz = tmp_path / "figure2-conv6.png", tmp_path / "figure2-conv6.npz"
    assert f"wrote {png}" in out and f"wrote {npz}" in out and not err
    assert out[0] == f"checkpoint: {assets['ckpt']} (all-cnn-c, cpu)" and "scanned 12 test images" in out[1]
    s = figure2.load_scan(npz)
    assert (s.layer, s.top_k, s.num_images, s.filters.tolist(), list(s.recons)) == ("conv6", 3, 12, [0, 1, 2],
                                                                                    list(METHODS))
    assert s.values.shape == (192, 3) and s.image_index.max() < 12 and s.patches.shape == (3, 3, 3, 19, 19)
    assert s.data == "tiny"
    panel = 3 * (19 * 3 + 1) + 1
    title = "ck (all-cnn-c), conv6: each filter's top 3 patches in 12 tiny test images"
    body = label_width(["conv6 #0", "conv6 #1", "conv6 #2"]) + 4 * panel + 3 * GAP
    width = max(body, text_width(title, HEAD_FONT) + 2 * PAD)
    assert Image.open(png).size == (width, HEAD_H + TITLE_H + panel)


def test_one_method_two_layers_share_a_scan(assets, tmp_path: Path, capsys) -> None:
    run(assets, "--layer", "conv2,conv9", "--method", "guided", "--limit", "5", "--filters", "1,3", "--top-k", "4",
        "--out", str(tmp_path))
    out, _ = _lines(capsys)
    assert sum("scanned" in line for line in out) == 1
    for layer, size, px in (("conv2", 5, 25), ("conv9", 27, 81)):  # conv2's 5x5 tiles enlarged to >= 24 px
        s = figure2.load_scan(tmp_path / f"figure2-{layer}.npz")
        assert list(s.recons) == ["guided"] and s.recons["guided"].shape == (2, 4, 3, size, size)
        panel_w, panel_h = 4 * (px + 1) + 1, 2 * (px + 1) + 1
        img = Image.open(tmp_path / f"figure2-{layer}.png")
        assert img.height == HEAD_H + TITLE_H + panel_h and img.width >= label_width([layer]) + 2 * panel_w + GAP


def test_default_checkpoint_data_and_out(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    """No --checkpoint, --data or --out: the shipped All-CNN-C, the offline CIFAR-10 copy, out/vis/all-cnn-c/."""
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    (shipped / "all-cnn-c.safetensors").write_bytes(assets["ckpt"].read_bytes())
    monkeypatch.setattr(checkpoint, "SHIPPED_DIR", shipped)
    monkeypatch.setenv("ALLCONV_CIFAR10", str(assets["data"]))
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "no-torchvision-here"))
    monkeypatch.chdir(tmp_path)
    assert main(["--layer", "conv6", "--limit", "4", "--filters", "0", "--top-k", "2", "--quiet"]) == 0
    out, _ = _lines(capsys)
    assert out[0].startswith(f"checkpoint: {shipped / 'all-cnn-c.safetensors'}")
    assert (tmp_path / "out" / "vis" / "all-cnn-c" / "figure2-conv6.png").is_file()


def test_a_cifar100_net_scans_cifar100_by_default(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    """Without --data, a net trained on CIFAR-100 scans CIFAR-100 (its metadata names it), with its class names."""
    rng = np.random.default_rng(2)
    names = [f"fine{i}" for i in range(100)]
    np.savez(tmp_path / "c100.npz", x_train=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(100), x_test=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
             y_test=np.array([5, 6, 7, 8, 9, 10]), label_names=np.array(names))
    pre = Preprocess.fit("standardize", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    ck = tmp_path / "c100.safetensors"
    save(ck, create("all-cnn-c", num_classes=100), Meta(model="all-cnn-c", num_classes=100, classes=names,
                                                         preprocess=pre, config={"data": "cifar100"}))
    monkeypatch.setenv("ALLCONV_CIFAR100", str(tmp_path / "c100.npz"))
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "no-torchvision-here"))
    assert main(["--checkpoint", str(ck), "--layer", "conv9", "--filters", "5", "--top-k", "2", "--out",
                 str(tmp_path / "out"), "--quiet"]) == 0
    s = figure2.load_scan(tmp_path / "out" / "figure2-conv9.npz")
    assert s.data == "c100" and s.num_images == 6


def test_newest_run_when_nothing_is_shipped(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(checkpoint, "SHIPPED_DIR", tmp_path / "none")
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(("old", "new")):
        target = tmp_path / "runs" / name / "model.safetensors"
        target.parent.mkdir(parents=True)
        target.write_bytes(assets["ckpt"].read_bytes())
        os.utime(target, (1e9 + i, 1e9 + i))
    assert main(["--image", str(assets["root"] / "wide.png"), "--filters", "0", "--method", "guided"]) == 0
    out, _ = _lines(capsys)
    assert out[0].startswith("checkpoint: runs/new (all-cnn-c")
    assert (tmp_path / "out" / "vis" / "new" / "image-wide-conv6.png").is_file()
    for run_dir in (tmp_path / "runs").iterdir():
        (run_dir / "model.safetensors").unlink()
    assert main(["--image", str(assets["root"] / "wide.png")]) == 2
    assert _lines(capsys)[1] == ["error: no checkpoint found (no shipped checkpoints/all-cnn-c.safetensors, no "
                                 "runs/*/model.safetensors); train one with allconv-train or pass --checkpoint PATH"]


# --- one image -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,mode", [("wide.png", "RGBA"), ("gray.jpg", "L")])
def test_image_any_size_or_mode(assets, tmp_path: Path, name: str, mode: str, capsys) -> None:
    src = assets["root"] / name
    assert Image.open(src).mode == mode and Image.open(src).size != (32, 32)
    run(assets, "--image", str(src), "--layer", "conv6", "--filters", "0,5", "--out", str(tmp_path), data=False)
    stem = f"image-{src.stem}-conv6"
    out = _lines(capsys)[0]
    assert f"wrote {tmp_path / (stem + '.png')}" in out
    how = {"RGBA": "50x20 RGBA: center-cropped to 20x20, transparency composited on grey, resized to 32x32",
           "L": "40x28 L: center-cropped to 28x28, grayscale to RGB, resized to 32x32"}[mode]
    assert out[1] == f"image {src}: {how}"
    with np.load(tmp_path / f"{stem}.npz") as z:
        assert z["image"].shape == (3, 32, 32) and z["image"].dtype == np.uint8
        assert z["filters"].tolist() == [0, 5] and z["activations"].shape == (2, 8, 8)
        assert all(z[f"recon_{m}"].shape == (2, 3, 32, 32) for m in METHODS)
        assert z["probabilities"].shape == (10,) and abs(float(z["probabilities"].sum()) - 1) < 1e-5
        if mode == "L":
            assert (z["image"][0] == z["image"][1]).all() and (z["image"][1] == z["image"][2]).all()
    tile = 32 * 3 + 1
    img = Image.open(tmp_path / f"{stem}.png")
    assert img.height == HEAD_H + TITLE_H + 2 * tile + 1 and img.width > label_width(["conv6 #0"]) + 5 * tile + 4 * GAP


@pytest.mark.parametrize("layer,height", [("conv1", 4 * 25 + 1), ("conv6", 4 * 25 + 1), ("conv8", 4 * 24)])
def test_filter_maps(assets, tmp_path: Path, layer: str, height: int, capsys) -> None:
    run(assets, "--image", str(assets["root"] / "wide.png"), "--layer", layer, "--filters", "0-3", "--method",
        "backprop", "--filter-maps", "--scale", "3", "--out", str(tmp_path), data=False)
    png = tmp_path / f"filters-{layer}.png"
    assert f"wrote {png}" in _lines(capsys)[0]
    img = Image.open(png)
    assert img.height == HEAD_H + TITLE_H + height  # rows >= 24 px, so labels never touch
    if layer == "conv6":  # 32 of its 96 3x3 kernels per filter, 8x upscaled (to 24 px)
        assert img.width == label_width([f"conv6 #{i}" for i in range(4)]) + 32 * (3 * 8 + 1) + 1


def test_default_filters_fit_every_layer(assets, tmp_path: Path, capsys) -> None:
    """No --filters: conv9's 10 filters (the old default 0-15 failed there), conv6's first 16."""
    run(assets, "--image", str(assets["root"] / "wide.png"), "--layer", "conv9,conv6", "--method", "guided",
        "--out", str(tmp_path), data=False)
    for layer, n in (("conv9", 10), ("conv6", 16)):
        with np.load(tmp_path / f"image-wide-{layer}.npz") as z:
            assert z["filters"].tolist() == list(range(n)) and z["recon_guided"].shape == (n, 3, 32, 32)


def test_image_prints_the_prediction_and_names_class_rows(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    seen: list[tuple[list[str], str]] = []
    real = cli.image_figure
    monkeypatch.setattr(cli, "image_figure", lambda raw, acts, sigs, labels, scale, title: seen.append(
        (labels, title)) or real(raw, acts, sigs, labels, scale, title))
    run(assets, "--image", str(assets["root"] / "wide.png"), "--layer", "conv9,conv6", "--filters", "0-9",
        "--method", "guided", "--out", str(tmp_path), data=False)
    out = _lines(capsys)[0]
    with np.load(tmp_path / "image-wide-conv9.npz") as z:
        probs = z["probabilities"]
    best = int(probs.argmax())
    order = np.argsort(-probs, kind="stable")[:3]
    assert out[2] == "prediction: " + ", ".join(f"class {i} {probs[i]:.0%}" for i in order)
    (nine, title9), (six, title6) = seen
    assert nine[best] == f"conv9 #{best} class {best} {probs[best]:.0%}, predicted"
    assert nine[(best + 1) % 10] == f"conv9 #{(best + 1) % 10} class {(best + 1) % 10} {probs[(best + 1) % 10]:.0%}"
    assert six == [f"conv6 #{f}" for f in range(10)]  # only the class layer's channels are classes
    assert title9 == f"ck (all-cnn-c), conv9 on wide.png: predicted class {best} {probs[best]:.0%}"
    assert title6.startswith("ck (all-cnn-c), conv6 on wide.png")


def test_filter_maps_alone_draws_only_the_weights(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    from allconv import data

    def no_scan(*a, **k):
        raise AssertionError("--filter-maps alone must not load or scan a dataset")

    real_load = data.load
    monkeypatch.setattr(data, "load", no_scan)
    run(assets, "--layer", "conv1", "--filter-maps", "--out", str(tmp_path), data=False)
    out = _lines(capsys)[0]
    assert out[1:] == [f"wrote {tmp_path / 'filters-conv1.png'}"] and sorted(os.listdir(tmp_path)) == [
        "filters-conv1.png"]
    monkeypatch.setattr(data, "load", real_load)
    run(assets, "--layer", "conv1", "--filter-maps", "--limit", "4", "--top-k", "2", "--out", str(tmp_path))
    assert "scanned 4 test images" in _lines(capsys)[0][1]  # asking for a scan option asks for the scan too
    assert (tmp_path / "figure2-conv1.png").is_file()


# --- bad input -----------------------------------------------------------------------------------------------------

BAD = {
    "unknown layer": (["--layer", "conv99"], "error: unknown layer 'conv99'; valid: conv1, conv2, conv3, conv4, "
                      "conv5, conv6, conv7, conv8, conv9"),
    "not a map layer": (["--layer", "flatten"], "error: layer 'flatten' gives shape (1, 10), not feature maps"),
    "unknown method": (["--method", "lrp"], "error: unknown method 'lrp'; choose one of: guided, deconvnet, "
                       "backprop, all"),
    "filter range": (["--filters", "0-500"], "error: filter 500 out of range: the layer has 192 filters; use 0-191"),
    "explicit filters past conv9": (["--layer", "conv9", "--filters", "0-15"],
                                    "error: filter 15 out of range: the layer has 10 filters; use 0-9"),
    "reversed range": (["--filters", "7-3"], "error: bad --filters '7-3'; give indices and ranges like 0-15 or 0-3,7"),
    "filter words": (["--filters", "all"], "error: bad --filters 'all'"),
    "unreadable image": (["--image", "{root}/notes.png"], "error: cannot read image {root}/notes.png: "),
    "missing image": (["--image", "{root}/nope.png"], "error: cannot read image {root}/nope.png: "),
    "corrupt checkpoint": (["--checkpoint", "{root}/corrupt.safetensors"],
                           "error: {root}/corrupt.safetensors is corrupt or truncated"),
    "missing checkpoint": (["--checkpoint", "{root}/nope.safetensors"],
                           "error: checkpoint not found: {root}/nope.safetensors"),
    "missing dataset": (["--data", "{root}/nope.npz"], "error: dataset '{root}/nope.npz' not found"),
    "top-k": (["--top-k", "0"], "error: --top-k must be >= 1, got 0"),
    "not a number": (["--limit", "ten"], "error: argument --limit: invalid int value: 'ten'; see allconv-visualize"),
    "device": (["--device", "tpu"], "error: unknown device 'tpu'; choose auto, cpu, cuda or cuda:N"),
    "out is a file": (["--image", "{root}/wide.png", "--filters", "0", "--method", "guided", "--out",
                       "{root}/a_file"], "error: File exists ({root}/a_file); check --out"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(assets, case: str, capsys) -> None:
    args, message = BAD[case]
    root = str(assets["root"])
    argv = ["--checkpoint", str(assets["ckpt"]), "--data", str(assets["data"]), "--quiet"]
    if case == "not a number":
        with pytest.raises(SystemExit) as e:
            main(argv + args)
        code = e.value.code
    else:
        code = main(argv + [a.format(root=root) for a in args])
    out, err = _lines(capsys)
    assert code == 2 and not out and len(err) == 1, (code, out, err)
    assert err[0].startswith(message.format(root=root)), err[0]


def test_installed_command_fails_cleanly(assets) -> None:
    """The real process: exit code 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "vis.cli", "--checkpoint", str(assets["ckpt"]), "--layer", "pool1"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "ALLCONV_CACHE": str(assets["root"] / "cache")})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: unknown layer 'pool1'; valid: conv1, conv2, conv3, conv4, conv5, "
                                        "conv6, conv7, conv8, conv9"]


def test_download_without_network_blames_the_download(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(*a, **k):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "tv"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's download calls
    code = main(["--checkpoint", str(assets["ckpt"]), "--data", "cifar10", "--download", "--quiet", "--out",
                 str(tmp_path / "out")])
    out, err = _lines(capsys)
    assert code == 2 and not out and err == ["error: could not download cifar10 ([Errno 111] Connection refused); "
                                             "check the network, or pass --data with an offline .npz / image folder"]


def test_os_error_without_a_file_is_not_blamed_on_out(assets, monkeypatch, capsys) -> None:
    from allconv import data

    def reset(*a, **k):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(data, "load", reset)
    assert main(["--checkpoint", str(assets["ckpt"]), "--quiet", "--limit", "2"]) == 2
    assert _lines(capsys)[1] == ["error: ConnectionResetError: Connection reset by peer"]
