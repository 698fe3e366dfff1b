"""Preprocessing (allconv.preprocess): what standardization and ZCA compute, the layouts they take, undo, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from allconv.errors import AllconvError
from allconv.preprocess import Preprocess


# --- preprocessing -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["standardize", "zca"])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (3, 4, 4), (1, 1, 3, 4, 4)])
def test_fitting_needs_a_non_empty_4d_batch(kind: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(AllconvError, match=r"^preprocessing needs a non-empty N x C x H x W image batch, got shape"):
        Preprocess.fit(kind, torch.zeros(shape, dtype=torch.uint8))
    assert Preprocess.fit(kind, torch.zeros((1, 3, 4, 4), dtype=torch.uint8)).kind == kind  # one image will do


def test_standardized_training_images_have_zero_mean_unit_std_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randint(0, 40, (200, 8, 8), generator=g),  # dark, narrow
                     torch.randint(100, 256, (200, 8, 8), generator=g),  # bright, wide
                     torch.randint(120, 136, (200, 8, 8), generator=g)], 1).to(torch.uint8)  # grey, very narrow
    out = Preprocess.fit("standardize", x)(x).double()
    mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-4), mean
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-4), std


def test_zca_whitened_covariance_has_the_filter_bias_eigenvalues() -> None:
    """pylearn2's GCN (mean 0, L2 norm 55 per image) then ZCA(filter_bias=0.1): the whitened training data's covariance
    has eigenvalues e / (e + 0.1), where e are the eigenvalues of the GCN'd data's covariance."""
    rng = np.random.default_rng(0)
    n, d = 400, 3 * 4 * 4
    scales = np.geomspace(60, 0.5, d)  # pixel-space spread over decades, so some e lie near 0.1
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    raw = 128 + (rng.normal(size=(n, d)) * scales) @ basis.T
    x = torch.from_numpy(np.clip(np.round(raw), 0, 255).astype(np.uint8).reshape(n, 3, 4, 4))

    flat = x.reshape(n, -1).numpy().astype(np.float64)
    flat = flat - flat.mean(1, keepdims=True)
    flat = 55.0 * flat / np.linalg.norm(flat, axis=1, keepdims=True)
    e = np.linalg.eigvalsh(np.cov(flat, rowvar=False, bias=True)).clip(0)
    assert e.max() > 10 and (e[1:] < 1).sum() > 10  # the data spans eigenvalues around and far above the bias

    white = Preprocess.fit("zca", x)(x).reshape(n, -1).double().numpy()
    got = np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True))
    np.testing.assert_allclose(got, e / (e + 0.1), atol=2e-4, err_msg="whitened eigenvalues are not e / (e + 0.1)")


@pytest.mark.parametrize("kind", ["standardize", "zca"])
def test_preprocess_takes_numpy_or_torch_nhwc_nchw_or_one_image(kind: str) -> None:
    """The README's ``meta.preprocess(images_uint8)`` on the arrays users have: NumPy NHWC (as CIFAR-10 ships), torch
    NHWC, NCHW, one HWC / CHW image; all give the same NCHW input."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8))
    pre = Preprocess.fit(kind, x)
    want = pre(x)
    nhwc = x.permute(0, 2, 3, 1)
    for given in (nhwc.numpy(), nhwc.contiguous(), x.numpy(), nhwc.float(), nhwc.numpy().astype(np.float32)):
        got = pre(given)
        assert got.shape == (6, 3, 4, 4) and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(pre(nhwc[2].numpy()), want[2:3])  # one HWC image -> a batch of one
    torch.testing.assert_close(pre(x[2]), want[2:3])


def test_preprocess_both_axes_of_size_3_means_nchw() -> None:
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 5, 3), dtype=np.uint8))
    pre = Preprocess.fit("standardize", x)
    torch.testing.assert_close(pre(x), (x.float() / 255 - pre.stats["mean"]) / pre.stats["std"])


@pytest.mark.parametrize("given, match", [
    (np.zeros((2, 5, 4, 4), np.uint8), r"3-channel images as N x 3 x H x W or N x H x W x 3 .* \(2, 5, 4, 4\)"),
    (np.zeros((4, 4), np.uint8), r"got shape \(4, 4\)"),
    (np.zeros((2, 3, 8, 8), np.uint8), r"ZCA preprocessing was fitted on 3 x 4 x 4 images, got \(3, 8, 8\); resize"),
    (np.array([{"a": 1}]), r"a NumPy array or torch tensor, got ndarray"),
])
def test_preprocess_bad_shapes_are_one_line(given, match: str) -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 4, 4), dtype=np.uint8))
    pre = Preprocess.fit("zca", x)
    with pytest.raises(AllconvError, match=match) as e:
        pre(given)
    assert "\n" not in str(e.value)


def test_undo_inverts_the_network_input() -> None:
    """undo(pre(x)) is the image again: exactly x/255 for standardization; for ZCA (which normalizes each image's
    contrast) x up to its own affine range, i.e. min-max scaled per image."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    std = Preprocess.fit("standardize", x)
    torch.testing.assert_close(std.undo(std(x)), x / 255.0, atol=1e-6, rtol=0)
    zca = Preprocess.fit("zca", x)
    flat = x.flatten(1).float()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    torch.testing.assert_close(zca.undo(zca(x)).flatten(1), (flat - lo) / (hi - lo), atol=2e-4, rtol=0)


def test_undo_of_a_reconstruction_stays_displayable() -> None:
    """A reconstruction (or any network input) outside the images' range still undoes to [0, 1], what imshow takes."""
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    std = Preprocess.fit("standardize", x)
    shown = std.undo(torch.linspace(-50, 50, 3 * 8 * 8).view(1, 3, 8, 8))
    assert shown.min() == 0 and shown.max() == 1


@pytest.mark.parametrize("config, tensors", [
    ({"kind": "whiten"}, {"mean": torch.zeros(1, 3, 1, 1), "std": torch.ones(1, 3, 1, 1)}),  # a kind we do not know
    ({"kind": "standardize"}, {"mean": torch.zeros(1, 3, 1, 1)}),  # its std missing
    ({"kind": "zca"}, {"mean": torch.zeros(1, 12), "eigval": torch.ones(12)}),  # its eigenvectors missing
])
def test_preprocessing_state_that_is_unknown_or_incomplete_is_one_line(config: dict, tensors: dict) -> None:
    with pytest.raises(AllconvError, match=r"^checkpoint preprocessing '\w+' is incomplete or unknown; the file is "
                                           r"damaged or from another version$"):
        Preprocess.from_state(config, tensors)
