"""The 12 nets: names, shapes, exact parameter counts, 6x6 maps before global averaging, layer names."""

import pytest
import torch
from torch import nn

from allconv import AllconvError
from allconv.models import check_input_size, create, fold_batchnorm, layer_names, min_input_size, names, num_parameters

# Counted by hand from the paper's Tables 1-2 (conv weights + biases), e.g. All-CNN-C:
# 3*96*9+96 + 2*(96*96*9+96) + 96*192*9+192 + 3*(192*192*9+192) + 192*192+192 + 192*10+10 = 1,369,738
PARAMS = {
    "model-a": 839_242, "strided-cnn-a": 839_242, "convpool-cnn-a": 1_254_250, "all-cnn-a": 1_254_250,
    "model-b": 885_610, "strided-cnn-b": 885_610, "convpool-cnn-b": 1_300_618, "all-cnn-b": 1_300_618,
    "model-c": 954_730, "strided-cnn-c": 954_730, "convpool-cnn-c": 1_369_738, "all-cnn-c": 1_369_738,
}


def test_names_are_the_papers_twelve():
    assert names() == list(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_and_output(name):
    m = create(name).eval()
    assert num_parameters(m) == PARAMS[name]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list(PARAMS))
def test_six_by_six_before_global_average(name):
    m = create(name, dropout=False).eval()
    x = torch.randn(1, 3, 32, 32)
    for child in list(m.children())[:-2]:  # everything before gap and flatten
        x = child(x)
    assert x.shape == (1, 10, 6, 6)


def test_all_cnn_c_layers():
    m = create("all-cnn-c")
    assert layer_names(m) == [f"conv{i}" for i in range(1, 10)]
    strides = {n: m.get_submodule(n).conv.stride for n in layer_names(m)}
    assert strides["conv3"] == strides["conv6"] == (2, 2)
    assert m.conv7.conv.padding == (0, 0) and m.conv7.conv.kernel_size == (3, 3)
    assert isinstance(m.conv9.relu, nn.ReLU)  # the class layer keeps its ReLU
    assert [n for n, _ in m.named_children() if n.startswith("drop")] == ["drop0", "drop1", "drop2"]
    assert m.drop0.p == 0.2 and m.drop1.p == 0.5


def test_model_c_and_strided_layers():
    assert layer_names(create("model-c")) == ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5", "conv6",
                                              "conv7"]
    assert create("model-c").pool1.kernel_size == 3
    s = create("strided-cnn-b")
    assert s.conv2.conv.kernel_size == (1, 1) and s.conv2.conv.stride == (2, 2)  # the conv before the pool strides
    assert layer_names(create("convpool-cnn-c"))[3] == "pool1"


def test_layer_output_is_post_relu_feature_map():
    m = create("all-cnn-c", dropout=False).eval()
    out = {}
    m.conv6.register_forward_hook(lambda mod, i, o: out.update(y=o.clone()))
    m(torch.randn(2, 3, 32, 32))
    assert out["y"].shape == (2, 192, 8, 8) and out["y"].min() >= 0


def test_options():
    m = create("all-cnn-c", num_classes=100, dropout=False, batchnorm=True)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    assert isinstance(m.conv1.bn, nn.BatchNorm2d) and m.conv1.conv.bias is None
    assert create("ALL_CNN_C").name == "all-cnn-c"


def test_unknown_model_is_one_clear_line():
    with pytest.raises(AllconvError, match="unknown model 'all-cnn-d'; choose one of: model-a"):
        create("all-cnn-d")
    with pytest.raises(AllconvError, match="num_classes"):
        create("model-a", num_classes=0)


def test_fold_batchnorm_is_the_same_function_with_the_paper_parameter_count() -> None:
    torch.manual_seed(0)
    net = create("all-cnn-c", batchnorm=True)
    net.train()
    with torch.no_grad():  # give BN non-trivial statistics and affine parameters
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    plain = fold_batchnorm(net)
    assert num_parameters(plain) == 1_369_738 and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain.conv1(x), net.conv1(x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_keeps_eps_for_channels_without_variance() -> None:
    """A channel whose running variance is 0 (it never varied in training) or tiny is scaled by 1/sqrt(var + eps), as
    BN does in eval mode, not by 1/sqrt(var): the folded net stays finite and computes the same function."""
    torch.manual_seed(0)
    net = create("strided-cnn-a", dropout=False, batchnorm=True).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.running_var[0::4] = 0.0
                m.running_var[1::4] = 1e-9
    plain = fold_batchnorm(net)
    assert all(torch.isfinite(p).all() for p in plain.parameters()), "folded weights are not finite"
    h = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name in layer_names(net):  # each block alone, on the BN net's own input to it
            want = net.get_submodule(name)(h)  # channels without variance are ~300x larger than the rest
            torch.testing.assert_close(plain.get_submodule(name)(h), want, rtol=1e-4,
                                       atol=1e-6 * float(want.abs().max()), msg=lambda m, name=name: f"{name}: {m}")
            h = want


@pytest.mark.parametrize("name", list(PARAMS))
def test_min_input_size_is_the_smallest_that_runs(name):
    side = min_input_size(name)
    m = create(name, dropout=False).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, side, side)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            m(torch.randn(1, 3, side - 1, side - 1))


def test_check_input_size_accepts_cifar_and_refuses_tiny_images_in_one_line():
    check_input_size("all-cnn-c", 32, 32)
    check_input_size("ALL_CNN_C", 9, 12)
    with pytest.raises(AllconvError, match=r"^images are 4x4 but all-cnn-c needs at least 9x9; resize them or use a "
                       r"different dataset$"):
        check_input_size("all-cnn-c", 4, 4)
    with pytest.raises(AllconvError, match=r"^images are 32x8 but model-a needs at least 9x9"):
        check_input_size("model-a", 32, 8)
    with pytest.raises(AllconvError, match="unknown model 'all-cnn-d'"):
        check_input_size("all-cnn-d", 32, 32)


def test_conv_block_is_biased_conv_then_relu_unless_batchnorm_is_asked():
    """``ConvBlock(cin, cout, k)`` is the paper's block: a biased conv with 'same' padding, then ReLU, no BatchNorm;
    ``batchnorm=True`` puts BN between them and drops the conv's (then redundant) bias."""
    from allconv.models import ConvBlock

    plain, bn = ConvBlock(3, 8, 3), ConvBlock(3, 8, 3, batchnorm=True)
    assert [n for n, _ in plain.named_children()] == ["conv", "relu"]
    assert plain.conv.bias is not None and plain.conv.padding == (1, 1)
    assert [n for n, _ in bn.named_children()] == ["conv", "bn", "relu"] and bn.conv.bias is None


def test_a_one_class_net_is_allowed_and_fewer_classes_are_not():
    """``num_classes`` must be >= 1, exactly as the message says: a 1-class net builds and gives (N, 1) logits; 0 or a
    negative count is one clear line."""
    m = create("strided-cnn-a", num_classes=1, dropout=False).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    for n in (0, -3):
        with pytest.raises(AllconvError, match=rf"^num_classes must be >= 1, got {n}$"):
            create("model-a", num_classes=n)


def test_a_folded_net_has_no_dropout_even_in_train_mode() -> None:
    """Folding drops dropout as well as BatchNorm: the shipped net is the paper's function in any mode."""
    net = create("all-cnn-c", dropout=True, batchnorm=True)
    plain = fold_batchnorm(net.eval())
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm2d)) for m in plain.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain.train()(x), plain.eval()(x))
