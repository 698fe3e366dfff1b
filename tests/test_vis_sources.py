"""``allconv-visualize --model torchvision:NAME``: random init (said in one line), a saved state dict (.pth or
.safetensors), DEFAULT weights' metadata (classes, transforms) with the download faked, offline as one line,
mismatched or unreadable weights as one line, ``--list-layers`` for torchvision models and our checkpoints, and
``--image`` at 224x224 (short side to 256, center crop). No test downloads anything."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.models._api import WeightsEnum

from allconv.checkpoint import Meta, save
from allconv.models import create
from allconv.preprocess import Preprocess
from vis import sources
from vis.cli import main

MODEL = "torchvision:resnet18"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet18 state dicts (.pth, .safetensors, one with 10 classes), a photo-sized PNG and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, root / "r18.pth")
    save_file(state, str(root / "r18.safetensors"))
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), root / "r18-10.pth")
    torch.save({"module." + k: v for k, v in state.items()}, root / "dp.pth")
    torch.save({"not": "tensors"}, root / "junk.pth")
    (root / "garbage.pth").write_bytes(b"\x00not a pickle")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 4), dtype=np.uint8), "RGBA").save(root / "photo.png")
    x = torch.from_numpy(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8))
    save(root / "ck.safetensors", create("all-cnn-c"), Meta(model="all-cnn-c", preprocess=Preprocess.fit(
        "standardize", x)))
    return {"root": root, **{p.stem.replace("-", "_") + p.suffix.replace(".", "_"): p for p in root.iterdir()}}


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    out, err = capsys.readouterr()
    return out.splitlines(), err.splitlines()


def test_list_layers_torchvision_random_init(capsys) -> None:
    assert main(["--model", MODEL, "--list-layers"]) == 0
    out, err = _out(capsys)
    assert out[:3] == ["model: torchvision:resnet18 (cpu)", "random init: no --weights given",
                       "layers of resnet18 for a 224x224 input (pass one to --layer):"] and not err
    rows = {line.split()[0]: line.split()[1] for line in out[3:]}
    assert rows["conv1"] == "64x112x112" and rows["layer1"] == "64x56x56" and rows["layer4"] == "512x7x7"
    assert rows["layer3.1"] == "256x14x14" and rows["layer2.0.conv1"] == "128x28x28"
    assert not any(k.endswith(("bn1", "relu")) for k in rows)  # norms and activations are not offered


def test_list_layers_leaves_no_hooks() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    sources.layer_shapes(model, 64, torch.device("cpu"))
    assert not any(m._forward_hooks for m in model.modules())


def test_list_layers_our_checkpoint(files, capsys) -> None:
    assert main(["--checkpoint", str(files["ck_safetensors"]), "--list-layers"]) == 0
    out, _ = _out(capsys)
    assert out[0].startswith("checkpoint: ") and out[1] == "layers of ck (all-cnn-c) for a 32x32 input (pass one to " \
                                                          "--layer):"
    rows = {line.split()[0]: line.split()[1] for line in out[2:]}
    assert rows["conv1"] == "96x32x32" and rows["conv6"] == "192x8x8" and rows["conv9"] == "10x6x6"


@pytest.mark.parametrize("key", ["r18_pth", "r18_safetensors"])
def test_image_with_a_state_dict_file(files, key: str, tmp_path: Path, capsys) -> None:
    args = ["--model", MODEL, "--weights", str(files[key]), "--image", str(files["photo_png"]), "--layer",
            "layer2", "--filters", "0-1", "--method", "guided", "--out", str(tmp_path)]
    assert main(args) == 0
    out, err = _out(capsys)
    assert out[1].startswith(f"weights: {files[key]} (ImageNet mean/std") and not err
    assert out[2] == (f"image {files['photo_png']}: 400x300 RGBA: transparency composited on grey, short side "
                      "resized to 256, center-cropped to 224x224")
    assert out[3].startswith("prediction: class ")
    z = np.load(tmp_path / "image-photo-layer2.npz")
    assert z["image"].shape == (3, 224, 224) and z["activations"].shape == (2, 28, 28)
    assert z["recon_guided"].shape == (2, 3, 224, 224) and z["probabilities"].shape == (1000,)
    assert Image.open(tmp_path / "image-photo-layer2.png").height < 224 * 3  # --scale defaults to 1 at 224


def test_figure2_over_a_picture_folder(files, tmp_path: Path, capsys) -> None:
    """--data FOLDER: pictures read as --image reads one (224x224), named in scan order, the unreadable one skipped;
    layer4's RF (435 px) is cut to the whole image, and every tile is the scan's pick."""
    pics = tmp_path / "pics"
    (pics / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(230, 300), (260, 240), (300, 224)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(pics / ("sub" if i else ".") /
                                                                              f"p{i}.png")
    (pics / "bad.jpg").write_bytes(b"junk")
    args = ["--model", MODEL, "--weights", str(files["r18_pth"]), "--data", str(pics), "--layer", "layer2,layer4",
            "--filters", "0-1", "--top-k", "2", "--method", "guided", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    out, err = _out(capsys)
    assert not err and out[2].startswith(f"read 3 pictures from {pics} (short side resized to 256, center-cropped")
    assert out[3].startswith("skipped 1 unreadable file(s), e.g. bad.jpg: cannot read image")
    assert out[4].startswith("scanned 3 images for layer2, layer4 in ")
    names = (tmp_path / "out" / "images.txt").read_text().splitlines()
    assert names == ["0\tp0.png", "1\tsub/p1.png", "2\tsub/p2.png"]
    src = sources.open_source(MODEL, None, str(files["r18_pth"]), torch.device("cpu"))
    photos = [sources.read_image(src, str(pics / n.split("\t")[1]))[0].numpy() for n in names]
    for layer, tile in (("layer2", 99), ("layer4", 224)):
        z = np.load(tmp_path / "out" / f"figure2-{layer}.npz")
        assert z["patches"].shape == (2, 2, 3, tile, tile) and z["recon_guided"].shape == (2, 2, 3, tile, tile)
        assert np.abs(z["recon_guided"]).max() > 0 and set(z["image_index"].ravel()) <= {0, 1, 2}
        assert Image.open(tmp_path / "out" / f"figure2-{layer}.png").size[0] > 0
    z = np.load(tmp_path / "out" / "figure2-layer4.npz")  # a layer4 tile is the whole picture its pick names
    assert all(np.array_equal(z["patches"][f, j], photos[z["image_index"][f, j]]) for f in range(2) for j in range(2))


def test_default_weights_use_their_metadata(files, monkeypatch, tmp_path: Path, capsys) -> None:
    """DEFAULT loads torchvision's weights (faked here: no download) with their classes and transforms."""
    state = torch.load(files["r18_pth"], weights_only=True)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    args = ["--model", MODEL, "--weights", "DEFAULT", "--image", str(files["photo_png"]), "--layer", "layer4",
            "--filters", "0", "--method", "guided", "--out", str(tmp_path)]
    assert main(args) == 0
    out, _ = _out(capsys)
    assert out[1] == "weights: resnet18 ResNet18_Weights.IMAGENET1K_V1"
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    top = out[3].removeprefix("prediction: ").split(", ")[0].rsplit(" ", 1)[0]
    assert top in categories
    src = sources.open_source(MODEL, None, "DEFAULT", torch.device("cpu"))
    assert (src.size, src.resize) == (224, 256) and src.classes == categories
    assert torch.allclose(src.preprocess.stats["mean"].flatten(), torch.tensor(sources.IMAGENET_MEAN))


def test_default_weights_offline_is_one_line(monkeypatch, capsys) -> None:
    def offline(self, *a, **k):
        print('Downloading: "https://download.pytorch.org/models/x.pth" to /tmp/x.pth')  # as torch.hub does
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    assert main(["--model", MODEL, "--weights", "DEFAULT", "--list-layers"]) == 2
    out, err = _out(capsys)
    assert not out and len(err) == 1
    assert err[0].startswith("error: could not download the weights for resnet18 (offline?): pass --weights FILE")


BAD = {
    "mismatched classes": (["--weights", "{r18_10_pth}"], "error: {r18_10_pth} does not fit torchvision:resnet18: "
                           "2 shapes differ, e.g. fc.weight is (10, 512) but the model's is (1000, 512)"),
    "DataParallel keys": (["--weights", "{dp_pth}"], "error: {dp_pth} does not fit torchvision:resnet18: 122 "
                          "missing keys (conv1.weight, bn1.weight, ...), 122 unexpected (module.conv1.weight, "
                          "module.bn1.weight, ...); strip the 'module.' prefix"),
    "not tensors": (["--weights", "{junk_pth}"], "error: {junk_pth} holds a dict, not a state dict of tensors"),
    "not a file format": (["--weights", "{garbage_pth}"], "error: cannot read weights {garbage_pth}: "),
    "missing file": (["--weights", "{root}/nope.pth"], "error: --weights {root}/nope.pth: no such file"),
    "unknown model": (["--model", "torchvision:resnet19"], "error: unknown torchvision model 'resnet19'; e.g. "),
    "no prefix": (["--model", "resnet18"], "error: unknown --model 'resnet18'; give torchvision:NAME"),
    "weights for a checkpoint": (["--model", None, "--weights", "{r18_pth}"], "error: --weights goes with --model"),
    "both sources": (["--checkpoint", "{ck_safetensors}"], "error: give either --model or --checkpoint"),
    "scan without pictures": (["--layer", "layer1", "--limit", "3"], "error: a Figure 2 scan of "
                              "torchvision:resnet18 needs pictures: give --data FOLDER"),
    "scan of an npz": (["--layer", "layer1", "--data", "{root}/x.npz"], "error: --data {root}/x.npz: not an image "
                       "folder"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(files, case: str, capsys) -> None:
    extra, message = BAD[case]
    names = {k: str(v) for k, v in files.items()}
    scan = case.startswith("scan")
    argv = ["--model", MODEL, "--list-layers"] if case not in ("unknown model", "no prefix") and not scan else []
    if scan:
        argv = ["--model", MODEL]
    argv += [a.format(**names) for a in extra if a is not None]
    if None in extra:  # no --model at all
        argv = [a for a in argv if a not in ("--model", MODEL)]
    assert main(argv) == 2
    out, err = _out(capsys)
    assert not out and len(err) == 1 and err[0].startswith(message.format(**names)), err


def test_download_line_shows_once_bytes_flow(capsys) -> None:
    """torch.hub's "Downloading: ..." (stdout) is held until its progress bar (stderr) writes, then shown."""
    import sys

    out = sources._HeldLine(sys.stdout)
    err = out.releasing(sys.stderr)
    out.write('Downloading: "https://x/y.pth" to /tmp/y.pth\n')
    assert capsys.readouterr().out == ""
    err.write("100%|####| 44.7M/44.7M\n")
    captured = capsys.readouterr()
    assert captured.out == 'Downloading: "https://x/y.pth" to /tmp/y.pth\n' and "100%" in captured.err
