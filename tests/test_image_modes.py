"""Every PIL mode becomes the right RGB picture, and extreme sizes cannot blow up memory (llava.mm_utils)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava.mm_utils import (
    DEFAULT_BACKGROUND,
    MAX_PAD_SIDE,
    ImageLoadError,
    SampleError,
    background_color,
    build_image_processor,
    expand2square,
    load_image,
    process_images,
    to_rgb,
)

BG = DEFAULT_BACKGROUND  # (122, 116, 104), CLIP's mean colour


def _saved(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def _blend(color, alpha: int, background=BG) -> np.ndarray:
    """Straight-alpha "over", rounded: what a correct composite gives."""
    a = alpha / 255
    return np.rint(np.asarray(color) * a + np.asarray(background) * (1 - a)).astype(int)


# === High bit depth ===


def test_16bit_png_gradient_maps_to_the_8bit_gradient(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.uint16)
    path = _saved(Image.fromarray((levels * 257).reshape(1, 256)), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    rgb = _rgb(load_image(path))
    assert rgb.shape == (1, 256, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], levels)  # before: every level above 0 clipped to 255 (white)
    assert (rgb == rgb[..., :1]).all()  # grey stays grey


def test_16bit_values_round_to_nearest(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 385, 386, 65535]], dtype=np.uint16)
    rgb = _rgb(load_image(_saved(Image.fromarray(values), tmp_path / "r.png")))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 1, 2, 255])  # round(v / 257)


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(tmp_path: Path, mode: str) -> None:
    img = Image.new(mode, (3, 1))
    for x, v in enumerate((0, 257 * 100, 65535)):
        img.putpixel((x, 0), v)
    path = _saved(img, tmp_path / "x.tif")
    assert Image.open(path).mode == mode or mode == "I;16L"  # TIFF may re-read little-endian as plain I;16
    np.testing.assert_array_equal(_rgb(load_image(path))[0, :, 1], [0, 100, 255])
    np.testing.assert_array_equal(_rgb(to_rgb(img))[0, :, 1], [0, 100, 255])


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0, 17, 255], [0, 17, 255]),  # all within 0..255: already 8-bit
        ([0, 257 * 40, 65535], [0, 40, 255]),  # within 0..65535: 16-bit, / 257
        ([0, 50_000, 100_000], [0, 128, 255]),  # wider: stretched from 0 to the maximum
        ([-100, 0, 100], [0, 128, 255]),  # negative: stretched from the minimum
    ],
)
def test_32bit_integer_mode_scaled_by_its_range(tmp_path: Path, values, expected) -> None:
    img = Image.fromarray(np.array([values], dtype=np.int32))
    assert img.mode == "I"
    path = _saved(img, tmp_path / "i32.tif")
    np.testing.assert_array_equal(_rgb(load_image(path))[0, :, 2], expected)


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1: normalised, times 255
        ([0.0, 17.4, 200.0], [0, 17, 200]),  # 0..255: already grey levels
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # anything else: stretched
    ],
)
def test_float_mode(tmp_path: Path, values, expected) -> None:
    img = Image.fromarray(np.array([values], dtype=np.float32))
    assert img.mode == "F"
    path = _saved(img, tmp_path / "f.tif")
    np.testing.assert_array_equal(_rgb(load_image(path))[0, :, 0], expected)


def test_float_nan_is_a_named_error(tmp_path: Path) -> None:
    path = _saved(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)), tmp_path / "nan.tif")
    with pytest.raises(ImageLoadError, match=r"NaN.*nan\.tif") as info:
        load_image(path)
    assert info.value.reason == "image_unreadable" and info.value.path == str(path)


# === Transparency ===


def test_rgba_transparent_half_and_opaque_pixels(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 128), (10, 200, 30, 255)])
    rgb = _rgb(load_image(_saved(img, tmp_path / "a.png")))
    np.testing.assert_array_equal(rgb[0, 0], BG)  # before: black (the RGB stored under alpha 0)
    np.testing.assert_array_equal(rgb[0, 1], _blend((255, 0, 0), 128))
    assert abs(rgb[0, 1] - (np.array([255, 0, 0]) + BG) / 2).max() <= 1  # about the 50% blend
    np.testing.assert_array_equal(rgb[0, 2], (10, 200, 30))


def test_rgba_uses_the_background_it_is_given(tmp_path: Path) -> None:
    proc = build_image_processor(32)
    proc.image_mean = [0.5, 0.25, 1.0]
    assert background_color(proc) == (127, 63, 255)
    path = _saved(Image.new("RGBA", (2, 2), (9, 9, 9, 0)), tmp_path / "clear.png")
    assert (_rgb(load_image(path, background=background_color(proc))) == (127, 63, 255)).all()
    with pytest.raises(ValueError, match="background"):
        load_image(path, background=(1, 2))


def test_la_png(tmp_path: Path) -> None:
    img = Image.new("LA", (2, 1))
    img.putdata([(200, 0), (200, 255)])
    rgb = _rgb(load_image(_saved(img, tmp_path / "la.png")))
    np.testing.assert_array_equal(rgb[0], [BG, (200, 200, 200)])


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    path = _saved(img, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(_rgb(load_image(path))[0], [BG, (0, 0, 255)])


@pytest.mark.parametrize("mode,color", [("L", 7), ("RGB", (7, 8, 9))])
def test_transparency_key_of_grey_and_rgb_png(tmp_path: Path, mode: str, color) -> None:
    img = Image.new(mode, (2, 1), color)
    img.putpixel((1, 0), 250 if mode == "L" else (250, 250, 250))
    path = _saved(img, tmp_path / "k.png", transparency=color)
    np.testing.assert_array_equal(_rgb(load_image(path))[0], [BG, (250, 250, 250)])


def test_16bit_transparency_key() -> None:
    img = Image.new("I;16", (2, 1))
    img.putpixel((0, 0), 1000)
    img.putpixel((1, 0), 65535)
    img.info["transparency"] = 1000
    np.testing.assert_array_equal(_rgb(to_rgb(img))[0], [BG, (255, 255, 255)])


def test_pa_mode() -> None:
    img = Image.new("PA", (2, 1))
    img.putpalette([0, 255, 0] * 256)
    img.putdata([(0, 0), (0, 255)])
    np.testing.assert_array_equal(_rgb(to_rgb(img))[0], [BG, (0, 255, 0)])


def test_premultiplied_rgba_and_la() -> None:
    # Premultiplied: stored colour = colour * alpha / 255; a half-transparent white is stored as 128.
    rgba = Image.new("RGBa", (2, 1))
    rgba.putdata([(0, 0, 0, 0), (128, 128, 128, 128)])
    expected_half = np.rint(128 + np.asarray(BG) * (1 - 128 / 255)).astype(int)
    np.testing.assert_array_equal(_rgb(to_rgb(rgba))[0], [BG, expected_half])
    la = Image.new("La", (1, 1), (128, 128))  # PIL cannot convert La at all
    np.testing.assert_array_equal(_rgb(to_rgb(la))[0, 0], expected_half)


# === Other modes (PIL's conversions) ===


def test_bilevel(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    np.testing.assert_array_equal(_rgb(load_image(_saved(img, tmp_path / "b.png")))[0], [(0, 0, 0), (255, 255, 255)])


def test_grey(tmp_path: Path) -> None:
    path = _saved(Image.new("L", (1, 1), 77), tmp_path / "l.png")
    np.testing.assert_array_equal(_rgb(load_image(path))[0, 0], (77, 77, 77))


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (1, 1))
    img.putpalette([12, 34, 56] * 256)
    np.testing.assert_array_equal(_rgb(load_image(_saved(img, tmp_path / "p.png")))[0, 0], (12, 34, 56))


def test_cmyk(tmp_path: Path) -> None:
    path = _saved(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), tmp_path / "c.tif")
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_array_equal(_rgb(load_image(path))[0, 0], (255, 0, 0))


def test_ycbcr() -> None:
    img = Image.new("RGB", (1, 1), (10, 200, 30)).convert("YCbCr")
    assert abs(_rgb(to_rgb(img))[0, 0] - (10, 200, 30)).max() <= 3


def test_lab(tmp_path: Path) -> None:
    white = Image.new("LAB", (1, 1), (255, 128, 128))
    assert (_rgb(to_rgb(white))[0, 0] >= 250).all()  # a real colour conversion, not channels copied
    path = _saved(white, tmp_path / "lab.tif")
    assert Image.open(path).mode == "LAB"
    assert (_rgb(load_image(path))[0, 0] >= 250).all()


def test_hsv() -> None:
    np.testing.assert_array_equal(_rgb(to_rgb(Image.new("HSV", (1, 1), (0, 255, 255))))[0, 0], (255, 0, 0))


def test_rgb_is_unchanged_and_a_copy() -> None:
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    out = to_rgb(img)
    assert out is not img and np.array_equal(np.asarray(out), np.asarray(img))


# === Errors ===


def test_empty_image_is_a_sample_error(image_processor_32) -> None:
    with pytest.raises(ImageLoadError, match="no pixels") as info:
        process_images([Image.new("RGB", (0, 5))], image_processor_32, "pad")
    assert isinstance(info.value, SampleError) and info.value.reason == "image_empty"


def test_decompression_bomb_is_too_large(tmp_path: Path, monkeypatch) -> None:
    path = _saved(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 pixels > 2 x 1000: PIL refuses
    with pytest.raises(ImageLoadError, match="too large.*big.png") as info:
        load_image(path)
    assert info.value.reason == "image_too_large"


# === process_images: conversion and size bounds ===


@pytest.fixture(scope="module")
def image_processor_32():
    return build_image_processor(32)


class _Spy:
    """Wraps a processor and records the sizes of the images handed to it."""

    def __init__(self, processor):
        self.processor = processor
        self.sizes: list[tuple[int, int]] = []

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def __call__(self, images, **kwargs):
        self.sizes += [img.size for img in images]
        return self.processor(images=images, **kwargs)


def test_process_images_composites_rgba_over_the_mean_colour(image_processor_32) -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    expected = process_images([Image.new("RGB", (8, 8), background_color(image_processor_32))], image_processor_32, "pad")
    torch.testing.assert_close(process_images([clear], image_processor_32, "pad"), expected)


def test_thin_strip_is_not_padded_to_a_huge_square() -> None:
    spy = _Spy(build_image_processor(64))
    out = process_images([Image.new("RGB", (1, 12000), (200, 10, 10))], spy, "pad")
    assert out.shape == (1, 3, 64, 64)
    # spy.sizes[:-1] are the processor's own size probes; the strip itself is the last image
    assert spy.sizes[-1] == (MAX_PAD_SIDE, MAX_PAD_SIDE)  # before: (12000, 12000), 2.3 GB for a 336 px tower
    assert max(w * h for w, h in spy.sizes) == MAX_PAD_SIDE**2


def test_thin_strip_in_square_mode_is_cropped_before_the_resize() -> None:
    spy = _Spy(build_image_processor(64))
    out = process_images([Image.new("RGB", (12000, 1), (200, 10, 10))], spy, "square")
    assert out.shape == (1, 3, 64, 64)
    assert spy.sizes == [(8, 1)]  # the shortest-edge resize then makes 512x64, not 768000x64


@pytest.mark.parametrize("size", [(300, 200), (40, 2000), (2048, 16), (320, 40)])
@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_ordinary_images_are_processed_exactly_as_before(image_processor_32, size, aspect) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    before = expand2square(img, background_color(image_processor_32)) if aspect == "pad" else img
    expected = image_processor_32(images=[before], return_tensors="pt")["pixel_values"]
    assert torch.equal(process_images([img], image_processor_32, aspect), expected)


def test_bounded_results_stay_close_to_the_unbounded_ones(image_processor_32) -> None:
    # Smooth content, so that the only difference is the extra resampling step / crop rounding.
    ramp = np.linspace(0, 255, 3000).astype(np.uint8)
    wide = Image.fromarray(np.stack([np.tile(ramp, (60, 1))] * 3, axis=-1))  # 3000x60: longer than MAX_PAD_SIDE
    old = image_processor_32(images=[expand2square(wide, background_color(image_processor_32))], return_tensors="pt")
    new = process_images([wide], image_processor_32, "pad")
    assert (new - old["pixel_values"]).abs().max() < 0.1  # < ~2 grey levels after normalisation
    tall = Image.fromarray(np.stack([np.tile(ramp[:1000, None], (1, 10))] * 3, axis=-1))  # 10x1000: aspect 100
    old = image_processor_32(images=[tall], return_tensors="pt")["pixel_values"]
    new = process_images([tall], image_processor_32, "square")
    assert (new - old).abs().max() < 0.1
