"""vis.maps (activations, filters), vis.receptive (RF computed from the net, checked by gradient support), vis.render."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from allconv.errors import AllconvError
from allconv.models import create, names
from vis import activations, filter_maps, grid, heatmap, receptive_field, reconstruct, to_image, to_pil


@pytest.fixture(scope="module")
def allcnn() -> nn.Module:
    torch.manual_seed(0)
    return create("all-cnn-c").eval()


def test_activations_shapes_and_early_stop(allcnn) -> None:
    x = torch.randn(2, 3, 32, 32)
    assert activations(allcnn, x, "conv1").shape == (2, 96, 32, 32)
    assert activations(allcnn, x, "conv3").shape == (2, 96, 16, 16)
    assert activations(allcnn, x, "conv7").shape == (2, 192, 6, 6)
    out = activations(allcnn, x, None)
    assert out.shape == (2, 10) and not out.requires_grad
    calls = []
    allcnn.conv5.register_forward_hook(lambda *_: calls.append(1))
    try:
        activations(allcnn, x, "conv3")
    finally:
        allcnn.conv5._forward_hooks.clear()
    assert not calls  # the forward stopped at conv3
    with torch.no_grad():
        expect = allcnn.conv2(allcnn.conv1(x))
    assert torch.equal(activations(allcnn, x, "conv2"), expect)


def test_activations_restore_train_flag() -> None:
    model = create("all-cnn-a").train()
    x = torch.randn(1, 3, 32, 32)
    a, b = activations(model, x, "conv2"), activations(model, x, "conv2")
    assert torch.equal(a, b) and model.training  # dropout was off during the call, and the flag is back


def test_filter_maps(allcnn) -> None:
    assert filter_maps(allcnn, "conv1").shape == (96, 3, 3, 3)
    assert filter_maps(allcnn, "conv8").shape == (192, 192, 1, 1)
    assert filter_maps(allcnn, "conv1.conv").shape == (96, 3, 3, 3)
    w = filter_maps(allcnn, "conv2")
    w.zero_()
    assert allcnn.conv2.conv.weight.abs().sum() > 0  # a copy
    with pytest.raises(AllconvError, match="no conv"):
        filter_maps(create("model-a"), "pool1")
    with pytest.raises(AllconvError, match="unknown layer 'conv0'"):
        filter_maps(allcnn, "conv0")


def test_activation_errors(allcnn) -> None:
    with pytest.raises(AllconvError, match="unknown layer"):
        activations(allcnn, torch.zeros(1, 3, 32, 32), "fc")
    with pytest.raises(AllconvError, match="float"):
        activations(allcnn, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "conv1")


class Gate(nn.Module):
    """Identity; the first time ``owner`` calls it, it waits for ``other`` to run its forwards (so they overlap)."""

    def __init__(self) -> None:
        super().__init__()
        self.owner, self.reached, self.resume = threading.get_ident(), threading.Event(), threading.Event()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() == self.owner and not self.reached.is_set():
            self.reached.set()
            self.resume.wait(20)
        return z


def _gated_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Gate(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(5, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()


def _while_vis_runs(model: nn.Sequential, vis_call, x: torch.Tensor) -> tuple[object, list]:
    """Run ``vis_call()`` here; while it is paused at the gate, another thread runs plain forwards and backwards."""
    gate, seen = model[2], []
    gate.owner = threading.get_ident()
    gate.reached.clear()
    gate.resume.clear()

    def other() -> None:
        try:
            assert gate.reached.wait(20)
            for _ in range(3):
                leaf = x.clone().requires_grad_(True)
                out = model(leaf)
                seen.append((out.detach(), torch.autograd.grad(out[:, 1].sum(), leaf)[0], model.training))
        except BaseException as e:  # vis's old stop signal was a BaseException: report whatever it is
            seen.append(e)
        finally:
            gate.resume.set()

    t = threading.Thread(target=other)
    t.start()
    try:
        got = vis_call()
    finally:
        t.join(30)
    return got, seen


@pytest.mark.parametrize("what", ["activations", "guided reconstruct"])
def test_another_thread_using_the_model_while_vis_runs(what: str) -> None:
    """vis's stop-at-the-layer hook and backward rule reach only vis's own call; the eval switch is visible (doc)."""
    model = _gated_net().train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    call = {"activations": lambda: activations(model, x, "4"),
            "guided reconstruct": lambda: reconstruct(model, x, method="guided", layer="4", channel=2)}[what]
    model[2].reached.set()  # no pause: the single-threaded answers
    alone = call()
    leaf = x.clone().requires_grad_(True)
    plain_out = model(leaf)
    plain_grad = torch.autograd.grad(plain_out[:, 1].sum(), leaf)[0]
    got, seen = _while_vis_runs(model, call, x)
    assert torch.equal(got, alone)
    assert len(seen) == 3, seen  # every forward of the other thread ran to the end
    for out, grad, training in seen:
        assert torch.equal(out, plain_out.detach()) and torch.equal(grad, plain_grad)
        assert not training  # documented: the model's flags are shared, so the other thread sees eval meanwhile
    assert model.training


ALL_CNN_C_RF = {"conv1": 3, "conv2": 5, "conv3": 7, "conv4": 11, "conv5": 15, "conv6": 19, "conv7": 27, "conv8": 27,
                "conv9": 27}


def test_all_cnn_c_receptive_fields(allcnn) -> None:
    got = {layer: receptive_field(allcnn, layer).size for layer in ALL_CNN_C_RF}
    assert got == ALL_CNN_C_RF
    strides = [receptive_field(allcnn, f"conv{i}").stride for i in range(1, 10)]
    assert strides == [1, 1, 2, 2, 2, 4, 4, 4, 4]
    rf = receptive_field(allcnn, "conv7", position=(3, 3))
    assert rf.start == -9 and rf.box() == (3, 3, 30, 30)
    assert rf.box(0, 0) == (0, 0, 18, 18)  # clipped at the image border
    assert receptive_field(allcnn, None).box(0, 0) == (0, 0, 32, 32)


def test_max_pool_net_receptive_fields() -> None:
    model = create("model-c")
    sizes = [receptive_field(model, n).size for n in ("conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5")]
    assert sizes == [3, 5, 7, 11, 15, 19, 27]


def _positive_copy(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create(name, dropout=False).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    return model


def _support(model: nn.Module, x: torch.Tensor, layer: str | None,
             position: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The backprop gradient of ``layer``'s channel 0 at ``position`` (summed over colours, absolute) and the box
    (top, left, bottom, right) of its support, as ``RF.box`` gives a field."""
    g = reconstruct(model, x, method="backprop", layer=layer, channel=0, position=position)[0].abs().sum(0)
    rows, cols = (g > 0).nonzero().unbind(1)
    return g, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


@pytest.mark.parametrize("name,layers", [("all-cnn-c", ["conv2", "conv3", "conv6", "conv9"]),
                                         ("strided-cnn-a", ["conv1", "conv2", "conv3", "conv4"])])
def test_receptive_field_equals_gradient_support(name, layers) -> None:
    """All weights positive, input positive: every ReLU is open, so the gradient's support is exactly the RF."""
    model = _positive_copy(name)
    x = torch.rand(1, 3, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    for layer in layers:
        fmap = activations(model, x, layer)
        h, w = fmap.shape[2] // 2, fmap.shape[3] // 2
        g, support = _support(model, x, layer, (h, w))
        top, left, bottom, right = receptive_field(model, layer, position=(h, w), input_size=(40, 40)).box()
        assert support == (top, left, bottom, right), layer
        assert bool((g[top:bottom, left:right] > 0).all()), layer


def test_receptive_field_every_model_runs() -> None:
    for name in names():
        model = create(name)
        assert receptive_field(model, None).size >= 32


def test_receptive_field_errors(allcnn) -> None:
    with pytest.raises(AllconvError, match="needs a unit"):
        receptive_field(allcnn, "conv1").box()
    with pytest.raises(AllconvError, match="unknown layer"):
        receptive_field(allcnn, "conv10")


def test_to_image_range_and_centering() -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 5 + 3
    img = to_image(x)
    assert img.shape == x.shape and img.min() >= 0 and img.max() <= 1
    for i in range(2):  # the 0.5 % tails of |x - mean| are clipped: both ends saturate
        assert (img[i] == 0).sum() > 1 and (img[i] == 1).sum() > 1
        assert abs(float(img[i].mean()) - 0.5) < 0.01
    assert torch.equal(to_image(torch.zeros(3, 4, 4)), torch.full((3, 4, 4), 0.5))
    assert torch.allclose(to_image(x[0]), img[0])
    with pytest.raises(AllconvError, match="percentile"):
        to_image(x, percentile=0)
    with pytest.raises(AllconvError, match=r"\(3, H, W\)"):
        to_image(torch.zeros(4, 4))


def test_heatmap() -> None:
    rgb = heatmap(torch.arange(12.0).reshape(3, 4))
    assert rgb.shape == (3, 3, 4) and rgb.min() >= 0 and rgb.max() <= 1
    assert not torch.equal(rgb[:, 0, 0], rgb[:, 2, 3])
    assert heatmap(torch.ones(2, 2)).shape == (3, 2, 2)
    with pytest.raises(AllconvError, match="colormap"):
        heatmap(torch.ones(2, 2), cmap="nope")
    with pytest.raises(AllconvError, match="2-D"):
        heatmap(torch.ones(1, 2, 2))


def test_grid_and_pil() -> None:
    tiles = torch.rand(5, 3, 4, 4)
    img = grid(tiles, nrow=3, pad=1, scale=2)
    assert isinstance(img, Image.Image) and img.size == (3 * (8 + 1) + 1, 2 * (8 + 1) + 1)
    labelled = grid(tiles, nrow=3, pad=1, labels=list("abcde"), scale=2)
    assert labelled.size[1] > img.size[1]
    pil = to_pil(torch.ones(3, 2, 5))
    assert pil.size == (5, 2) and pil.getpixel((0, 0)) == (255, 255, 255)
    assert to_pil(torch.zeros(1, 2, 2)).getpixel((1, 1)) == (0, 0, 0)
    with pytest.raises(AllconvError, match="labels"):
        grid(tiles, labels=["a"])
    with pytest.raises(AllconvError, match="nrow"):
        grid(tiles, nrow=0)
    with pytest.raises(AllconvError, match=r"\(N, 3, h, w\)"):
        grid(torch.rand(3, 4, 4))


class _Residual(nn.Module):
    """A strided block with a 1x1 stride-2 shortcut (ResNet's downsample): walked as a chain, its stride doubles."""

    def __init__(self, shortcut_first: bool = False) -> None:
        super().__init__()
        self.shortcut_first = shortcut_first  # which operand of the sum holds the larger field
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 1, stride=2)
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        main, short = self.b(torch.relu(self.a(x))), self.down(x)
        y = torch.relu(short + main if self.shortcut_first else main + short)
        return self.c(y)


@pytest.mark.parametrize("shortcut_first", [False, True])
def test_receptive_field_of_a_branched_net_equals_gradient_support(shortcut_first: bool) -> None:
    torch.manual_seed(0)
    model = _Residual(shortcut_first).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64) + 0.1
    for layer, stride in (("b", 2), ("down", 2), ("c", 2)):
        rf = receptive_field(model, layer, position=(5, 6), input_size=(24, 24))
        assert rf.stride == stride and _support(model, x, layer, (5, 6))[1] == rf.box(), layer


class _Functional(nn.Module):
    """Convs called as F.conv2d with torch's defaults (stride 1, no padding, no dilation), then by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.ones(4, 3, 3, 3)), nn.Parameter(torch.ones(2, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.relu(F.conv2d(x, self.w1)), weight=self.w2, stride=2, dilation=2)


def test_a_functional_conv_with_torchs_defaults_has_its_field() -> None:
    rf = receptive_field(_Functional(), None, input_size=(16, 16))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == ((7, 7), (2, 2), (0, 0))  # 3, then 3 at dilation 2 (5) -> 7


class _Ops(nn.Module):
    """A 3x3 conv, then one more op (called functionally, as nets and torchvision do)."""

    def __init__(self, op) -> None:
        super().__init__()
        self.conv, self.op = nn.Conv2d(3, 2, 3, padding=1), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(torch.relu(self.conv(x)))


OPS = {  # name: (op after the 3x3 conv, its field's (size_hw, stride_hw, start_hw))
    "avg_pool2d(x, 2)": (lambda x: F.avg_pool2d(x, 2), ((4, 4), (2, 2), (-1, -1))),
    "avg_pool2d(x, 3, 1, 1)": (lambda x: F.avg_pool2d(x, 3, 1, 1), ((5, 5), (1, 1), (-2, -2))),
    "max_pool2d(x, 3, 2, 1, 2)": (lambda x: torch.max_pool2d(x, 3, 2, 1, 2), ((7, 7), (2, 2), (-2, -2))),
    "max_pool2d(x, 2)": (lambda x: F.max_pool2d(x, 2), ((4, 4), (2, 2), (-1, -1))),
    "torch.max_pool2d(x, 2)": (lambda x: torch.max_pool2d(x, 2), ((4, 4), (2, 2), (-1, -1))),  # torch's defaults
    "conv 'same', k=4": (lambda x: F.conv2d(x, torch.ones(1, 2, 4, 4), padding="same"), ((6, 6), (1, 1), (-2, -2))),
    "conv 'same', k=3, dilation 2": (lambda x: F.conv2d(x, torch.ones(1, 2, 3, 3), padding="same", dilation=2),
                                     ((7, 7), (1, 1), (-3, -3))),
    "conv2d(x, w, None, 1, 1, 2)": (lambda x: F.conv2d(x, torch.ones(1, 2, 3, 3), None, 1, 1, 2),  # as nn.Conv2d
                                    ((7, 7), (1, 1), (-2, -2))),
    "conv 'valid'": (lambda x: F.conv2d(x, torch.ones(1, 2, 3, 2), padding="valid"), ((5, 4), (1, 1), (-1, -1))),
    "adaptive_avg_pool2d(x, 2)": (lambda x: F.adaptive_avg_pool2d(x, 2), ((6, 6), (4, 4), (-1, -1))),
    "adaptive_avg_pool2d(x, (None, 4))": (lambda x: F.adaptive_avg_pool2d(x, (None, 4)), ((3, 4), (1, 2), (-1, -1))),
    "adaptive_max_pool2d(x, 1)": (lambda x: F.adaptive_max_pool2d(x, 1), ((10, 10), (8, 8), (-1, -1))),
    "adaptive_avg_pool2d(output_size=8)": (lambda x: torch._C._nn.adaptive_avg_pool2d(x, output_size=8),
                                           ((3, 3), (1, 1), (-1, -1))),
}


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("op", list(OPS))
def test_each_op_gives_its_field_and_the_gradient_fills_it(op: str) -> None:
    call, want = OPS[op]
    torch.manual_seed(0)
    model = _Ops(call).eval()
    with torch.no_grad():
        model.conv.weight.abs_()
        model.conv.bias.fill_(1.0)  # every unit of the conv's output is positive, so the ReLU passes everything
    rf = receptive_field(model, None, position=(0, 1), input_size=(8, 8))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == want
    assert all(type(v) is int for v in (*rf.size_hw, *rf.stride_hw, *rf.start_hw, *rf.box()))  # pixel indices
    if "max_pool" not in op:  # a max pool's gradient reaches only its argmax; every other op's fills the field
        assert _support(model, torch.rand(1, 3, 8, 8) + 0.1, None, (0, 1))[1] == rf.box(), op


def test_a_net_without_parameters_has_a_field() -> None:
    rf = receptive_field(nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1)), None, input_size=(8, 8))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == ((6, 6), (2, 2), (-2, -2))


def test_an_adaptive_pool_on_a_non_square_map_pools_each_side_by_its_own_factor() -> None:
    rf = receptive_field(_Ops(lambda x: F.adaptive_avg_pool2d(x, (2, 8))), None, input_size=(8, 16))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == ((6, 4), (4, 2), (-1, -1))  # windows of 4x2


@pytest.mark.parametrize("call,want", [
    (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], ((4, 4), (2, 2), (-1, -1))),  # a tuple: (maps, indices)
    (lambda x: torch.split(x, 8, dim=1)[0], ((3, 3), (1, 1), (-1, -1))),  # a tuple of one
    (lambda x: x.amax(dim=(0, 2, 3)), ((10, 10), (8, 8), (-1, -1))),  # a 1-D vector: the whole map
    (lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1), ((10, 10), (8, 8), (-1, -1))),  # (N, C) features
    (lambda x: (torch.zeros(1, 2), F.adaptive_avg_pool2d(x, 1))[1], ((10, 10), (8, 8), (-1, -1))),  # made from ints
    (lambda x: (torch.zeros(1, 1, 8, 8), x)[1], ((3, 3), (1, 1), (-1, -1))),
], ids=["return_indices", "split", "1-D", "2-D", "a-vector-made-from-sizes", "a-map-made-from-sizes"])
def test_tuples_vectors_and_new_tensors_keep_the_field(call, want) -> None:
    rf = receptive_field(_Ops(call), None, input_size=(8, 8))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == want
    assert all(type(v) is int for v in (*rf.size_hw, *rf.stride_hw, *rf.start_hw))


@pytest.mark.parametrize("call", [
    lambda x: F.adaptive_avg_pool2d(x, 3), lambda x: F.adaptive_avg_pool2d(x, (3, 4)),
    lambda x: F.adaptive_max_pool2d(x, (None, 3)),  # windows that differ from unit to unit
    lambda x: x.reshape(1, 2, 4, 16), lambda x: x[:, :, ::2, ::2],  # the map's size changed by an op we do not model
    lambda x: x + F.interpolate(x, size=(8, 8)),  # one operand of the sum has no field
], ids=["adaptive-3", "adaptive-3x4", "adaptive-Nonex3", "reshape", "strided-slice", "sum-with-interpolated"])
def test_an_op_whose_field_is_not_one_box_has_none(call) -> None:
    with pytest.raises(AllconvError, match="has no receptive field"):
        receptive_field(_Ops(call), None, input_size=(8, 8))


def test_a_non_square_field_has_its_own_rows_and_columns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2)), nn.ReLU(),
                          nn.Conv2d(4, 2, (5, 3), stride=(3, 1), padding=(0, 1))).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    x = torch.rand(1, 3, 20, 24, dtype=torch.float64) + 0.1
    rf = receptive_field(model, "2", position=(3, 4), input_size=(20, 24))
    assert (rf.size_hw, rf.stride_hw, rf.start_hw) == ((7, 9), (3, 2), (-1, -4))
    assert (rf.size, rf.stride, rf.start) == (7, 3, -1)  # the rows' values: a square field's side, stride, start
    assert rf.box() == rf.box(3, 4) == _support(model, x, "2", (3, 4))[1] == (8, 4, 15, 13)
    with pytest.raises(AllconvError, match="both h and w, or neither"):
        rf.box(3)


def test_torchvision_resnet_strides_follow_the_main_path() -> None:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    got = {n: receptive_field(model, n, input_size=(64, 64)).stride for n in ("layer1", "layer2", "layer3", "layer4")}
    assert got == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    assert receptive_field(model, "layer1.0.conv1", input_size=(64, 64)).size == 19  # 7 + 4 (pool 3x3 at 2) + 8
    with pytest.raises(AllconvError, match="no receptive field"):
        receptive_field(model, "fc", input_size=(64, 64))
