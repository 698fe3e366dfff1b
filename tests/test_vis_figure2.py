"""vis.figure2 (and vis.scan, vis.layout): the scan equals a brute-force top-k, windowed reconstructions equal
full-image ones at every map position, patches, the .npz round trip, the figure's size, pixels, title, legible rows
for small receptive fields, class names on the class layer, colour scales, and one-line errors."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from allconv.errors import AllconvError
from allconv.models import AllConvNet, ConvBlock, create
from allconv.preprocess import Preprocess
from vis import METHODS, activations, figure2, layout, receptive_field, reconstruct_at, render
from vis.figure2 import PATCH_FILL, Scan
from vis.layout import BAR_W, GAP, HEAD_FONT, HEAD_H, MIN_TILE, PAD, TITLE_H, label_width, text_width


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return create("all-cnn-c").eval()


@pytest.fixture(scope="module")
def images(cifar10_test_arrays: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """The first 64 CIFAR-10 test images, uint8 NCHW."""
    return torch.from_numpy(cifar10_test_arrays[0][:64]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def pre(images: torch.Tensor) -> Preprocess:
    return Preprocess.fit("standardize", images)


@pytest.fixture(scope="module")
def fig(net: nn.Module, images: torch.Tensor, pre: Preprocess) -> tuple[Scan, Image.Image]:
    """Figure 2 for conv6, filters 0, 3, 7, top 4, all methods."""
    return figure2.figure2(net, images, pre, layer="conv6", filters=[0, 3, 7], top_k=4, batch_size=16,
                           progress=False, data="cifar10")


def _mini(pool: bool) -> AllConvNet:
    """All-CNN-C's geometry with 8-16 channels (cheap enough to test every map position); ``pool``: max-pooling
    (3, 2, padding 1) instead of strided convs, as in Model C."""
    torch.manual_seed(1)
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=ConvBlock(3, 8, 3), conv2=ConvBlock(8, 8, 3))
    layers["pool1" if pool else "conv3"] = nn.MaxPool2d(3, 2, padding=1) if pool else ConvBlock(8, 8, 3, stride=2)
    layers.update(conv4=ConvBlock(8, 16, 3), conv5=ConvBlock(16, 16, 3))
    layers["pool2" if pool else "conv6"] = nn.MaxPool2d(3, 2, padding=1) if pool else ConvBlock(16, 16, 3, stride=2)
    layers.update(conv7=ConvBlock(16, 16, 3, padding=0), conv8=ConvBlock(16, 10, 1), gap=nn.AdaptiveAvgPool2d(1),
                  flatten=nn.Flatten())
    return AllConvNet(layers, "mini").eval()


def _all_positions(model: nn.Module, images: torch.Tensor, pre: Preprocess, layer: str) -> Scan:
    """A scan whose every filter row picks each map position once (image i % N for pick i)."""
    s = figure2.scan(model, images, pre, layer=layer, top_k=1, progress=False)
    h, w = activations(model, pre(images[:1]), layer).shape[2:]
    k, f = h * w, s.num_filters
    pos = np.stack(np.divmod(np.arange(k), w), axis=-1)
    return dataclasses.replace(s, top_k=k, values=np.zeros((f, k), np.float32),
                               image_index=np.tile(np.arange(k) % len(images), (f, 1)),
                               positions=np.tile(pos, (f, 1, 1)), boxes=np.zeros((f, k, 4), np.int64))


def _cut(src: torch.Tensor, top: int, left: int, size: int | tuple[int, int], fill: float) -> torch.Tensor:
    """Reference crop of one (C, H, W) image: the size x size (or (h, w)) box at (top, left), ``fill`` outside the
    image."""
    sh, sw = (size, size) if isinstance(size, int) else size
    out = torch.full((src.shape[0], sh, sw), fill, dtype=src.dtype)
    t, l, b, r = max(top, 0), max(left, 0), min(top + sh, src.shape[1]), min(left + sw, src.shape[2])
    out[:, t - top:b - top, l - left:r - left] = src[:, t:b, l:r]
    return out


# --- scan ----------------------------------------------------------------------------------------------------------

def test_scan_equals_brute_force_topk(net, images, pre) -> None:
    x = images[:32]
    scans = figure2.scan_layers(net, x, pre, layers=["conv3", "conv9"], top_k=5, batch_size=10, progress=False)
    for layer, s in scans.items():  # 4 batches, the last of 2 images
        fmap = activations(net, pre(x), layer)
        vals, flat = fmap.flatten(2).max(dim=2)  # (N, F)
        order = torch.sort(vals.T, dim=1, descending=True, stable=True).indices[:, :5]
        np.testing.assert_allclose(s.values, vals.T.gather(1, order).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(s.image_index, order.numpy())
        at, w = flat.T.gather(1, order), fmap.shape[3]
        np.testing.assert_array_equal(s.positions, torch.stack([at // w, at % w], -1).numpy())
        rf = receptive_field(net, layer)
        np.testing.assert_array_equal(s.boxes, [[rf.box(h, w) for h, w in row] for row in s.positions])
        assert (s.layer, s.model, s.top_k, s.num_images, s.num_filters) == (layer, "all-cnn-c", 5, 32, fmap.shape[1])
        assert (s.rf_size, s.rf_stride, s.rf_offset) == (rf.size, rf.stride_hw, rf.start_hw)


def test_scan_layers_shares_one_pass_and_top_k_caps_at_n(net, images, pre) -> None:
    both = figure2.scan_layers(net, images[:6], pre, layers=["conv6", "conv2"], top_k=9, batch_size=4,
                               progress=False)
    for layer in ("conv2", "conv6"):
        alone = figure2.scan(net, images[:6], pre, layer=layer, top_k=9, progress=False)
        assert both[layer].top_k == alone.top_k == 6  # only 6 images
        np.testing.assert_array_equal(both[layer].image_index, alone.image_index)
        np.testing.assert_allclose(both[layer].values, alone.values, rtol=1e-5)


# --- reconstructions -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cone", [True, False], ids=["cone", "window"])
@pytest.mark.parametrize("pool,layer,window", [(False, "conv3", 8), (False, "conv6", 24), (False, "conv7", 32),
                                               (True, "conv4", 12), (True, "pool2", 24)])
def test_windowed_reconstruction_equals_full_image_at_every_position(images, pre, pool: bool, layer: str,
                                                                     window: int, cone: bool, monkeypatch) -> None:
    """Both fast paths: the window alone (any net), and the cone within it (chain nets, ``vis.cone``)."""
    model = _mini(pool)
    if not cone:
        monkeypatch.setattr(figure2, "chain", lambda *a: None)
    assert (figure2.chain(model, layer) is not None) == cone
    s = _all_positions(model, images[:8], pre, layer)
    assert figure2._window_size(s) == (window, window)  # the fast path is really taken where it can be
    x, k, f, size = pre(images[:8]), s.top_k, 5, s.rf_size
    idx, pos = torch.arange(k) % 8, torch.from_numpy(s.positions[f])
    starts = np.array(s.rf_offset) + s.positions[f] * np.array(s.rf_stride)
    got = figure2.reconstructions(model, images[:8], pre, s, filters=[f], batch_size=64)
    for m in METHODS:
        full = reconstruct_at(model, x[idx], method=m, layer=layer, channels=torch.full((k,), f), positions=pos)
        want = torch.stack([_cut(full[i], *map(int, starts[i]), size, 0.0) for i in range(k)])
        inside = torch.stack([_cut(torch.ones_like(full[i]), *map(int, starts[i]), size, 0.0) for i in range(k)])
        assert float(want.abs().sum()) == pytest.approx(float(full.abs().sum()), rel=1e-6)  # nothing outside the RF
        assert got[m].shape == (1, k, 3, size, size) and not got[m][0][inside == 0].any()
        torch.testing.assert_close(got[m][0], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_reconstructions_of_real_picks_match_full_image(net, images, pre) -> None:
    s = figure2.scan(net, images, pre, layer="conv6", top_k=2, progress=False)
    t0 = time.perf_counter()
    fast = figure2.reconstructions(net, images, pre, s, methods=["guided"], filters=[1, 9])["guided"]
    spent = time.perf_counter() - t0
    slow = figure2.reconstructions(net, images, pre, s, methods=["guided"], filters=[1, 9], crop=False)["guided"]
    assert fast.shape == (2, 2, 3, 19, 19) and fast.abs().amax() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5 * float(slow.abs().max()))
    assert set(s.seconds) == {"scan", "guided"}  # (a one-method call: its own key)
    assert 0 <= s.seconds["guided"] <= spent + 1e-3  # the time the call took (rounded to ms), not a timestamp
    assert figure2.attach(s, images, {"guided": fast}, filters=[1, 9]) is s and s.recons["guided"].shape == fast.shape


def test_without_filters_every_filter_is_reconstructed_and_attached(images, pre) -> None:
    model = _mini(False)
    s = figure2.scan(model, images[:8], pre, layer="conv8", top_k=2, progress=False)
    every = list(range(s.num_filters))
    got = figure2.reconstructions(model, images[:8], pre, s, methods=["guided"])["guided"]
    assert got.shape[:2] == (10, 2) and torch.equal(got, figure2.reconstructions(
        model, images[:8], pre, s, methods=["guided"], filters=every)["guided"])
    assert torch.equal(figure2.patches(images[:8], s), figure2.patches(images[:8], s, filters=every))
    assert figure2.attach(s, images[:8], {"guided": got}).filters.tolist() == every


def test_patches_are_the_rf_with_gray_outside(images, pre) -> None:
    model = _mini(False)
    s = _all_positions(model, images[:8], pre, "conv6")
    tiles = figure2.patches(images[:8], s, filters=[2])
    starts = np.array(s.rf_offset) + s.positions[2] * np.array(s.rf_stride)
    assert tiles.dtype == torch.uint8 and tiles.shape == (1, 64, 3, 19, 19)
    for i in range(64):
        assert torch.equal(tiles[0, i], _cut(images[i % 8], *map(int, starts[i]), 19, PATCH_FILL))
    assert (tiles[0, 0, :, :9, :] == PATCH_FILL).all()  # unit (0, 0): its RF starts 9 px above the image


@pytest.mark.parametrize("h,w,window", [(16, 16, (16, 16)), (19, 19, (19, 19)), (32, 16, (24, 16)),
                                         (20, 32, (20, 24))])
def test_a_tile_is_the_rf_or_a_whole_side_of_the_image(images, pre, h: int, w: int, window: tuple[int, int]) -> None:
    """conv6's RF is 19 px: along a side of the image no longer than that, the tile is the whole side and its signal
    the full-image reconstruction's, nothing cut off (as for ResNet-50's layer4 on 224 px); along a longer side, the
    RF's. Non-square images included, and a side exactly as long as the RF."""
    model, small = _mini(False), images[:8, :, :h, :w].contiguous()
    s = _all_positions(model, small, pre, "conv6")
    assert s.rf_size == 19 and s.image_size == (h, w) and figure2._window_size(s) == window
    k, size, x = s.top_k, (min(19, h), min(19, w)), pre(small)
    starts = np.array(s.rf_offset) + s.positions[3] * np.array(s.rf_stride)
    starts[:, [19 >= h, 19 >= w]] = 0  # a whole side starts at the image's edge
    idx, pos = torch.arange(k) % 8, torch.from_numpy(s.positions[3])
    tiles = figure2.patches(small, s, filters=[3])
    assert torch.equal(tiles[0], torch.stack([_cut(small[i % 8], *map(int, starts[i]), size, PATCH_FILL)
                                              for i in range(k)]))
    got = figure2.reconstructions(model, small, pre, s, filters=[3])
    for m in METHODS:
        full = reconstruct_at(model, x[idx], method=m, layer="conv6", channels=torch.full((k,), 3), positions=pos)
        want = torch.stack([_cut(full[i], *map(int, starts[i]), size, 0.0) for i in range(k)])
        assert float(want.abs().sum()) == pytest.approx(float(full.abs().sum()), rel=1e-6)  # nothing outside
        assert got[m].shape == (1, k, 3, *size)
        torch.testing.assert_close(got[m][0], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_the_window_holds_an_rf_at_any_alignment_to_the_stride(images, pre) -> None:
    """A 3x3 conv then a 2x2 pool: a 4 px RF on a stride of 2 that starts at odd pixels, so its stride-aligned window
    must be 6 px, not 4."""
    torch.manual_seed(2)
    model = AllConvNet(OrderedDict(conv1=ConvBlock(3, 8, 3), pool1=nn.MaxPool2d(2, 2), conv2=ConvBlock(8, 8, 1),
                                   gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()), "even").eval()
    s = _all_positions(model, images[:8], pre, "conv2")
    assert (s.rf_size, s.rf_offset, figure2._window_size(s)) == (4, (-1, -1), (6, 6))
    got = figure2.reconstructions(model, images[:8], pre, s, filters=[1])
    slow = figure2.reconstructions(model, images[:8], pre, s, filters=[1], crop=False)
    for m in METHODS:
        torch.testing.assert_close(got[m], slow[m], rtol=1e-4, atol=1e-5 * float(slow[m].abs().max()))


# --- save / load ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_save_load_round_trip(fig, tmp_path: Path, compress: bool) -> None:
    s, img = fig
    path = s.save(tmp_path / "deep" / "conv6.scan") if not compress else \
        figure2.save_scan(s, tmp_path / "deep" / "conv6.scan", compress=True)  # any suffix, parent created
    if compress:
        assert path.stat().st_size < figure2.save_scan(s, tmp_path / "plain.npz").stat().st_size / 2
    back = figure2.load_scan(path)
    for f in dataclasses.fields(Scan):
        a, b = getattr(s, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif isinstance(a, dict):
            assert list(a) == list(b) and all(np.array_equal(a[m], b[m]) for m in a), f.name
        else:
            assert a == b, f.name
    assert list(back.recons) == list(METHODS) and back.patches.shape == (3, 4, 3, 19, 19)
    assert np.array_equal(np.asarray(figure2.figure(path)), np.asarray(img))  # the figure, straight from the file
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["conv6.scan"]  # no temp file left


def test_load_scan_refuses_foreign_and_damaged_files(fig, tmp_path: Path) -> None:
    s, _ = fig
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", values=np.zeros(3))
    good = s.save(tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    damaged = dataclasses.replace(s, image_index=s.image_index[:, :2])
    damaged.save(tmp_path / "shapes.npz")
    cases = {"missing.npz": "scan file not found", "junk.npz": "not a readable Figure 2 scan",
             "other.npz": "not a readable Figure 2 scan", "cut.npz": "not a readable Figure 2 scan",
             "shapes.npz": "inconsistent shapes"}
    for name, msg in cases.items():
        with pytest.raises(AllconvError, match=msg) as e:
            figure2.load_scan(tmp_path / name)
        assert "\n" not in str(e.value)


# --- figure --------------------------------------------------------------------------------------------------------

def _width(labels: list[str], body: int, title: str) -> int:
    """``layout.compose``'s width: the label margin plus the panels, or the title line if that is wider."""
    return max(label_width(labels) + body, text_width(title, HEAD_FONT) + 2 * PAD)


def test_figure_size_and_layout(fig, images) -> None:
    s, img = fig
    tile, k, rows, top = 19 * 3, 4, 3, HEAD_H + TITLE_H
    panel_w, panel_h = k * (tile + 1) + 1, rows * (tile + 1) + 1
    title = "all-cnn-c, conv6: each filter's top 4 patches in 64 cifar10 test images"
    assert figure2.default_title(s) == title
    labels = ["conv6 #0", "conv6 #3", "conv6 #7"]
    margin = label_width(labels)
    assert img.size == (_width(labels, 4 * panel_w + 3 * GAP, title), top + panel_h)
    a = np.asarray(img)
    assert (a[:HEAD_H, PAD:PAD + text_width(title)] < 128).any()  # the title line is drawn
    for r in range(rows):  # patches panel: each tile is its uint8 patch, upscaled 3x (nearest)
        for c in range(k):
            y, x = top + 1 + r * (tile + 1), margin + 1 + c * (tile + 1)
            want = s.patches[r, c].transpose(1, 2, 0).repeat(3, 0).repeat(3, 1)
            np.testing.assert_array_equal(a[y:y + tile, x:x + tile], want)
    x0 = margin + 2 * (panel_w + GAP) + 1  # first tile of the third panel: deconvnet
    want = render.to_image(torch.from_numpy(s.recons["deconvnet"][0, 0]))
    want = (want * 255).round().byte().permute(1, 2, 0).numpy().repeat(3, 0).repeat(3, 1)
    np.testing.assert_array_equal(a[top + 1:top + 1 + tile, x0:x0 + tile], want)
    assert (a[top:, margin + panel_w:margin + panel_w + GAP] == 255).all()  # white gap between panels
    one = figure2.figure(s, ["guided"], [7], scale=2, title="t")
    assert one.size == (_width(["conv6 #7"], 2 * (k * 39 + 1) + GAP, "t"), top + 40)


def test_render_scan_methods_and_filters(net, images, pre) -> None:
    s = figure2.scan(net, images[:8], pre, layer="conv2", top_k=4, progress=False)
    img = figure2.render_scan(net, images[:8], pre, s, methods=["backprop"], filters=[4, 1], scale=3, title="x")
    assert list(s.recons) == ["backprop"] and s.filters.tolist() == [4, 1] and s.patches.shape == (2, 4, 3, 5, 5)
    tile = 5 * 5  # a 5x5 RF at scale 3 would be 15 px: enlarged to MIN_TILE (24) or more
    body = 2 * (4 * (tile + 1) + 1) + GAP
    assert img.size == (_width(["conv2 #4", "conv2 #1"], body, "x"), HEAD_H + TITLE_H + 2 * (tile + 1) + 1)
    assert {"scan", "render"} <= set(s.seconds) and any("backprop" in k for k in s.seconds)


def _ink_bands(a: np.ndarray, x0: int, x1: int, y0: int) -> int:
    """How many separate runs of rows hold dark pixels in columns x0..x1 below y0 (one per legible text line)."""
    dark = (a[y0:, x0:x1] < 128).any(axis=(1, 2))
    return int((dark[1:] & ~dark[:-1]).sum() + dark[0])


def test_small_receptive_fields_get_legible_rows(net, images, pre) -> None:
    """conv1's 3x3 RF at scale 3 made 9 px tiles under 11 px labels: the labels ran together."""
    s = figure2.scan(net, images[:16], pre, layer="conv1", top_k=3, progress=False)
    img = figure2.render_scan(net, images[:16], pre, s, methods=["guided"], filters=range(6), scale=3)
    labels = [f"conv1 #{f}" for f in range(6)]
    tile = 3 * 8
    assert tile >= MIN_TILE and img.height == HEAD_H + TITLE_H + 6 * (tile + 1) + 1
    assert _ink_bands(np.asarray(img), 0, label_width(labels), HEAD_H + TITLE_H) == 6  # six separate labels


def test_class_layer_is_the_conv_feeding_the_global_average(net) -> None:
    from torchvision.models import resnet18

    assert figure2.class_layer(net) == figure2.class_layer(net, 10) == "conv9"
    assert figure2.class_layer(net, 100) is None and figure2.class_layer(_mini(True), 10) == "conv8"
    assert figure2.class_layer(resnet18(num_classes=10)) is None  # ends in a linear layer
    assert figure2.class_layer(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten())) is None  # no global pooling


def test_class_layer_rows_are_named_and_patches_captioned(net, images, pre, monkeypatch) -> None:
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = torch.arange(16) % 10
    seen: dict[str, object] = {}
    real_compose = figure2.compose

    def spy(grids, row_labels, title=None):  # noqa: ANN001, ANN202
        seen["rows"], seen["title"] = list(row_labels), title
        return real_compose(grids, row_labels, title)

    monkeypatch.setattr(figure2, "compose", spy)
    s = figure2.scan(net, images[:16], pre, layer="conv9", top_k=2, progress=False)
    img = figure2.render_scan(net, images[:16], pre, s, methods=["guided"], filters=[3, 5], classes=classes,
                              labels=labels)
    assert seen["rows"] == ["conv9 #3 cat", "conv9 #5 dog"]
    tile = 27 * 3 + render.LABEL_HEIGHT  # each tile under a caption band, in every panel so the rows align
    assert img.height == HEAD_H + TITLE_H + 2 * (tile + 1) + 1
    a = np.asarray(img)
    margin = label_width(seen["rows"])
    band = a[HEAD_H + TITLE_H + 1:HEAD_H + TITLE_H + 1 + render.LABEL_HEIGHT]
    assert (band[:, margin:margin + 2 * 82] < 128).any()  # the patches' captions (their images' classes) ...
    assert (band[:, margin + 2 * 82 + 1 + GAP:] == 255).all()  # ... and a blank band over the reconstructions
    figure2.render_scan(net, images[:16], pre, s, methods=["guided"], filters=[3], classes=classes[:4])
    assert seen["rows"] == ["conv9 #3"]  # classes that are not the model's: plain row labels
    figure2.render_scan(net, images[:16], pre, figure2.scan(net, images[:16], pre, layer="conv6", top_k=2,
                                                            progress=False), methods=["guided"], filters=[3],
                        classes=classes, labels=labels)
    assert seen["rows"] == ["conv6 #3"]  # not the class layer
    for bad in (12, 10, -1):  # 10: one past the last class
        with pytest.raises(AllconvError, match=rf"label {bad} is not a class index 0..9"):
            figure2.render_scan(net, images[:16], pre, s, methods=["guided"], filters=[3], classes=classes,
                                labels=torch.where(labels == 4, bad, labels))
    with pytest.raises(AllconvError, match=r"3 captions for 16 scanned images; give one per scanned image"):
        figure2.figure(s, captions=["a", "b", "c"])


def test_activation_maps_have_a_colour_scale() -> None:
    acts = torch.stack([torch.arange(16.0).view(4, 4), torch.zeros(4, 4)])  # max 15 at the bottom right
    panel = layout.activation_panel(acts, (8, 8), scale=2)
    a = np.asarray(panel)
    bar_x = (8 * 2 + 2) + 2 + BAR_W // 2  # the grid, 2 px, then the bar
    ends = render.heatmap(torch.tensor([[1.0, 0.0]]), layout.CMAP)[:, 0]  # (3, 2): the colours of max and min
    for want, y in ((ends[:, 0], 1), (ends[:, 1], 16)):
        np.testing.assert_allclose(a[y, bar_x] / 255, want.numpy(), atol=1 / 255)
    assert panel.width > 18 + BAR_W and (a[1:17, bar_x + BAR_W:] < 128).any()  # the bar and its numbers


def test_image_figure_layout() -> None:
    raw = torch.zeros(3, 32, 32, dtype=torch.uint8)
    sigs = {"guided": torch.randn(2, 3, 32, 32)}
    img = layout.image_figure(raw, torch.rand(2, 8, 8), sigs, ["conv6 #0", "conv6 #1"], 3, title="T")
    assert img.height == HEAD_H + TITLE_H + 2 * (96 + 1) + 1
    assert img.width >= label_width(["conv6 #0"]) + 3 * 98 + BAR_W + 2 * GAP


def test_figure2_defaults_to_a_progress_bar_and_the_top_9(net, images, pre, capsys) -> None:
    t0 = time.perf_counter()
    s, _ = figure2.figure2(net, images[:16], pre, layer="conv3", filters=[0], methods=["guided"])
    spent = time.perf_counter() - t0
    assert "scan conv3" in capsys.readouterr().err  # tqdm's bar, on stderr
    assert s.top_k == 9 and s.recons["guided"].shape[:2] == (1, 9)  # the paper's Figure 2: 9 patches per filter
    assert 0 <= s.seconds["render"] <= spent + 1e-3  # the time drawing took, not a timestamp


def test_bad_input_is_one_line(net, images, pre, fig) -> None:
    s, _ = fig
    cases = [
        (lambda: figure2.scan(net, pre(images[:2]), pre, layer="conv6"), "uint8"),
        (lambda: figure2.scan(net, images[:0], pre, layer="conv6"), "non-empty"),
        (lambda: figure2.scan(net, images[:2], pre, layer="conv99"), "unknown layer 'conv99'; valid: conv1, conv2"),
        (lambda: figure2.scan(net, images[:2], pre, layer="flatten", progress=False), r"\(N, C, H, W\) maps"),
        (lambda: figure2.scan(net, images[:2], pre, layer="conv6", top_k=0), "top_k and batch_size must be >= 1"),
        (lambda: figure2.reconstructions(net, images, pre, s, filters=[192]), "filter 192 out of range .* 0-191"),
        (lambda: figure2.reconstructions(net, images, pre, s, methods=["lrp"]), "unknown method 'lrp'"),
        (lambda: figure2.figure(dataclasses.replace(s, patches=None)), "no tiles yet"),
        (lambda: figure2.figure(s, filters=[1]), "asked for filters 1"),
        (lambda: figure2.figure(s, filters=[9, 1, 2, 4, 5, 6, 2, 10]),  # runs of filters are named as ranges
         r"for filters 0,3,7; asked for filters 1-2,4-6,9-10: re-run"),
        (lambda: figure2.figure(dataclasses.replace(s, recons={"guided": s.recons["guided"]}), ["backprop"]),
         "holds methods guided .* asked for backprop"),
    ]
    for call, msg in cases:
        with pytest.raises(AllconvError, match=msg) as e:
            call()
        assert "\n" not in str(e.value)
