"""ImageTooLarge vs ImageError: raised by type in preprocess, mapped by type (413 / 415) in the server."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from gotocr_fast import preprocess
from gotocr_fast.preprocess import ImageError, ImageTooLarge, load_image
from gotocr_fast.server import inputs as server_inputs
from gotocr_fast.server.errors import ApiError, to_api_error
from gotocr_fast.server.inputs import InputLimits, InputResolver

from .conftest import png_bytes
from .test_inputs import _png_header_only, data_uri


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


def test_pixel_limits_raise_image_too_large():
    assert issubclass(ImageTooLarge, ImageError)  # `except ImageError` keeps catching bombs
    with pytest.raises(ImageTooLarge):
        load_image(_png_header_only(100_000, 100_000))  # a header-only bomb, refused before decoding
    with pytest.raises(ImageTooLarge):
        load_image(_png((100, 50)), max_pixels=4999)  # our limit
    with pytest.raises(ImageTooLarge):
        load_image(Image.new("RGB", (100, 50)), max_pixels=4999)  # a PIL.Image input
    assert load_image(_png((100, 50)), max_pixels=5000).size == (100, 50)


def test_pillow_bomb_error_raises_image_too_large(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge):
        load_image(_png((50, 50)), max_pixels=None)  # 2500 px > 2 × Pillow's limit: Pillow raises


@pytest.mark.parametrize("data", [b"hello, not an image", _png((64, 64))[:60], b"GIF89a-truncated"])
def test_other_failures_are_plain_image_errors(data):
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert not isinstance(info.value, ImageTooLarge)
    with pytest.raises(ImageError) as info:
        load_image(b"")
    assert not isinstance(info.value, ImageTooLarge)


def _resolve_error(monkeypatch, exc: Exception) -> ApiError:
    def fake_load_image(data, max_pixels=None):
        raise exc

    monkeypatch.setattr(server_inputs, "load_image", fake_load_image)
    limits = InputLimits(max_images=4, max_pdf_pages=2, max_image_pixels=1_000_000, max_input_bytes=100_000, pdf_dpi=72)
    with pytest.raises(ApiError) as info:
        asyncio.run(InputResolver(limits, None, fetcher=None).resolve(data_uri(png_bytes((4, 4))), ()))
    return info.value


@pytest.mark.parametrize(
    "exc, status, code",
    [
        # the type decides, whatever the message says
        (ImageTooLarge("refused"), 413, "image_too_large"),
        (ImageError("header says the image is too large to be real: corrupt"), 415, "invalid_image"),
        (ImageError("too many pixels in the palette chunk"), 415, "invalid_image"),
    ],
)
def test_resolver_maps_by_type(monkeypatch, exc, status, code):
    err = _resolve_error(monkeypatch, exc)
    assert (err.status, err.code) == (status, code)


def test_to_api_error_maps_by_type():
    big = to_api_error(ImageTooLarge("refused"))
    bad = to_api_error(ImageError("too large, supposedly"))
    assert (big.status, big.code) == (413, "image_too_large")
    assert (bad.status, bad.code) == (415, "invalid_image")


def test_exported():
    assert "ImageTooLarge" in preprocess.__all__
