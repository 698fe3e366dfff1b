"""allconv.image: aspect ratio kept (center crop, no squashing), transparency on grey, 16-bit levels scaled, EXIF
orientation applied, grayscale/CMYK to RGB, each step described in one line, and unreadable input as one line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from allconv import data
from allconv.errors import AllconvError
from allconv.image import BACKGROUND, load_image, load_image_described

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


def test_non_square_is_center_cropped_not_squashed(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 150), RED)  # red 25 px strips left and right, a blue 150x150 square between
    img.paste(BLUE, (25, 0, 175, 150))
    x, how = load_image_described(_png(tmp_path / "wide.png", img))
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert int(x[0].max()) <= 2 and int(x[2].min()) >= 253  # no red strip squeezed in: all blue
    assert how == "200x150 RGB: center-cropped to 150x150, resized to 32x32"
    tall = Image.new("RGB", (30, 90), RED)
    tall.paste(BLUE, (0, 30, 30, 60))  # only the middle third survives the crop
    y, how = load_image_described(tall, size=10)
    assert (y[2] > 250).all() and (y[0] < 5).all() and how == "30x90 RGB: center-cropped to 30x30, resized to 10x10"


def test_transparency_is_composited_on_grey(tmp_path: Path) -> None:
    img = Image.new("RGBA", (200, 150), (0, 0, 0, 0))  # transparent, black underneath (what old code showed)
    img.paste((255, 0, 0, 255), (75, 0, 125, 150))  # an opaque red bar down the middle
    x, how = load_image_described(_png(tmp_path / "a.png", img))
    assert how == "200x150 RGBA: center-cropped to 150x150, transparency composited on grey, resized to 32x32"
    corner = x[:, :, :4].reshape(3, -1)
    assert (corner == torch.tensor(BACKGROUND)[:, None]).all()
    assert int(x[0, 16, 16]) == 255 and int(x[1, 16, 16]) == 0
    half = load_image(Image.new("RGBA", (8, 8), (10, 200, 30, 128)), size=8)
    assert half[:, 0, 0].tolist() == [69, 164, 79]  # 50% over grey, not over black


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_gray_alpha_and_palette_transparency_on_grey(tmp_path: Path, mode: str) -> None:
    if mode == "LA":
        img = Image.new("LA", (20, 20), (0, 0))
        img.paste((255, 255), (0, 0, 10, 20))
    else:
        img = Image.new("P", (20, 20), 0)
        img.putpalette([0, 0, 0, 0, 255, 0])
        img.paste(1, (0, 0, 10, 20))
        img.info["transparency"] = 0  # palette entry 0 (black) is transparent
    x, how = load_image_described(_png(tmp_path / f"{mode}.png", img), size=20)
    assert "transparency composited on grey" in how
    assert (x[:, :, 10:] == torch.tensor(BACKGROUND)[:, None, None]).all()  # the transparent right half
    opaque = [255, 255, 255] if mode == "LA" else [0, 255, 0]
    assert (x[:, :, :10] == torch.tensor(opaque)[:, None, None]).all()


def test_opaque_alpha_is_not_mentioned() -> None:
    x, how = load_image_described(Image.new("RGBA", (32, 32), (1, 2, 3, 255)))
    assert how == "32x32 RGBA: used as is" and x[:, 5, 5].tolist() == [1, 2, 3]


def _gradient16(width: int = 64) -> np.ndarray:
    """A horizontal 0..65535 ramp, ``width`` x ``width``, uint16."""
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (width, 1))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_levels_are_scaled_not_clipped(tmp_path: Path, mode: str) -> None:
    ramp = _gradient16()
    if mode == "I;16":
        img = Image.open(_png(tmp_path / "g16.png", Image.fromarray(ramp)))
    elif mode == "I;16B":
        img = Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes())
    else:
        img = Image.fromarray(ramp.astype(np.int32))
    assert img.mode == mode
    x, how = load_image_described(img, size=64)
    assert how == f"64x64 {mode}: 16-bit levels scaled to 8-bit, grayscale to RGB"
    want = torch.from_numpy((ramp / 257).round().astype(np.uint8))
    assert torch.equal(x[0], want) and torch.equal(x[1], x[2])  # old code: clipped, nearly all 255
    small = load_image(img)
    assert 110 < small.float().mean() < 145 and small[0, 0].diff().min() >= 0  # still a left-to-right ramp


def test_wider_integer_range_is_stretched() -> None:
    img = Image.fromarray(np.array([[-100, 0], [100, 100_000]], dtype=np.int32))
    x, how = load_image_described(img, size=None)
    assert "levels -100..100000 stretched to 0..255" in how and x[0].tolist() == [[0, 0], [1, 255]]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), RED)  # stored sideways: red left, blue right
    img.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": red ends up on top
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    x, how = load_image_described(path, size=20)
    assert how == "40x20 RGB: rotated upright (EXIF orientation 6), center-cropped to 20x20"
    assert x[0, :8].float().mean() > 200 and x[2, :8].float().mean() < 50  # top: red
    assert x[2, -8:].float().mean() > 200 and x[0, -8:].float().mean() < 50  # bottom: blue


def test_grayscale_and_cmyk_become_rgb(tmp_path: Path) -> None:
    gray, how = load_image_described(_png(tmp_path / "g.png", Image.new("L", (7, 7), 99)), size=16)
    assert gray.shape == (3, 16, 16) and (gray == 99).all() and how == "7x7 L: grayscale to RGB, resized to 16x16"
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    red, how = load_image_described(buf.getvalue(), size=16)
    assert how == "16x16 CMYK: CMYK to RGB" and red[0].float().mean() > 240 and red[1:].float().mean() < 15


def test_size_none_keeps_the_shape_and_arrays_work() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    x, how = load_image_described(arr, size=None)
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1)) and how == "9x5 RGB: used as is"


@pytest.mark.parametrize("src, label", [(b"\x00\x01 not an image", "bytes"), ("{tmp}/nope.png", "{tmp}/nope.png"),
                                        ("{tmp}/cut.png", "{tmp}/cut.png"), (object(), "object")])
def test_unreadable_image_is_one_line(tmp_path: Path, src, label: str) -> None:
    blob = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(blob, "PNG")
    (tmp_path / "cut.png").write_bytes(blob.getvalue()[:60])
    src = src.format(tmp=tmp_path) if isinstance(src, str) else src
    with pytest.raises(AllconvError, match=f"^cannot read image {label.format(tmp=tmp_path)}: ") as e:
        load_image_described(src)
    assert "\n" not in str(e.value) and str(e.value).endswith("give a PNG, JPEG, BMP or WebP file")


def test_data_load_image_is_the_same_function() -> None:
    assert data.load_image is load_image
