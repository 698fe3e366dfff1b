"""vis.attr: captum's own test cases, exact where captum's hooks are not, and captum's tooling on top."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from captum import attr as captum
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv
from torch import nn

from allconv.errors import AllconvError
from vis.attr import Deconvolution, GuidedBackprop, GuidedGradCam, NeuronDeconvolution, NeuronGuidedBackprop

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),  # captum's own classes say
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require:UserWarning")]  # these two

RULES = {"guided": lambda g, z: g.clamp_min(0) * (z > 0), "deconvnet": lambda g, z: g.clamp_min(0)}
OURS = {"guided": GuidedBackprop, "deconvnet": Deconvolution}
THEIRS = {"guided": captum.GuidedBackprop, "deconvnet": captum.Deconvolution}


def _t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float).view(1, 1, 4, 4)


def _state(model: nn.Module) -> list:
    """Everything vis.attr must leave as it found: each module's flag, hooks and parameter gradients (none)."""
    return [(m.training, *(len(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                       "_backward_pre_hooks")),
             [p.grad is None for p in m.parameters(recurse=False)]) for m in model.modules()]


# --- (a) captum's test cases, with the expected numbers of captum's tests -----------------------------------------
# tests/attr/test_guided_backprop.py, test_deconvolution.py, test_guided_grad_cam.py (github.com/meta-pytorch/captum):
# BasicModel_ConvNet_One_Conv, input arange(16) as (1, 1, 4, 4), second input ones, target 0.

GB = _t([[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]])
GB_MULTI = _t([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
DECONV = _t([[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]])
GGC = _t([[0, 0, 4, 4], [0, 0, 12, 8], [28, 84, 97.5, 65], [28, 56, 65, 32.5]])
GGC_MULTI = _t([[14.5, 29, 38, 19], [29, 58, 76, 38], [65, 130, 148, 74], [32.5, 65, 74, 37]])
INP = torch.arange(16, dtype=torch.float).view(1, 1, 4, 4)
INP2 = torch.ones(1, 1, 4, 4)


@pytest.mark.parametrize("method, multi, expected", [
    ("guided", False, GB), ("guided", True, GB_MULTI), ("deconvnet", False, DECONV), ("deconvnet", True, DECONV)])
def test_captum_cases(method, multi, expected) -> None:
    net = BasicModel_ConvNet_One_Conv()
    inputs = (INP, INP2) if multi else (INP,)
    got = OURS[method](net).attribute(inputs, target=0, additional_forward_args=None)
    assert isinstance(got, tuple) and len(got) == len(inputs)
    for g in got:
        torch.testing.assert_close(g, expected, atol=1e-5, rtol=0)
    assert not OURS[method](net).multiplies_by_inputs


@pytest.mark.parametrize("cls, method", [(NeuronGuidedBackprop, "guided"), (NeuronDeconvolution, "deconvnet")])
@pytest.mark.parametrize("selector, multi", [((0,), False), ((slice(0, 1, 1),), False), ((3,), True)])
def test_captum_neuron_cases(cls, method, selector, multi) -> None:
    net = BasicModel_ConvNet_One_Conv()
    inputs = (INP, INP2) if multi else (INP,)
    expected = {"guided": GB_MULTI if multi else GB, "deconvnet": DECONV}[method]
    got = cls(net, net.fc1).attribute(inputs, neuron_selector=selector, additional_forward_args=None)
    for g in got:
        torch.testing.assert_close(g, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, neuron", [("guided", NeuronGuidedBackprop), ("deconvnet", NeuronDeconvolution)])
def test_captum_matching_case(method, neuron) -> None:
    """captum's test_gb_matching / test_deconv_matching: target i == neuron (i,) of the last ReLU."""
    net = BasicModel_ConvNet_One_Conv()
    torch.manual_seed(0)
    inp = 100.0 * torch.randn(1, 1, 4, 4)
    for i in range(net(inp).shape[1]):
        torch.testing.assert_close(OURS[method](net).attribute(inp, target=i),
                                   neuron(net, net.relu2).attribute(inp, (i,)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("inplace, layer, multi, to_input, expected", [
    (False, "relu1", False, False, (GGC,)),  # test_simple_input_conv
    (False, "conv1", True, False, (GGC_MULTI, GGC_MULTI)),  # test_simple_multi_input_conv
    (True, "relu1", True, True, (GGC_MULTI, GGC_MULTI)),  # test_simple_multi_input_relu_input
    (True, "conv1", True, False, (GGC_MULTI, GGC_MULTI)),  # test_simple_multi_input_conv_inplace
])
def test_captum_guided_grad_cam_cases(inplace, layer, multi, to_input, expected) -> None:
    net = BasicModel_ConvNet_One_Conv(inplace=inplace)
    inputs = (INP, INP2) if multi else INP
    ggc = GuidedGradCam(net, getattr(net, layer))
    got = ggc.attribute(inputs, target=0, attribute_to_layer_input=to_input)
    for g, e in zip(got if multi else (got,), expected):
        torch.testing.assert_close(g.detach(), e, atol=1e-4, rtol=0)
    assert not ggc.multiplies_by_inputs


@pytest.mark.parametrize("mode, first_empty", [("nearest", False), ("made_up_nonlinear", True)])
def test_captum_guided_grad_cam_improper_cases(mode, first_empty) -> None:
    """test_improper_dims_multi_input_conv / test_improper_method_multi_input_conv: an empty tensor and a warning."""
    net = BasicModel_ConvNet_One_Conv()
    with pytest.warns(UserWarning, match="Couldn't appropriately interpolate"):
        first, second = GuidedGradCam(net, net.conv1).attribute((INP, torch.ones(1)), target=0, interpolate_mode=mode)
    assert second.numel() == 0
    if first_empty:
        assert first.numel() == 0
    else:
        torch.testing.assert_close(first.detach(), GGC_MULTI, atol=1e-4, rtol=0)


# --- (b) exact where captum is not: a pre-activation residual net ----------------------------------------------------


class PreAct(nn.Module):
    """Pre-activation skips; one nn.ReLU module reused; F.relu; a final in-place F.relu (as DenseNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv1, self.conv2, self.conv3 = (nn.Conv2d(c, 4, 3, padding=1) for c in (3, 4, 4, 4))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        t = s + self.conv2(F.relu(self.conv1(self.relu(s))))
        u = t + self.conv3(self.relu(t))
        return self.fc(F.relu(u, inplace=True).mean((2, 3)))


def _preact() -> PreAct:
    torch.manual_seed(0)
    return PreAct().double()


def _x(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(net: PreAct, x: torch.Tensor, method: str, targets: list[int]) -> torch.Tensor:
    """Float64 forward keeping each ReLU's input; backward by hand: the rule at ReLUs, transposed convs elsewhere."""
    rule = RULES[method]

    def back(conv: nn.Conv2d, g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(shape, conv.weight, g, padding=1)

    with torch.no_grad():
        s = net.stem(x)
        c1 = net.conv1(s.clamp_min(0))
        t = s + net.conv2(c1.clamp_min(0))
        u = t + net.conv3(t.clamp_min(0))
        seed = F.one_hot(torch.tensor(targets), 3).to(x) @ net.fc.weight
        gu = rule((seed[:, :, None, None] / u[0, 0].numel()).expand_as(u), u)
        gt = gu + rule(back(net.conv3, gu, t.shape), t)
        gs = gt + rule(back(net.conv1, rule(back(net.conv2, gt, c1.shape), c1), s.shape), s)
        return back(net.stem, gs, x.shape)


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_preact_net_exact_where_captum_is_not(method) -> None:
    net, x = _preact(), _x()
    ref = _reference(net, x, method, [0, 2])
    before = _state(net)
    ours = OURS[method](net).attribute(x, target=[0, 2])
    theirs = THEIRS[method](net).attribute(x.clone(), target=[0, 2])
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, atol=1e-6 * ref.abs().max().item(), rtol=0)
    assert (theirs - ref).abs().max() > 0.1 * ref.abs().max()  # captum: F.relu plain; skip gradients rewritten
    assert _state(net) == before and not x.requires_grad


def test_preact_neuron_and_guided_grad_cam_exact() -> None:
    net, x = _preact(), _x()
    ref = _reference(net, x, "guided", [1, 1])
    torch.testing.assert_close(NeuronGuidedBackprop(net, net.fc).attribute(x, (1,)), ref, atol=1e-12, rtol=0)
    cam = LayerGradCam(net, net.conv3).attribute(x, target=1, relu_attributions=True)
    expected = ref * LayerAttribution.interpolate(cam, x.shape[2:])
    torch.testing.assert_close(GuidedGradCam(net, net.conv3).attribute(x, target=1).detach(), expected.detach(),
                               atol=1e-12, rtol=0)


# --- (c) SmoothGrad over guided backprop, (d) captum.metrics and visualization on top ------------------------------


def test_noise_tunnel_is_the_mean_over_the_same_noise() -> None:
    net, x = _preact(), _x()
    gbp = GuidedBackprop(net)
    torch.manual_seed(7)
    smooth = NoiseTunnel(gbp).attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=[0, 2])
    torch.manual_seed(7)
    noise = torch.normal(0, torch.tensor(0.1).repeat(8, *x.shape[1:]))  # NoiseTunnel's one draw for all samples
    noisy = (x.repeat_interleave(4, dim=0) + noise).view(2, 4, *x.shape[1:])
    ours = torch.stack([gbp.attribute(noisy[:, k], target=[0, 2]) for k in range(4)]).mean(0)
    refs = torch.stack([_reference(net, noisy[:, k], "guided", [0, 2]) for k in range(4)]).mean(0)
    torch.testing.assert_close(smooth, ours, atol=1e-12, rtol=0)
    torch.testing.assert_close(smooth, refs, atol=1e-10, rtol=0)
    assert (smooth - gbp.attribute(x, target=[0, 2])).abs().max() > 1e-3  # the noise did something


class PlainCNN(nn.Module):
    """nn.ReLU modules only, each used once (where captum's hooks are exact); a second forward argument."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        h = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x * scale)))))
        return self.fc(h.mean((2, 3)))


def _plain() -> PlainCNN:
    torch.manual_seed(3)
    return PlainCNN().double()


def test_metrics_on_top_equal_captums() -> None:
    net, x = _plain(), _x(3)
    ours, theirs = GuidedBackprop(net), captum.GuidedBackprop(net)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    results = []
    for method in (ours, theirs):
        torch.manual_seed(11)
        attributions = method.attribute(x, target=4)
        inf = infidelity(net, perturb, x, attributions, target=4, n_perturb_samples=3)
        sens = sensitivity_max(method.attribute, x, n_perturb_samples=3, perturb_radius=0.05, target=4)
        results.append((inf, sens))
    (inf, sens), (inf_c, sens_c) = results
    assert inf.shape == sens.shape == (3,) and torch.isfinite(inf).all() and (sens >= 0).all() and sens.sum() > 0
    torch.testing.assert_close(inf, inf_c, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(sens, sens_c, atol=1e-12, rtol=1e-9)


def test_visualize_image_attr_renders_ours() -> None:
    net, x = _plain(), _x(1, seed=4)
    a = GuidedBackprop(net).attribute(x, target=1)
    fig, _ = viz.visualize_image_attr(a[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).sigmoid().numpy(),
                                      method="blended_heat_map", sign="absolute_value", use_pyplot=False)
    assert fig.axes


# --- (e) captum's semantics: targets, additional_forward_args, selectors; Guided Grad-CAM == captum's --------------


@pytest.mark.parametrize("target", [3, [0, 4, 2], torch.tensor([1, 1, 3]), torch.tensor(2)])
def test_targets_and_forward_args_as_captums(target) -> None:
    net, x = _plain(), _x(3)
    for ours, theirs in ((GuidedBackprop, captum.GuidedBackprop), (Deconvolution, captum.Deconvolution)):
        got = ours(net).attribute(x, target=target, additional_forward_args=0.5)
        torch.testing.assert_close(got, theirs(net).attribute(x, target=target, additional_forward_args=0.5),
                                   atol=1e-12, rtol=0)
    ggc = GuidedGradCam(net, net.conv2).attribute(x, target, 0.5, interpolate_mode="bilinear")
    ref = captum.GuidedGradCam(net, net.conv2).attribute(x, target, 0.5, interpolate_mode="bilinear")
    assert ggc.abs().sum() > 0
    torch.testing.assert_close(ggc.detach(), ref.detach(), atol=1e-12, rtol=0)


def test_guided_grad_cam_layer_input_as_captums() -> None:
    net, x = _plain(), _x(2)
    ggc = GuidedGradCam(net, net.relu2).attribute(x, [1, 2], attribute_to_layer_input=True)
    ref = captum.GuidedGradCam(net, net.relu2).attribute(x, [1, 2], attribute_to_layer_input=True)
    torch.testing.assert_close(ggc.detach(), ref.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("selector, to_input", [
    ((2, 1, 1), False), ((slice(0, 3), 1, slice(None)), False), (lambda out: out[:, 1].amax((1, 2)), False),
    ((1, 0, 2), True)])
def test_neuron_selectors_as_captums(selector, to_input) -> None:
    net, x = _plain(), _x(2)
    for ours, theirs in ((NeuronGuidedBackprop, captum.NeuronGuidedBackprop),
                         (NeuronDeconvolution, captum.NeuronDeconvolution)):
        got = ours(net, net.relu2).attribute(x, selector, attribute_to_neuron_input=to_input)
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, theirs(net, net.relu2).attribute(x, selector,
                                                                         attribute_to_neuron_input=to_input),
                                   atol=1e-12, rtol=0)


def test_tuple_targets_of_a_4d_output_as_captums() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)).double()
    x = _x(2)
    for target in [(1, 2, 3), [(0, 1, 1), (2, 3, 0)]]:
        torch.testing.assert_close(GuidedBackprop(net).attribute(x, target=target),
                                   captum.GuidedBackprop(net).attribute(x, target=target), atol=1e-12, rtol=0)


def test_missing_target_fails_as_in_captum() -> None:
    net, x = _plain(), _x(2)
    with pytest.raises(AssertionError, match="Target not provided"):
        GuidedBackprop(net).attribute(x)


def test_no_warnings_and_model_untouched() -> None:
    net, x = _plain().train(), _x(2)
    net.relu1.eval()
    before = _state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuidedBackprop(net).attribute(x, target=1)
        NeuronDeconvolution(net, net.conv2).attribute(x, (0, 1, 1))
        GuidedGradCam(net, net.conv2).attribute(x, target=1)
    assert _state(net) == before and not x.requires_grad


# --- refused in one line ---------------------------------------------------------------------------------------------


def test_refusals_leave_the_model_untouched() -> None:
    net, x = _preact(), _x(2)
    before = _state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated: still what users hold
        scripted = torch.jit.script(_plain())
    cases = [
        (lambda: NeuronGuidedBackprop(net, net.relu).attribute(x, (0, 0, 0)), "runs 2 times"),
        (lambda: GuidedGradCam(net, net.relu).attribute(x, target=0), "runs 2 times"),
        (lambda: NeuronDeconvolution(net, nn.ReLU()).attribute(x, (0, 0, 0)), "never run"),
        (lambda: GuidedBackprop(lambda v: net(v)), "must be a torch.nn.Module"),
        (lambda: GuidedBackprop(net).attribute(x.long(), target=0), "float tensor"),
        (lambda: GuidedBackprop(nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())).attribute(torch.rand(2, 3), 0),
         "not a ReLU"),
        (lambda: Deconvolution(scripted).attribute(x, target=0), "TorchScript"),
    ]
    for call, match in cases:
        with pytest.raises(AllconvError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    assert _state(net) == before and not x.requires_grad
