"""The Streamlit app through ``AppTest``: every view, widget path and error path, asserting on what the page shows.

A tiny random All-CNN-C checkpoint and a 40-image .npz dataset are made once per module in a temp dir; the app finds
them through ALLCONV_CHECKPOINT_DIR / ALLCONV_DATA (ALLCONV_CACHE keeps its caches in the temp dir too).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from allconv.checkpoint import Meta, save
from allconv.errors import AllconvError
from allconv.models import create
from allconv.preprocess import Preprocess

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny.npz (20 train / 20 test images, 2 per class) and ckpts/tiny.safetensors (random All-CNN-C)."""
    root = tmp_path_factory.mktemp("app")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 10
    np.savez(root / "tiny.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:],
             label_names=np.array(CLASSES))
    torch.manual_seed(0)
    pre = Preprocess.fit("standardize", torch.from_numpy(x).permute(0, 3, 1, 2))
    history = [{"epoch": e, "train_loss": 2.3 - 0.1 * e, "train_acc": 0.1 + 0.05 * e, "val_acc": 0.1 + 0.04 * e,
                "test_acc": None, "lr": 0.01, "time": 1.0} for e in range(1, 6)]
    save(root / "ckpts" / "tiny.safetensors", create("all-cnn-c"),
         Meta(model="all-cnn-c", classes=CLASSES, preprocess=pre, metrics={"test_acc": 0.42}, history=history))
    return {"root": root, "data": root / "tiny.npz", "ckpts": root / "ckpts",
            "ckpt": root / "ckpts" / "tiny.safetensors"}


@pytest.fixture()
def env(assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The app pointed at the tiny assets only: the repository's shipped checkpoints and local runs are hidden."""
    import allconv.checkpoint
    import app.sources

    monkeypatch.setattr(allconv.checkpoint, "SHIPPED_DIR", assets["root"] / "no-shipped")
    monkeypatch.setattr(app.sources, "REPO", assets["root"])
    monkeypatch.chdir(assets["root"])
    monkeypatch.setenv("ALLCONV_CHECKPOINT", str(assets["ckpt"]))
    monkeypatch.setenv("ALLCONV_DATA", str(assets["data"]))
    monkeypatch.setenv("ALLCONV_CHECKPOINT_DIR", str(assets["ckpts"]))
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "20")
    monkeypatch.setenv("ALLCONV_CACHE", str(assets["root"] / "cache"))
    return assets


def run(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.query_params.update(query or {})
    return at.run()


def captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def image_urls(at: AppTest) -> list[str]:
    return [u for img in at.image for u in img.value]


def grid_spec(at: AppTest) -> dict:
    """The Image view's clickable grid: the Vega-Lite spec of its one chart (the grid PNG inside, one box per tile)."""
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1, f"{len(charts)} charts"
    return json.loads(charts[0].proto.spec)


def grid_png(at: AppTest) -> bytes:
    """The grid picture the Image view sends: the PNG inside the chart's data URL."""
    url = grid_spec(at)["layer"][0]["data"]["values"][0]["url"]
    assert url.startswith("data:image/png;base64,"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def grid_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if "each filter's reconstruction" in c.value)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def ok(at: AppTest) -> AppTest:
    """No exception box and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    return at


def png_header(width: int, height: int) -> bytes:
    """A PNG that promises width x height pixels (header only): a few bytes that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def png_bytes(size: tuple[int, int] = (50, 40), mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 255) if mode == "RGBA" else 120).save(buf, format="PNG")
    return buf.getvalue()


# --- Image view ----------------------------------------------------------------------------------------------------

def test_image_view_shows_image_top5_grid_and_detail(env: dict[str, Path]) -> None:
    at = ok(run())
    caps = captions(at)
    assert caps[0] == "tiny test #0 (airplane)"
    assert caps[1:4] == ["guided", "deconvnet", "backprop"]
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
    want = {m: compute.png(compute.reconstruction_grid(model, x, "conv9", m)) for m in vis.METHODS}
    assert len(set(want.values())) == len(want)  # the three methods draw three different grids
    at = ok(run({"layer": "conv9"}))
    for method in vis.METHODS:
        at.sidebar.segmented_control(key="method").set_value(method).run()
        assert grid_caption(ok(at)).startswith(f"conv9, {method}")
        shown = next((m for m, png in want.items() if png == grid_png(at)), "none of the methods")
        assert shown == method, f"method {method} selected, but the grid shows {shown}'s reconstruction"


def test_filter_is_clamped_when_the_layer_has_fewer_filters(env: dict[str, Path]) -> None:
    at = ok(run({"layer": "conv2", "filter": "90"}))
    at.sidebar.selectbox(key="layer").select("conv9").run()
    assert at.sidebar.select_slider(key="filter").value == 0
    assert "conv9 filter 0" in [s.value for s in ok(at).subheader]


def test_upload_replaces_the_dataset_image(env: dict[str, Path]) -> None:
    at = ok(run())
    at.sidebar.file_uploader(key="upload").upload("red.png", png_bytes(), "image/png")
    at.run()
    assert captions(ok(at))[0] == "uploaded red.png (resized to 32x32)"
    assert "Showing the upload" in at.sidebar.caption[0].value


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


# --- Checkpoints and data: error paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,message", [
    ("missing", "checkpoint not found"),
    ("corrupt", "corrupt or truncated"),
    ("foreign", "not an allconv checkpoint"),
    ("pickle", "never unpickles"),
])
def test_bad_checkpoint_path_is_one_error(env: dict[str, Path], tmp_path: Path, kind: str, message: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "corrupt":
        path.write_bytes(env["ckpt"].read_bytes()[:5000])
    elif kind == "foreign":
        save_file({"w": torch.zeros(3)}, str(path))
    elif kind == "pickle":
        path = tmp_path / "weights.pt"
        torch.save({"w": torch.zeros(3)}, path)
    at = run()
    at.sidebar.text_input(key="checkpoint_path").input(str(path)).run()
    assert not at.exception
    assert len(errors(at)) == 1 and message in errors(at)[0], errors(at)
    assert "Pick a checkpoint" in at.info[0].value
    at.segmented_control(key="view").set_value("Models").run()  # the rest keeps working
    assert at.dataframe[0].value.shape[0] == 12


def test_no_checkpoint_says_how_to_get_one(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sources

    monkeypatch.setattr(app.sources, "checkpoint_choices", lambda: {})
    at = run()
    assert not at.exception
    assert not errors(at) and len(at.warning) == 1 and "allconv-train --model all-cnn-c" in at.warning[0].value
    at.segmented_control(key="view").set_value("Models").run()
    assert at.dataframe[0].value["paper error %"].tolist()[-1] == 9.08


def test_without_shipped_checkpoint_the_newest_run_is_picked(env: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import app.sources
    from allconv.checkpoint import load

    model, meta = load(env["ckpt"])
    for age, name in enumerate(["new", "old"]):
        f = save(tmp_path / "runs" / name, model, meta)
        os.utime(f, (1e9 - age, 1e9 - age))
    monkeypatch.setattr(app.sources, "REPO", tmp_path)
    monkeypatch.delenv("ALLCONV_CHECKPOINT")
    at = ok(run())
    assert at.sidebar.selectbox(key="checkpoint").value == "runs/new"
    assert "runs/old" in at.sidebar.selectbox(key="checkpoint").options


def test_typed_run_directory_works(env: dict[str, Path], tmp_path: Path) -> None:
    from allconv.checkpoint import load

    model, meta = load(env["ckpt"])
    save(tmp_path / "run1", model, meta)
    at = run({"checkpoint_path": str(tmp_path / "run1")})
    assert captions(ok(at))[0] == "tiny test #0 (airplane)"


def test_missing_dataset_is_one_error_and_upload_still_works(env: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLCONV_DATA", str(env["root"] / "nowhere.npz"))
    at = run()
    assert not at.exception
    assert len(errors(at)) == 1 and "dataset" in errors(at)[0] and "not found" in errors(at)[0]
    assert "upload one" in at.info[0].value
    at.sidebar.file_uploader(key="upload").upload("red.png", png_bytes(), "image/png")
    at.run()
    assert captions(at)[0] == "uploaded red.png (resized to 32x32)" and len(at.image) == 6
    at.segmented_control(key="view").set_value("Layer").run()
    assert "needs a dataset" in at.info[0].value


def test_dataset_text_field_overrides_env(env: dict[str, Path], tmp_path: Path) -> None:
    x = np.full((4, 32, 32, 3), 7, np.uint8)
    np.savez(tmp_path / "other.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    at = run({"data": str(tmp_path / "other.npz")})
    assert captions(ok(at))[0] == "other test #0 (0)"


# --- Other views ---------------------------------------------------------------------------------------------------

def test_layer_view_draws_figure2_and_saves_the_scan(env: dict[str, Path]) -> None:
    at = ok(run({"view": "Layer", "layer": "conv2", "filter": "3"}))
    assert [s.value for s in at.subheader] == ["conv2: top 9 test patches of filters 3-10"]
    assert len(at.image) == 1 and captions(at)[0].startswith("Figure 2 for conv2 (guided)")
    assert "of 20 test images" in captions(at)[0]
    assert list((env["root"] / "cache" / "scans").glob("conv2-*.npz"))
    at.sidebar.segmented_control(key="method").set_value("deconvnet").run()
    assert captions(ok(at))[0].startswith("Figure 2 for conv2 (deconvnet)")


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
    assert df.shape == (12, 3) and df.set_index("model").loc["all-cnn-c", "our error %"] == pytest.approx(58.0)
    assert df.set_index("model").loc["all-cnn-c", "paper error %"] == 9.08
    assert [s.value for s in at.subheader] == ["Table 3: CIFAR-10 test error without augmentation",
                                               "Training curves"]
    assert any("all-cnn-c" in m.value for m in at.markdown)


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


# --- Shared cached model -------------------------------------------------------------------------------------------

def test_cached_model_has_no_hooks_after_many_reruns(env: dict[str, Path]) -> None:
    from app import cache, sources

    at = run()
    for layer in ("conv3", "conv9"):
        at.sidebar.selectbox(key="layer").select(layer).run()
        for view in ("Layer", "Filters", "Sanity", "Image"):
            at.segmented_control(key="view").set_value(view).run()
    ok(at)
    model, _ = cache.model(sources.stamp(env["ckpt"]))
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


# --- Pieces without Streamlit --------------------------------------------------------------------------------------

def test_chunked_scan_equals_one_pass(env: dict[str, Path]) -> None:
    from app import scans
    from vis import figure2

    model = create("all-cnn-c").eval()
    images = torch.randint(0, 256, (23, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocess.fit("standardize", images)
    seen: list[tuple[int, int]] = []
    chunked = scans.compute(model, images, pre, "conv3", "test", progress=lambda d, t: seen.append((d, t)), chunk=10)
    whole = figure2.scan(model, images, pre, layer="conv3", top_k=9, progress=False)
    assert seen == [(10, 23), (20, 23), (23, 23)] and chunked.num_images == 23
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-5)
    np.testing.assert_array_equal(chunked.image_index, whole.image_index)
    np.testing.assert_array_equal(chunked.boxes, whole.boxes)


def test_sources_and_config(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from allconv.data import load
    from app import config, sources

    assert sources.label(env["ckpt"]) in sources.checkpoint_choices()
    splits = load(env["data"])
    picked = sources.from_dataset(splits, "x", "test", "cat", 1)
    assert picked.image.shape == (3, 32, 32) and picked.label == 3 and picked.key == "data:x:test:13"
    with pytest.raises(AllconvError, match="out of range"):
        sources.from_dataset(splits, "x", "test", "cat", 2)
    with pytest.raises(AllconvError, match="unknown class"):
        sources.class_indices(splits, "test", "zebra")
    up = sources.from_upload("g.png", png_bytes((7, 9), "L"))
    assert up.image.shape == (3, 32, 32) and up.image.dtype == torch.uint8
    monkeypatch.setenv("ALLCONV_SCAN_LIMIT", "0")
    with pytest.raises(AllconvError, match="positive integer"):
        config.scan_limit()
    monkeypatch.delenv("ALLCONV_SCAN_LIMIT")
    assert config.scan_limit() == config.DEFAULT_SCAN_LIMIT


def test_cli_command_passes_args_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import cli

    cmd = cli.command(["--server.port", "8999"])
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app/main.py")
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none" and cmd[-2:] == ["--server.port", "8999"]
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, args: calls.append(args))
    assert cli.main(["--server.port", "8999"]) == 0 and calls == [cmd]
    assert cli.main(["--help"]) == 0


def test_streamlit_config() -> None:
    import tomllib

    cfg = tomllib.loads((MAIN.parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none" and cfg["server"]["maxUploadSize"] == 5
    assert cfg["server"]["headless"] is True and cfg["browser"]["gatherUsageStats"] is False
