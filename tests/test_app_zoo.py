"""torchvision classifiers in the app (``app.zoo``): only the ones the operator offers, each view at the model's
224x224 input, and the same neutral refusal as the checkpoint allowlist for any other name."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from app import compute, scans, zoo
from app.allow import NO_CHECKPOINT
from app.cli import folders
from appkit import captions, errors, ok, png_bytes, run

R18 = "torchvision:resnet18"


@pytest.fixture()
def offered(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv(zoo.ENV, "resnet18")
    return env


def test_parse_names_and_weights() -> None:
    assert zoo.parse(" resnet18, torchvision:vgg16=DEFAULT ,densenet121=w.pth,") == {
        R18: None, "torchvision:vgg16": "DEFAULT", "torchvision:densenet121": "w.pth"}


def test_cli_refuses_unknown_names_and_missing_files_in_one_line(tmp_path: Path) -> None:
    for bad, says in (("resnet1800", "no such classifier"), (f"resnet18={tmp_path}/no.pth", "no such file")):
        with pytest.raises(SystemExit, match=f"^allconv-app: --torchvision .*{says}"):
            folders(["--torchvision", bad], {})
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    rest, env = folders(["--torchvision", "resnet18", "--torchvision", f"resnet34={weights}", "--server.port", "1"],
                        {zoo.ENV: "vgg16"})
    assert rest == ["--server.port", "1"] and env[zoo.ENV] == f"vgg16,resnet18,resnet34={weights}"


def test_an_offered_model_opens_at_its_input_with_a_random_init_note(offered: dict[str, Path]) -> None:
    at = run({"checkpoint": R18})
    assert not at.exception and not errors(at), errors(at)
    assert R18 in at.sidebar.selectbox(key="checkpoint").options
    assert any("random weights" in w.value for w in at.warning)
    assert captions(at)[0] == "tiny test #0 (airplane), 32x32 resized to 224x224 for resnet18"
    layers = at.sidebar.selectbox(key="layer").options
    assert layers[0] == "conv1" and "layer4.1" in layers and "fc" not in layers
    assert [s.value for s in at.subheader] == ["Top-5 classes", "conv1: every filter (guided)", "conv1 filter 0"]
    assert set(at.dataframe[0].value["class"]) <= {f"class {i}" for i in range(1000)}
    assert captions(at)[4].startswith("activation 112x112")


def test_a_wide_layer_is_paged_and_a_click_picks_the_page_filter(offered: dict[str, Path]) -> None:
    at = ok(run({"checkpoint": R18, "layer": "layer2", "filter": "70"}))
    assert [s.value for s in at.subheader][1] == "layer2: filters 64-127 of 128 (guided)"
    assert any("past 127 for the next page" in c.value for c in at.caption)


def test_upload_is_read_at_the_models_input(offered: dict[str, Path]) -> None:
    at = ok(run({"checkpoint": R18}))
    at.sidebar.file_uploader(key="upload").upload("red.png", png_bytes((300, 200), "RGB"), "image/png")
    at.run()
    assert captions(ok(at))[0].endswith("short side resized to 256, center-cropped to 224x224")


@pytest.mark.parametrize("query", [{"checkpoint": "torchvision:resnet50"}, {"checkpoint_path": "torchvision:vgg16"},
                                   {"checkpoint_path": "torchvision:../../etc/passwd"}])
def test_a_model_not_offered_gets_the_neutral_refusal(offered: dict[str, Path], query: dict[str, str]) -> None:
    at = run(query)
    assert not at.exception and errors(at) == [NO_CHECKPOINT]


def test_without_an_offer_no_torchvision_name_opens(env: dict[str, Path]) -> None:
    at = run({"checkpoint_path": R18})
    assert not at.exception and errors(at) == [NO_CHECKPOINT]
    assert not any(o.startswith("torchvision:") for o in at.sidebar.selectbox(key="checkpoint").options)


def test_layer_view_scans_the_fitted_images(offered: dict[str, Path]) -> None:
    at = ok(run({"checkpoint": R18, "view": "Layer"}))
    assert any("Scan size: 20 images" in c.value for c in at.caption)
    chart = at.get("vega_lite_chart")[0].proto.spec
    url = chart.split('"url": "', 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert img.width <= scans.MAX_FIGURE_PX


@pytest.mark.parametrize("view", ["Filters", "Sanity"])
def test_the_other_views_work_on_a_torchvision_model(offered: dict[str, Path], view: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zoo.ENV, "squeezenet1_1")  # ReLU-only and small: the Sanity view re-randomizes every conv
    at = ok(run({"checkpoint": "torchvision:squeezenet1_1", "view": view, "layer": "features.3.expand3x3"}))
    says = {"Filters": "filter 0 of features.3.expand3x3: its 16 3x3 kernels",
            "Sanity": "maps per method (rows)"}[view]
    assert any(c.startswith(says) for c in captions(at)), captions(at)


def test_grid_filters_pages_only_large_inputs() -> None:
    assert compute.grid_filters(192, 150, 32) == range(0, 192)
    assert compute.grid_filters(512, 130, 224) == range(128, 192)
    assert compute.grid_filters(100, 99, 224) == range(64, 100)


def test_shrink_scales_the_panels_with_the_picture() -> None:
    img = Image.new("RGB", (4800, 1000))
    img.info["panels"] = [{"name": "guided", "x": 2400, "y": 100, "width": 2000, "height": 800}]
    out = scans.shrink(img, 2400)
    assert out.size == (2400, 500)
    assert out.info["panels"] == [{"name": "guided", "x": 1200, "y": 50, "width": 1000, "height": 400}]
    assert scans.shrink(img, 5000) is img
