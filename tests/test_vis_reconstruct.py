"""vis.reconstruct: exact against a hand-written float64 reference, captum, plain autograd; batching; model untouched."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allconv.errors import AllconvError
from allconv.models import create
from vis import METHODS, reconstruct, reconstruct_at, reconstruct_methods_at

RULES = {
    "backprop": lambda g, z: g * (z > 0),
    "deconvnet": lambda g, z: g.clamp_min(0),
    "guided": lambda g, z: g.clamp_min(0) * (z > 0),
}


def _vjp(fn, inp: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gradient of one linear piece (conv, pool, sum) w.r.t. its input, by plain autograd on that piece alone."""
    leaf = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        return torch.autograd.grad(fn(leaf), leaf, g)[0]


def _seed(fmap: torch.Tensor, channel: int, position) -> torch.Tensor:
    seed = torch.zeros_like(fmap)
    if fmap.ndim == 2:
        seed[:, channel] = 1
    elif position is None:
        seed[:, channel] = 1
    else:
        for i in range(fmap.shape[0]):
            h, w = position if position != "max" else divmod(int(fmap[i, channel].argmax()), fmap.shape[3])
            seed[i, channel, h, w] = 1
    return seed


# --- a chain net: conv / ReLU / max-pool / avg-pool ------------------------------------------------------------


def _chain() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(inplace=True), nn.AvgPool2d(2), nn.Conv2d(8, 5, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).double().eval()


def _chain_reference(net: nn.Sequential, x: torch.Tensor, method: str, upto: int, channel: int, position):
    """Forward layer by layer keeping each input; backward by hand: ReLU rule at ReLUs, piece VJPs elsewhere."""
    inputs, h = [], x
    for layer in list(net)[: upto + 1]:
        inputs.append(h)
        h = torch.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
    g = _seed(h, channel, position)
    for layer, inp in reversed(list(zip(list(net)[: upto + 1], inputs))):
        g = RULES[method](g, inp) if isinstance(layer, nn.ReLU) else _vjp(layer, inp, g)
    return g


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer,upto,channel,position", [
    ("4", 4, 3, "max"), ("4", 4, 5, (2, 7)), ("5", 5, 1, None), (None, 9, 2, "max")])
def test_chain_net_matches_hand_reference(method, layer, upto, channel, position) -> None:
    net = _chain()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = reconstruct(net, x, method=method, layer=layer, channel=channel, position=position)
    ref = _chain_reference(net, x, method, upto, channel, position)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)


def _fully_convolutional() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(5, 3, 1)).double().eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("position", [(1, 6), None, "max"])
def test_position_picks_the_unit_in_a_4d_model_output(method, position) -> None:
    """layer=None on a fully convolutional net: the output is a map, and ``position`` picks its unit."""
    net = _fully_convolutional()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got = reconstruct(net, x, method=method, layer=None, channel=1, position=position)
    ref = _chain_reference(net, x, method, 5, 1, position)
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(got, reconstruct(net, x, method=method, layer="5", channel=1, position=position),
                               atol=0, rtol=0)


def test_position_on_an_output_without_positions() -> None:
    """An (N, C) output: "max" and None both mean the unit itself; an (h, w) pair is refused, not ignored."""
    net = _chain()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    unit = reconstruct(net, x, method="guided", layer=None, channel=2, position="max")
    assert torch.equal(unit, reconstruct(net, x, method="guided", layer=None, channel=2, position=None))
    with pytest.raises(AllconvError, match=r"shape \(2, 5\), with no \(h, w\) positions.*position='max' or None"):
        reconstruct(net, x, method="guided", layer=None, channel=2, position=(0, 0))
    with pytest.raises(AllconvError, match=r"no \(h, w\) positions"):
        reconstruct_at(net, x, method="backprop", layer="9", channels=[0, 1], positions=torch.zeros(2, 2, dtype=int))


# --- a net with a skip connection, a reused in-place ReLU module and functional relus --------------------------


class SkipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # called twice per forward, as in torchvision's BasicBlock
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv0(x))
        identity = a
        b = F.relu(self.conv1(a))
        c = self.conv2(b)
        c += identity
        d = self.relu(c)
        e = self.pool(d)
        f = self.head(e).relu()
        return f.mean((2, 3))


def _skip_reference(net: SkipNet, x: torch.Tensor, method: str, target: int) -> torch.Tensor:
    rule = RULES[method]
    z0 = net.conv0(x)
    a = torch.relu(z0)
    z1 = net.conv1(a)
    b = torch.relu(z1)
    z2 = net.conv2(b) + a
    d = torch.relu(z2)
    e = net.pool(d)
    z3 = net.head(e)
    f = torch.relu(z3)
    g_f = _vjp(lambda t: t.mean((2, 3)), f, _seed(f.mean((2, 3)), target, None))
    g_z3 = rule(g_f, z3)
    g_d = _vjp(net.pool, d, _vjp(net.head, e, g_z3))
    g_z2 = rule(g_d, z2)
    g_z1 = rule(_vjp(net.conv2, b, g_z2), z1)
    g_a = _vjp(net.conv1, a, g_z1) + g_z2  # the skip carries g_z2 straight to a
    return _vjp(net.conv0, x, rule(g_a, z0))


def _skipnet() -> SkipNet:
    torch.manual_seed(3)
    return SkipNet().double().eval()


def _x(n: int = 2, size: int = 8, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_skip_net_matches_hand_reference(method) -> None:
    net, x = _skipnet(), _x()
    with torch.no_grad():
        ref = torch.stack([_skip_reference(net, x[i:i + 1], method, t)[0] for i, t in enumerate([1, 3])])
    got = reconstruct_at(net, x, method=method, layer=None, channels=torch.tensor([1, 3]))
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)


def test_captum_misses_functional_relus_we_do_not() -> None:
    captum = pytest.importorskip("captum.attr")
    net, x = _skipnet(), _x(1)
    with torch.no_grad():
        ref = _skip_reference(net, x, "guided", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum.GuidedBackprop(net).attribute(x.clone().requires_grad_(), target=2)
    ours = reconstruct(net, x, method="guided", layer=None, channel=2)
    assert (theirs - ref).abs().max() > 0.05 * ref.abs().max()  # captum hooks nn.ReLU modules only: F.relu / Tensor.relu run plain
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


def test_backprop_is_plain_autograd_exactly() -> None:
    net, x = _skipnet(), _x()
    leaf = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(leaf)[:, 4].sum(), leaf)[0]
    assert torch.equal(reconstruct(net, x, method="backprop", layer=None, channel=4), plain)


# --- All-CNN-C: captum agrees where it is right; batching; state; threads ---------------------------------------


@pytest.fixture(scope="module")
def allcnn() -> nn.Module:
    torch.manual_seed(0)
    return create("all-cnn-c").double().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _x(2, 16, seed=5)  # All-CNN-C runs on any size >= 12; small keeps float64 fast


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_all_cnn_c_equals_captum(allcnn, images, method) -> None:
    captum = pytest.importorskip("captum.attr")
    cls = {"guided": captum.GuidedBackprop, "deconvnet": captum.Deconvolution}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = cls(allcnn).attribute(images.clone().requires_grad_(), target=7)
    torch.testing.assert_close(reconstruct(allcnn, images, method=method, layer=None, channel=7), theirs,
                               atol=1e-12, rtol=0)


def test_all_cnn_c_neuron_equals_captum(allcnn, images) -> None:
    captum = pytest.importorskip("captum.attr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neuron = captum.NeuronGuidedBackprop(allcnn, allcnn.conv6).attribute(
            images.clone().requires_grad_(), neuron_selector=(5, 2, 3))
    ours = reconstruct(allcnn, images, method="guided", layer="conv6", channel=5, position=(2, 3))
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, neuron, atol=1e-12, rtol=0)


def test_many_channels_equal_one_at_a_time(allcnn, images) -> None:
    chans = [0, 5, 17, 95]
    many = reconstruct(allcnn, images, method="guided", layer="conv3", channel=chans, batch_size=3)
    assert many.shape == (2, 4, 3, 16, 16)
    for k, c in enumerate(chans):
        one = reconstruct(allcnn, images, method="guided", layer="conv3", channel=c)
        torch.testing.assert_close(many[:, k], one, atol=1e-12, rtol=0)


def test_an_integer_tensor_scalar_is_an_int_and_a_float_or_bool_is_refused(allcnn, images) -> None:
    kw = dict(method="guided", layer="conv3")
    one = reconstruct(allcnn, images, channel=5, position=(1, 2), **kw)
    torch.testing.assert_close(reconstruct(allcnn, images, channel=torch.tensor(5),
                                           position=(torch.tensor(1), torch.tensor(2)), **kw), one, atol=0, rtol=0)
    for bad in (torch.tensor(5.0), torch.tensor(True), True):
        with pytest.raises(AllconvError, match="channel must be an int or a sequence of ints"):
            reconstruct(allcnn, images, channel=bad, **kw)
        with pytest.raises(AllconvError, match=r"position must be 'max', None or an \(h, w\) pair of ints"):
            reconstruct(allcnn, images, channel=5, position=(bad, 2), **kw)


def test_one_row_per_pass_is_the_smallest_batch(allcnn, images) -> None:
    whole = reconstruct(allcnn, images, method="guided", layer="conv3", channel=[0, 5])
    torch.testing.assert_close(reconstruct(allcnn, images, method="guided", layer="conv3", channel=[0, 5],
                                           batch_size=1), whole, atol=1e-12, rtol=0)
    with pytest.raises(AllconvError, match="batch_size must be >= 1, got 0"):
        reconstruct(allcnn, images, method="guided", layer="conv3", channel=0, batch_size=0)


def test_reconstruct_at_rows_are_independent(allcnn, images) -> None:
    x = images[[0, 0, 1]]
    got = reconstruct_at(allcnn, x, method="deconvnet", layer="conv2", channels=[3, 8, 3],
                         positions=torch.tensor([[1, 2], [14, 15], [4, 4]]))
    for i, (c, p) in enumerate([(3, (1, 2)), (8, (14, 15)), (3, (4, 4))]):
        one = reconstruct(allcnn, x[i:i + 1], method="deconvnet", layer="conv2", channel=c, position=p)
        torch.testing.assert_close(got[i:i + 1], one, atol=1e-12, rtol=0)


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_untouched(model: nn.Module, snap, x: torch.Tensor, out: torch.Tensor) -> None:
    state, flags, req = snap
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == req
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_model_untouched_after_use_and_after_errors() -> None:
    torch.manual_seed(0)
    model = create("all-cnn-c", batchnorm=True).double().train()  # train mode on purpose: the call uses eval
    x = _x(2, 16, seed=6)
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    snap = _snapshot(model)
    a = reconstruct(model, x, method="guided", layer="conv5", channel=1)
    assert model.training
    model.eval()
    torch.testing.assert_close(a, reconstruct(model, x, method="guided", layer="conv5", channel=1), atol=0, rtol=0)
    model.train()
    with pytest.raises(AllconvError):  # raised after the forward, inside the call
        reconstruct(model, x, method="guided", layer="conv5", channel=999)

    def boom(*_):
        raise RuntimeError("mid-forward")

    model.conv7.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="mid-forward"):  # raised inside the forward
        reconstruct(model, x, method="guided", layer=None, channel=1)
    model.conv7._forward_hooks.clear()
    _assert_untouched(model, snap, x, out)


def test_two_threads_on_one_model_match_single_thread(allcnn, images) -> None:
    expect = {m: reconstruct(allcnn, images, method=m, layer="conv4", channel=[2, 9]) for m in ("guided", "backprop")}
    got, errors, start = {}, [], threading.Barrier(2)

    def work(method: str) -> None:
        try:
            start.wait(5)
            for _ in range(3):
                got[method] = reconstruct(allcnn, images, method=method, layer="conv4", channel=[2, 9])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m,)) for m in expect]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for m in expect:
        assert torch.equal(got[m], expect[m])


@pytest.mark.parametrize("net_name", ["all-cnn-c", "model-c", "skipnet", "resnet18"])
def test_one_forward_for_all_methods_equals_one_forward_each(net_name: str) -> None:
    """reconstruct_methods_at (one forward, a backward per method) gives bit-identical signals to a reconstruct_at
    call per method, in float32, on strided, max-pooled, skip and torchvision nets (batches split mid-way)."""
    torch.manual_seed(0)
    if net_name == "skipnet":
        net, x = _skipnet().float(), _x(5, 8).float()
    elif net_name == "resnet18":
        net, x = pytest.importorskip("torchvision.models").resnet18(weights=None).eval(), torch.randn(3, 3, 32, 32)
    else:
        net, x = create(net_name).eval(), torch.randn(5, 3, 32, 32)
    layer = {"skipnet": None, "resnet18": "layer2"}.get(net_name, "conv5")
    chans = torch.arange(len(x)) % 3
    pos = torch.tensor([[i % 3, (2 * i) % 4] for i in range(len(x))]) if net_name == "resnet18" else "max"
    shared = reconstruct_methods_at(net, x, methods=list(METHODS), layer=layer, channels=chans, positions=pos,
                                    batch_size=2)
    assert list(shared) == list(METHODS)
    for m in METHODS:
        alone = reconstruct_at(net, x, method=m, layer=layer, channels=chans, positions=pos, batch_size=2)
        assert alone.abs().sum() > 0 and torch.equal(shared[m], alone), m
    assert not torch.equal(shared["guided"], shared["deconvnet"])


def test_shared_forward_refuses_like_its_strictest_method() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(AllconvError, match="gelu"):
        reconstruct_methods_at(net, x, methods=["backprop", "guided"], layer="2", channels=[0, 1])
    got = reconstruct_methods_at(net, x, methods=["backprop"], layer="2", channels=[0, 1])
    assert torch.equal(got["backprop"], reconstruct_at(net, x, method="backprop", layer="2", channels=[0, 1]))
    with pytest.raises(AllconvError, match="unknown method 'smooth'"):
        reconstruct_methods_at(net, x, methods=["smooth"], layer="2", channels=[0, 1])


def test_refuses_other_activations_but_backprop_works() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3), nn.Sigmoid()).eval()
    x = torch.randn(1, 3, 8, 8)
    for method in ("guided", "deconvnet"):
        with pytest.raises(AllconvError, match="gelu"):
            reconstruct(net, x, method=method, layer="3", channel=0)
    assert reconstruct(net, x, method="backprop", layer="3", channel=0).abs().sum() > 0
    # below the first non-ReLU activation the forward stops early, so the rule is well defined
    assert reconstruct(net, x, method="guided", layer="0", channel=0).abs().sum() > 0


def test_torchvision_nets_run() -> None:
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    resnet = tv.resnet18(weights=None).eval()
    r = reconstruct(resnet, x, method="guided", layer="layer3", channel=[0, 7])
    assert r.shape == (1, 2, 3, 32, 32) and r.abs().sum() > 0
    with torch.device("meta"):  # skip initializing the 100M-weight classifier; the forward stops before it
        vgg = tv.vgg11(weights=None).eval()
    vgg.features.to_empty(device="cpu")
    for m in vgg.features.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    v = reconstruct(vgg, x, method="deconvnet", layer="features.10", channel=3)
    assert v.shape == (1, 3, 32, 32) and v.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    net = _skipnet()
    x = _x()
    cpu = reconstruct(net, x, method="guided", layer="conv1", channel=[0, 2])
    gpu = reconstruct(net.cuda(), x.cuda(), method="guided", layer="conv1", channel=[0, 2])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-10, rtol=0)


def test_dtype_and_device_preserved() -> None:
    net = _chain().float()
    x = torch.randn(2, 3, 16, 16)
    out = reconstruct(net, x, method="guided", layer="4", channel=1)
    assert out.dtype == x.dtype and out.device == x.device


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="lrp"), "guided, deconvnet, backprop"),
    (dict(layer="conv99"), "unknown layer 'conv99'; valid: conv1, conv2"),
    (dict(channel=96), "channel 96 out of range .* 96 channels; use 0..95"),
    (dict(channel=-1), "channel -1 out of range"),
    (dict(channel=[]), "empty"),
    (dict(channel="a"), "channel must be"),
    (dict(position=(8, 0)), r"position \(8, 0\) out of range .* 8x8"),
    (dict(position="min"), "position must be"),
    (dict(position=(1,)), "position must be"),
])
def test_bad_input_messages(allcnn, kwargs, match) -> None:
    args = dict(method="guided", layer="conv3", channel=0, position="max") | kwargs
    with pytest.raises(AllconvError, match=match):
        reconstruct(allcnn, _x(1, 16), **args)


def test_bad_images_messages(allcnn) -> None:
    with pytest.raises(AllconvError, match="float"):
        reconstruct(allcnn, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), method="guided", layer="conv1", channel=0)
    with pytest.raises(AllconvError, match=r"\(N, 3, H, W\)"):
        reconstruct(allcnn, torch.zeros(3, 32, 32), method="guided", layer="conv1", channel=0)
    with pytest.raises(AllconvError, match="channels"):
        reconstruct(allcnn, torch.zeros(1, 1, 32, 32, dtype=torch.float64), method="guided", layer="conv1", channel=0)
    with pytest.raises(AllconvError, match="float32 on cpu but the model is torch.float64"):
        reconstruct(allcnn, torch.zeros(1, 3, 16, 16), method="guided", layer="conv1", channel=0)
    with pytest.raises(AllconvError, match="one entry per image"):
        reconstruct_at(allcnn, _x(2, 32), method="guided", layer="conv1", channels=[1])
    with pytest.raises(AllconvError, match=r"\(N, 2\)"):
        reconstruct_at(allcnn, _x(2, 32), method="guided", layer="conv1", channels=[1, 2], positions=[1, 2])
