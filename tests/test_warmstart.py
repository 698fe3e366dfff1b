"""allconv.warmstart and CIFAR-100: ``--init`` copies every matching layer (a shipped, BN-folded net comes back as
conv + BN computing exactly what it computed), re-initializes the class conv for 100 classes, ``--freeze`` keeps
layers bit-identical through training (BN statistics included), the metadata says where the weights came from, and
CIFAR-100 loads by name from its offline copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from allconv import data, train as T
from allconv.checkpoint import Meta, load, save
from allconv.errors import AllconvError
from allconv.models import create, fold_batchnorm
from allconv.preprocess import Preprocess
from allconv.warmstart import freeze, frozen_layers, init_from


def _trained(batchnorm: bool) -> torch.nn.Module:
    """A 10-class All-CNN-C with random weights and (with BN) non-trivial BN parameters and statistics."""
    torch.manual_seed(3)
    net = create("all-cnn-c", 10, batchnorm=batchnorm)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def _features(net: torch.nn.Module, x: torch.Tensor, upto: str = "conv8") -> torch.Tensor:
    names = [n for n, _ in net.named_children()]
    return net[: names.index(upto) + 1].eval()(x)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _ckpt(tmp_path: Path, net: torch.nn.Module, name: str = "src.safetensors") -> Path:
    pre = Preprocess.fit("standardize", torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    return save(tmp_path / name, net, Meta(model="all-cnn-c", batchnorm=any(
        isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()), preprocess=pre, data="cifar10"))


def test_folded_checkpoint_into_a_bn_net_computes_the_same_features(tmp_path: Path, x: torch.Tensor) -> None:
    src = fold_batchnorm(_trained(True))  # what checkpoints/ ships
    path = _ckpt(tmp_path, src)
    net = create("all-cnn-c", 100, batchnorm=True)
    got = init_from(net, path, x)
    assert got["copied"] == [f"conv{i}" for i in range(1, 9)] and got["reinitialized"] == ["conv9"]
    assert got["from"] == str(path) and got["model"] == "all-cnn-c" and got["data"] == "cifar10"
    with torch.no_grad():
        want = _features(load(path)[0], x)
        torch.testing.assert_close(_features(net, x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        net.train()  # batch statistics on the calibration images: the same function there too
        torch.testing.assert_close(_features(net.train(), x), want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    assert net.conv9.conv.weight.shape[0] == 100 and net.training


@pytest.mark.parametrize("src_bn,dst_bn", [(True, True), (True, False), (False, False)])
def test_other_combinations_copy_exactly(tmp_path: Path, x: torch.Tensor, src_bn: bool, dst_bn: bool) -> None:
    src = _trained(src_bn)
    net = create("all-cnn-c", 10, batchnorm=dst_bn)
    got = init_from(net, _ckpt(tmp_path, src), x)
    assert got["reinitialized"] == []  # same classes: everything copied
    with torch.no_grad():
        want = src(x)
        torch.testing.assert_close(net.eval()(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_a_net_of_another_shape_is_one_line(tmp_path: Path, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    path = save(tmp_path / "a.safetensors", create("model-a"), Meta(model="model-a", preprocess=Preprocess.fit(
        "standardize", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))))
    with pytest.raises(AllconvError, match=r"no layer of its model-a matches a layer of all-cnn-c"):
        init_from(create("all-cnn-c"), path, x)


def test_freeze_specs() -> None:
    net = create("all-cnn-c")
    assert frozen_layers(net, "conv1..conv6") == [f"conv{i}" for i in range(1, 7)]
    assert frozen_layers(net, "conv2,conv4..conv5") == ["conv2", "conv4", "conv5"]
    for spec, msg in (("conv1..conv12", "no layer 'conv12'"), ("conv6..conv1", "comes after"),
                      ("conv1..conv9", "the class layer conv9"), ("fc1", "no layer 'fc1'")):
        with pytest.raises(AllconvError, match=msg):
            frozen_layers(net, spec)
    freeze(net, ["conv1"])
    assert not any(p.requires_grad for p in net.conv1.parameters()) and all(p.requires_grad for p in
                                                                           net.conv2.parameters())


@pytest.fixture
def npz100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A 100-class stand-in for CIFAR-100 (200 train, 100 test images) in cifar10.npz's layout."""
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    path = tmp_path / "c100.npz"
    np.savez(path, x_train=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), y_train=np.arange(200) % 100,
             x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), y_test=np.arange(100) % 100,
             label_names=np.array([f"c{i}" for i in range(100)]))
    return str(path)


def test_fine_tuning_with_frozen_layers(tmp_path: Path, npz100: str) -> None:
    """--init a 10-class BN-folded net into a 100-class run with conv1..conv6 frozen: those layers (weights and BN
    statistics) end bit-identical to the start, the rest moved, and the metadata says where the weights came from."""
    src = _ckpt(tmp_path, fold_batchnorm(_trained(True)))
    cfg = T.TrainConfig(model="all-cnn-c", data=npz100, epochs=1, batch_size=50, lr=0.05, val_size=50,
                        device="cpu", quiet=True, init=str(src), freeze="conv1..conv6", out=str(tmp_path / "run"))
    run = T.Run(cfg.resolved(), tmp_path / "run")
    before = {k: v.clone() for k, v in run.net.state_dict().items()}
    assert run.net.conv9.conv.weight.shape[0] == 100
    run.fit()
    after = run.net.state_dict()
    for k, v in before.items():
        same = torch.equal(v, after[k])
        if k.startswith(tuple(f"conv{i}." for i in range(1, 7))):
            assert same, f"{k} changed although frozen"
        elif k.endswith(("weight", "running_mean")):
            assert not same, f"{k} did not train"
    _, meta = load(tmp_path / "run")[0], load(tmp_path / "run")[1]
    assert meta.metrics["init"]["from"] == str(src) and meta.metrics["init"]["reinitialized"] == ["conv9"]
    assert meta.metrics["frozen"] == [f"conv{i}" for i in range(1, 7)] and meta.num_classes == 100
    assert meta.config["init"] == str(src) and meta.config["freeze"] == "conv1..conv6"


def test_cifar100_by_name_uses_the_offline_copy(tmp_path: Path, npz100: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_CIFAR100", npz100)
    monkeypatch.setenv("ALLCONV_DATA_ROOT", str(tmp_path / "no-torchvision"))
    s = data.load("cifar100")
    assert s.name == "c100" and len(s.classes) == 100 and s.x_train.shape == (200, 3, 32, 32)


def test_real_cifar100(cifar100_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unpacked copy: official split sizes, 100 classes in the official order, 500/100 images per class, and
    the published train mean."""
    monkeypatch.setenv("ALLCONV_CACHE", str(tmp_path / "cache"))
    s = data.load(str(cifar100_npz))
    assert s.x_train.shape == (50000, 3, 32, 32) and s.x_test.shape == (10000, 3, 32, 32)
    assert s.classes[:3] == ["apple", "aquarium_fish", "baby"] and len(s.classes) == 100
    assert (torch.bincount(s.y_train) == 500).all() and (torch.bincount(s.y_test) == 100).all()
    mean = s.x_train.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.5071, 0.4865, 0.4409]), atol=5e-4, rtol=0)
