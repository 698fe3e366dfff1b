"""The Streamlit app's views through ``AppTest``: every view and widget path, asserting on what the page shows."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from allconv.models import create
from appkit import (CLASSES, captions, errors, grid_caption, grid_png, grid_spec, image_urls, ok, png_bytes, png_header,
                    run)

# --- Image view ----------------------------------------------------------------------------------------------------

def test_image_view_shows_image_top5_grid_and_detail(env: dict[str, Path]) -> None:
    at = ok(run())
    caps = captions(at)
    assert caps[0] == "tiny test #0 (airplane)"
    assert caps[1:4] == [f"{m} (its receptive field)" for m in ("guided", "deconvnet", "backprop")]
    assert caps[4].startswith("activation 32x32") and caps[5].startswith("receptive field rows")
    assert grid_caption(at).startswith("conv1, guided: each filter's reconstruction")
    spec = grid_spec(at)
    assert spec["layer"][0]["data"]["values"][0]["url"].startswith("data:image/png;base64,")  # one PNG, not JPEG
    assert [c["filter"] for c in spec["layer"][1]["data"]["values"]] == list(range(96))
    assert all(u.endswith(".png") for u in image_urls(at)), image_urls(at)  # lossless, never JPEG
    top = at.dataframe[0].value
    assert list(top.columns) == ["class", "probability"] and len(top) == 5
    assert set(top["class"]) <= set(CLASSES) and list(top["probability"]) == sorted(top["probability"], reverse=True)
    assert 0 < top["probability"].sum() <= 1.0001
    assert [s.value for s in at.subheader] == ["Top-5 classes", "conv1: every filter (guided)", "conv1 filter 0"]
    assert at.sidebar.selectbox(key="layer").options == [f"conv{i}" for i in range(1, 10)]


def test_deep_link_sets_checkpoint_layer_filter_method_and_image(env: dict[str, Path]) -> None:
    at = ok(run({"layer": "conv3", "filter": "5", "method": "deconvnet", "cls": "cat", "image": "1", "view": "Image"}))
    assert at.sidebar.selectbox(key="checkpoint").value.endswith("tiny.safetensors")
    assert at.sidebar.selectbox(key="layer").value == "conv3" and at.sidebar.select_slider(key="filter").value == 5
    assert [s.value for s in at.subheader][1:] == ["conv3: every filter (deconvnet)", "conv3 filter 5"]
    assert captions(at)[0] == "tiny test #13 (cat)"  # the 2nd cat of the test split (indices 3, 13)


def test_widgets_change_layer_filter_method_image_split(env: dict[str, Path]) -> None:
    at = ok(run())
    at.sidebar.selectbox(key="layer").select("conv9").run()
    assert at.sidebar.select_slider(key="filter").options == [str(i) for i in range(10)]
    at.sidebar.select_slider(key="filter").set_value(7).run()
    assert "conv9 filter 7" in [s.value for s in ok(at).subheader]
    at.sidebar.segmented_control(key="method").set_value("backprop").run()
    assert grid_caption(ok(at)).startswith("conv9, backprop") and len(grid_spec(at)["layer"][1]["data"]["values"]) == 10
    at.sidebar.number_input(key="image").increment().run()  # + is the next image
    assert captions(ok(at))[0] == "tiny test #1 (automobile)"
    at.sidebar.selectbox(key="cls").select("dog").run()
    at.sidebar.number_input(key="image").set_value(1).run()
    assert captions(ok(at))[0] == "tiny test #15 (dog)"
    at.sidebar.segmented_control(key="split").set_value("train").run()
    assert captions(ok(at))[0] == "tiny train #15 (dog)"


def test_grid_image_is_the_selected_methods_reconstruction(env: dict[str, Path]) -> None:
    """Not only the captions: the grid picture itself is each method's reconstruction, computed here without the app."""
    import vis
    from allconv.checkpoint import load
    from allconv.data import load as load_data
    from app import compute

    model, meta = load(env["ckpt"])
    x = compute.model_input(load_data(env["data"]).x_test[0], meta.preprocess)  # the page's image: tiny test #0
    want = {m: compute.png(compute.reconstruction_grid(model, x, "conv9", m, meta.classes)) for m in vis.METHODS}
    assert len(set(want.values())) == len(want)  # the three methods draw three different grids
    at = ok(run({"layer": "conv9"}))
    for method in vis.METHODS:
        at.sidebar.segmented_control(key="method").set_value(method).run()
        assert grid_caption(ok(at)).startswith(f"conv9, {method}")
        shown = next((m for m, png in want.items() if png == grid_png(at)), "none of the methods")
        assert shown == method, f"method {method} selected, but the grid shows {shown}'s reconstruction"


def test_a_net_without_the_chosen_layer_opens_at_its_first(env: dict[str, Path]) -> None:
    from allconv.checkpoint import Meta, save
    from allconv.models import layer_names
    from allconv.preprocess import Preprocess

    model, pre = create("model-a"), Preprocess.fit("standardize", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    save(env["ckpts"] / "a.safetensors", model, Meta(model="model-a", classes=CLASSES, preprocess=pre))
    at = ok(run({"layer": "conv9"}))
    at.sidebar.selectbox(key="checkpoint").select("ckpts/a.safetensors").run()  # Model A has no conv9
    assert at.sidebar.selectbox(key="layer").value == layer_names(model)[0] == "conv1"
    assert "conv1 filter 0" in [s.value for s in ok(at).subheader]


def test_filter_is_clamped_when_the_layer_has_fewer_filters(env: dict[str, Path]) -> None:
    at = ok(run({"layer": "conv2", "filter": "90"}))
    at.sidebar.selectbox(key="layer").select("conv9").run()
    assert at.sidebar.select_slider(key="filter").value == 0
    assert "conv9 filter 0" in [s.value for s in ok(at).subheader]


@pytest.mark.parametrize("index", ["2", "15"])  # the tiny test split has 2 ships: #2 is one past the last
def test_image_index_past_its_class_starts_over(env: dict[str, Path], index: str) -> None:
    at = ok(run({"image": index}))
    assert at.sidebar.number_input(key="image").label == "Index (0-19)"  # every class: 20 images
    at.sidebar.selectbox(key="cls").select("ship").run()  # the index input's range changes: it starts at 0 again
    assert captions(ok(at))[0] == "tiny test #8 (ship)" and at.sidebar.number_input(key="image").value == 0
    assert at.sidebar.number_input(key="image").label == "Index (0-1)"
    at = ok(run({"cls": "ship", "image": index}))  # a link with an index past the class
    assert captions(ok(at))[0] == "tiny test #8 (ship)" and at.sidebar.number_input(key="image").value == 0
    assert captions(ok(run({"cls": "ship", "image": "1"})))[0] == "tiny test #18 (ship)"  # the last one opens


def test_a_class_with_one_image_shows_it_and_one_with_none_says_so(env: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    y = np.array([0, 1, 1, 3, 4, 5, 6, 7, 8, 9])  # one airplane, no bird
    x = np.zeros((10, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "odd.npz", x_train=x, y_train=y, x_test=x, y_test=y, label_names=np.array(CLASSES))
    monkeypatch.setenv("ALLCONV_DATA", str(tmp_path / "odd.npz"))
    assert captions(ok(run({"cls": "airplane"})))[0] == "odd test #0 (airplane)"
    at = run({"cls": "bird"})
    assert not at.exception and errors(at) == ["the test split has no images of class 'bird'"]


def test_upload_replaces_the_dataset_image(env: dict[str, Path]) -> None:
    at = ok(run())
    at.sidebar.file_uploader(key="upload").upload("red.png", png_bytes(), "image/png")
    at.run()
    assert captions(ok(at))[0] == "uploaded red.png: 50x40 RGBA: center-cropped to 40x40, resized to 32x32"
    assert "Showing the upload" in at.sidebar.caption[0].value
    digest = at.query_params["upload"]
    assert len(digest) == 16  # the URL says an upload is shown
    at.sidebar.file_uploader(key="upload").clear().run()  # removed here: no note about a link from an upload
    assert captions(ok(at))[0] == "tiny test #0 (airplane)" and not at.warning and "upload" not in at.query_params


def test_a_link_shared_from_an_upload_says_so(env: dict[str, Path]) -> None:
    from app.sidebar import UPLOAD_LINK_NOTE

    at = run({"upload": "0123456789abcdef", "image": "1"})
    assert not at.exception and [w.value for w in at.warning] == [UPLOAD_LINK_NOTE]
    assert captions(ok(at))[0] == "tiny test #1 (automobile)" and "upload" not in at.query_params
    at.run()
    assert not at.warning  # said once


@pytest.mark.parametrize("name,data,message", [
    ("notes.txt", b"not an image", "is not a readable image"),
    ("fake.png", b"\x89PNG\r\n\x1a\n broken", "is not a readable image"),
    ("huge.png", b"\0" * (5 * 2**20 + 1), "the limit is 5 MB"),
    ("bomb.png", png_header(30_000, 30_000), "the limit is 50 megapixels"),
    ("big.png", png_header(10_000, 6_000), "10000x6000 pixels; the limit is 50 megapixels"),
], ids=["text", "broken-png", "too-many-bytes", "bomb", "too-many-pixels"])
def test_bad_upload_is_one_error_and_the_page_keeps_working(env: dict[str, Path], name: str, data: bytes,
                                                             message: str) -> None:
    at = run()
    at.sidebar.file_uploader(key="upload").upload(name, data)
    at.run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0]
    assert captions(at)[0] == "tiny test #0 (airplane)"  # falls back to the dataset image
    assert len(at.image) == 6 and grid_spec(at)

# --- Other views ---------------------------------------------------------------------------------------------------

def _figure_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Figure 2 for"))


def _figures(at: AppTest) -> list[tuple[dict, Image.Image]]:
    """The Layer view's figures (guided, deconvnet, backprop): each chart's spec and its PNG."""
    out = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        url = spec["layer"][0]["data"]["values"][0]["url"]
        out.append((spec, Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))))
    return out


def test_layer_view_draws_figure2_and_saves_the_scan(env: dict[str, Path]) -> None:
    at = ok(run({"view": "Layer", "layer": "conv2", "filter": "3"}))
    assert [s.value for s in at.subheader] == ["conv2: top 10 test patches of filters 3-10"]
    assert _figure_caption(at).startswith("Figure 2 for conv2 (guided, deconvnet, backprop)")
    assert "the 10 strongest of 20 test images" in _figure_caption(at)  # top-10, as the CLI
    (npz,) = (env["root"] / "cache" / "scans").glob("conv2-*.npz")
    at.sidebar.segmented_control(key="method").set_value("deconvnet").run()  # the Image view's choice: same figure
    assert _figure_caption(ok(at)).startswith("Figure 2 for conv2 (guided, deconvnet, backprop)")


def test_layer_view_tiles_open_their_pick(env: dict[str, Path]) -> None:
    """Every panel's tile i is pick i: its box lies on the tile in the figure's PNG, its tooltip names filter and
    image, and the link the click makes (view, cls=all, image, filter) shows that image at that filter."""
    from vis.figure2 import load_scan

    at = ok(run({"view": "Layer", "layer": "conv2", "filter": "3"}))
    figures = _figures(at)
    assert len(figures) == 3  # one per method, each shown (nearly) at full size in the main column
    assert all(spec["width"] <= 900 and spec["width"] >= 0.9 * png.width for spec, png in figures)
    spec, png = figures[1]  # deconvnet
    boxes = spec["layer"][1]["data"]["values"]
    assert len(boxes) == 2 * 80 and [b["filter"] for b in boxes[:80]] == list(range(80))  # 2 panels, 8 x top 10
    (npz,) = (env["root"] / "cache" / "scans").glob("conv2-*.npz")
    s = load_scan(npz)
    data = np.load(env["data"])
    f, j = 5, 7  # pick 27: filter 5, its 8th image
    box, idx = boxes[(f - 3) * 10 + j], int(s.image_index[f, j])
    assert box["label"] == f"conv2 #5: test image {idx} ({CLASSES[int(data['y_test'][idx])]})"
    x0, y0, x1, y1 = (round(box[k]) for k in ("x0", "y0", "x1", "y1"))
    rf = s.rf_size * ((x1 - x0) // s.rf_size)  # the tile: the patch, upscaled
    tile = np.asarray(png.convert("RGB"))[y0:y0 + rf, x0:x0 + rf]
    scale = rf // s.rf_size
    top, left = s.boxes[f, j][:2]
    want = data["x_test"][idx][max(top, 0):top + s.rf_size, max(left, 0):left + s.rf_size]
    inner = tile[(max(top, 0) - top) * scale::scale, (max(left, 0) - left) * scale::scale][:want.shape[0], :want.shape[1]]
    assert np.array_equal(inner, want)  # box (f, j) lies on pick (f, j)'s patch
    at = ok(run({"view": "Image", "layer": "conv2", "cls": "all", "image": str(idx), "filter": str(f)}))
    assert captions(at)[0] == f"tiny test #{idx} ({CLASSES[int(data['y_test'][idx])]})"
    assert [s.value for s in at.subheader][-1] == "conv2 filter 5"


def test_layer_view_bad_scan_limit(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "lots")
    at = run({"view": "Layer"})
    assert not at.exception and "ALLCONV_SCAN_LIMIT must be a positive integer" in errors(at)[0]


@pytest.mark.parametrize("layer,caption", [
    ("conv1", "all 96 filters of conv1 (3x3 RGB)"),
    ("conv2", "filter 0 of conv2: its 96 3x3 kernels"),
    ("conv8", "conv8 is a 1x1 conv: its 192 x 192 weight matrix"),
])
def test_filters_view(env: dict[str, Path], layer: str, caption: str) -> None:
    at = ok(run({"view": "Filters", "layer": layer}))
    assert [s.value for s in at.subheader] == [f"Weights of {layer}"]
    assert len(at.image) == 1 and captions(at)[0].startswith(caption)


def test_models_view_table3_and_curves(env: dict[str, Path]) -> None:
    at = ok(run({"view": "Models"}))
    df = at.dataframe[0].value
    assert df.shape == (12, 4) and df.set_index("model").loc["all-cnn-c", "our error %"] == pytest.approx(58.0)
    assert df.set_index("model").loc["all-cnn-c", "our epochs"] == 0  # the tiny checkpoint records no epochs
    assert df.set_index("model").loc["all-cnn-c", "paper error %"] == 9.08
    assert [s.value for s in at.subheader] == ["Table 3: CIFAR-10 test error without augmentation",
                                               "Training curves"]
    assert at.multiselect(key="curves").value == ["ckpts/tiny.safetensors"]  # the sidebar's checkpoint, at first
    assert [m.value for m in at.markdown] == ["**all-cnn-c** on cifar10, 5 epochs (ckpts/tiny.safetensors)"]
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(specs) == 3  # the Table 3 bars, then one accuracy and one loss chart for every chosen net together
    at.multiselect(key="curves").set_value([]).run()
    assert len(ok(at).get("vega_lite_chart")) == 1 and not at.markdown


def test_training_curves_draw_every_chosen_net_in_one_chart() -> None:
    from app.views.models import curves

    def history(acc: float) -> list[dict]:
        return [{"epoch": e, "train_loss": 1 / e, "train_acc": acc * e, "val_acc": acc, "test_acc": None}
                for e in (1, 2)]

    metas = [("a", {}, history(0.1)), ("b", {}, history(0.2)), ("checkpoints/c.safetensors", {}, history(0.3)),
             ("d", {}, [])]
    acc, loss = curves(metas, ["a", "checkpoints/c.safetensors", "d"])  # legends name c by its short name
    assert sorted(set(acc["curve"])) == ["a train", "a val", "c train", "c val"]  # no test curve: never measured
    assert acc.set_index(["curve", "epoch"]).loc[("c train", 2), "accuracy"] == pytest.approx(0.6)
    assert sorted(set(loss["curve"])) == ["a", "c"] and loss["train loss"].tolist() == [1.0, 0.5, 1.0, 0.5]
    assert all(len(t) == 0 for t in curves(metas, ["d"]))


def test_table3_counts_only_cifar10_nets() -> None:
    """A CIFAR-100 net's error is not a Table 3 (CIFAR-10) figure, however low."""
    from app.views.models import table

    metas = [("a", {"model": "all-cnn-c", "test_acc": 0.9, "epochs": 10, "data": "cifar10"}, []),
             ("b", {"model": "all-cnn-c", "test_acc": 0.95, "epochs": 10, "data": "cifar100"}, []),
             ("c", {"model": "model-a", "test_acc": 0.99, "epochs": 10, "data": "cifar100"}, [])]
    df = table(metas).set_index("model")
    assert df.loc["all-cnn-c", "our error %"] == pytest.approx(10.0) and pd.isna(df.loc["model-a", "our error %"])


def test_sanity_view(env: dict[str, Path]) -> None:
    at = ok(run({"view": "Sanity", "layer": "conv2", "filter": "4"}))
    top = at.session_state["unit"] == "class" and at.subheader[0].value
    assert top and top.startswith("Model randomization check: predicted class (")
    df = at.dataframe[0].value
    assert list(df.columns) == ["guided", "deconvnet", "backprop"] and len(df) == 10
    assert df.iloc[0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # stage 0 is the trained net itself
    assert df["backprop"].iloc[-1] < 0.99  # a fully random net explains the class differently
    assert len(at.image) == 1
    at.segmented_control(key="unit").set_value("filter").run()
    assert [s.value for s in ok(at).subheader] == ["Model randomization check: conv2 filter 4"]
    df = at.dataframe[0].value
    assert (df.loc["conv9":"conv9..conv3"] == 1.0).all().all()  # layers above conv2 cannot change its maps


def test_every_one_of_choice_keeps_its_selection(env: dict[str, Path]) -> None:
    """Pressing the lit button of a one-of choice must not clear it (the page would show a default with no button
    lit): view, split, method and the Sanity view's unit are all required."""
    at = ok(run({"view": "Sanity", "layer": "conv2"}))
    required = {c.key: c.proto.required for c in at.segmented_control}
    assert required == {"view": True, "split": True, "method": True, "unit": True}


# --- Shared cached model -------------------------------------------------------------------------------------------

def test_cached_model_has_no_hooks_after_many_reruns(env: dict[str, Path]) -> None:
    from app import cache, sources

    at = run()
    for layer in ("conv3", "conv9"):
        at.sidebar.selectbox(key="layer").select(layer).run()
        for view in ("Layer", "Filters", "Sanity", "Image"):
            at.segmented_control(key="view").set_value(view).run()
    ok(at)
    model = cache.model(sources.stamp(env["ckpt"])).model
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        assert not any(hooks), f"{name or 'model'} has hooks left: {hooks}"
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert torch._C._len_torch_function_stack() == 0  # no backward mode left active


def test_concurrent_sessions_get_their_own_method(env: dict[str, Path]) -> None:
    """Two threads on the one cached model, different methods: each gets what it would get alone."""
    from app import compute

    model = create("all-cnn-c").eval()
    x = torch.randn(1, 3, 32, 32)
    alone = {m: compute.png(compute.reconstruction_grid(model, x, "conv9", m)) for m in ("guided", "backprop")}
    got: dict[str, bytes] = {}

    def work(m: str) -> None:
        for _ in range(3):
            got[m] = compute.png(compute.reconstruction_grid(model, x, "conv9", m))

    threads = [threading.Thread(target=work, args=(m,)) for m in alone]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone and alone["guided"] != alone["backprop"]


def test_class_layer_is_named_by_class(env: dict[str, Path]) -> None:
    """conv9's channels are the classes: grid tiles and Figure 2 rows say which (not 0-9)."""
    from app import compute

    model = create("all-cnn-c").eval()
    assert compute.tile_labels(model, "conv9", 10, CLASSES) == CLASSES
    assert compute.tile_labels(model, "conv6", 192, CLASSES)[:3] == ["0", "1", "2"]
    assert compute.tile_labels(model, "conv9", 10, CLASSES[:5]) == [str(i) for i in range(10)]  # wrong class list
    at = ok(run({"view": "Layer", "layer": "conv9"}))
    assert _figure_caption(at).startswith("Figure 2 for conv9 (guided, deconvnet, backprop)")
    labels = [b["label"] for b in _figures(at)[0][0]["layer"][1]["data"]["values"]]
    assert labels[0].startswith("conv9 #0 airplane: test image ") and labels[-1].startswith("conv9 #7 horse: test")


def test_close_ups_are_cropped_to_the_receptive_field(env: dict[str, Path]) -> None:
    """The reconstructions fill the close-up: cut to the unit's receptive field, the same box as the input patch."""
    import vis
    from app import compute

    torch.manual_seed(0)
    model = create("all-cnn-c").eval()
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    x = image.float().unsqueeze(0) / 255
    d = compute.filter_detail(model, x, image, "conv3", 5)
    t, l, b, r = d.box
    assert (b - t, r - l) != (32, 32) and all(img.size == d.patch.size for img in d.recons.values())
    assert d.activation.width > d.activation.height  # the heatmap has its colour bar beside it
    full = vis.reconstruct(model, x, method="guided", layer="conv3", channel=5, position=d.position)[0]
    assert full[:, :t].abs().sum() == 0 and full[:, b:].abs().sum() == 0  # nothing is cut off
    assert full[:, :, :l].abs().sum() == 0 and full[:, :, r:].abs().sum() == 0


def test_a_cifar100_net_browses_cifar100_by_default(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A net trained on CIFAR-100 (its metadata says so) opens on CIFAR-100's images with its 100 class names, unless
    the server names a dataset; a CIFAR-10 net keeps CIFAR-10."""
    from allconv.checkpoint import Meta, save
    from allconv.preprocess import Preprocess

    root = env["root"]
    rng = np.random.default_rng(1)
    names = [f"fine{i}" for i in range(100)]
    np.savez(root / "c100.npz", x_train=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(100), x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(100)[::-1].copy(), label_names=np.array(names))
    pre = Preprocess.fit("standardize", torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    save(env["ckpts"] / "c100.safetensors", create("all-cnn-c", num_classes=100),
         Meta(model="all-cnn-c", num_classes=100, classes=names, preprocess=pre, config={"data": "cifar100"}))
    monkeypatch.setenv("ALLCONV_CIFAR100", str(root / "c100.npz"))
    monkeypatch.delenv("ALLCONV_DATA")
    label = next(o for o in run().sidebar.selectbox(key="checkpoint").options if o.endswith("c100.safetensors"))
    at = ok(run({"checkpoint": label}))
    assert at.sidebar.text_input(key="data").placeholder == "the net's dataset (cifar100)"
    assert at.sidebar.selectbox(key="cls").options == ["all", *names]
    assert captions(at)[0] == "c100 test #0 (fine99)"  # (the file's name)
    assert set(at.dataframe[0].value["class"]) <= set(names)
    assert ok(run()).sidebar.text_input(key="data").placeholder == "CIFAR-10"  # the tiny CIFAR-10 net
