"""load_image: every Pillow mode → RGB, EXIF orientation, and refusal of hostile input."""

from __future__ import annotations

import gc
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gotocr_fast.preprocess import ImageError, ImageTooLarge, load_image

from .conftest import encode


def rgb_at(im: Image.Image, xy) -> tuple[int, int, int]:
    assert im.mode == "RGB"
    return tuple(int(v) for v in im.getpixel(xy))


def assert_close(actual, expected, tol):
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (actual, expected)


# ---------------------------------------------------------------------------------------------
# Modes


def test_rgb_png_roundtrip_from_bytes_path_and_pathlike(tmp_path):
    arr = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    data = encode(Image.fromarray(arr, "RGB"), "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(data)
    for src in (data, bytearray(data), memoryview(data), str(p), p):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(im), arr)


def test_rgba_composited_on_white():
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent black → white
    arr[0, 2] = (0, 0, 0, 128)  # half-transparent black → mid grey
    arr[1, :] = (10, 200, 30, 255)
    im = load_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert rgb_at(im, (0, 0)) == (255, 0, 0)
    assert rgb_at(im, (1, 0)) == (255, 255, 255)
    # 255 * (1 - 128/255) = 127
    assert_close(rgb_at(im, (2, 0)), (127, 127, 127), 1)
    assert rgb_at(im, (1, 1)) == (10, 200, 30)


def test_la_composited_on_white():
    arr = np.array([[[50, 255], [50, 0]]], np.uint8)
    im = load_image(encode(Image.fromarray(arr, "LA"), "PNG"))
    assert rgb_at(im, (0, 0)) == (50, 50, 50)
    assert rgb_at(im, (1, 0)) == (255, 255, 255)


def test_palette_with_transparency():
    im = Image.new("P", (4, 1))
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.putdata([0, 1, 1, 0])
    data = encode(im, "PNG", transparency=0)  # index 0 (black) is transparent
    out = load_image(data)
    assert [rgb_at(out, (x, 0)) for x in range(4)] == [(255, 255, 255), (0, 0, 255), (0, 0, 255), (255, 255, 255)]


def test_palette_gif_with_transparency():
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    im.putdata([0, 1])
    out = load_image(encode(im, "GIF", transparency=0))
    assert rgb_at(out, (0, 0)) == (255, 255, 255)
    assert rgb_at(out, (1, 0)) == (0, 255, 0)


def test_greyscale_l():
    arr = np.array([[0, 77, 255]], np.uint8)
    out = load_image(encode(Image.fromarray(arr, "L"), "PNG"))
    assert [rgb_at(out, (x, 0)) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]


def test_one_bit():
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    out = load_image(encode(im, "PNG"))
    assert rgb_at(out, (0, 0)) == (0, 0, 0)
    assert rgb_at(out, (1, 0)) == (255, 255, 255)


# 16-bit sample → expected 8-bit: round(v / 257), half up. Clipping would make all but 0 white.
SIXTEEN = [(0, 0), (1000, 4), (128, 0), (129, 1), (257 * 100, 100), (32896, 128), (65535, 255), (65534, 255)]


def test_sixteen_bit_png_scaled_not_clipped():
    arr = np.array([[v for v, _ in SIXTEEN]], np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    assert [rgb_at(out, (x, 0))[0] for x in range(len(SIXTEEN))] == [e for _, e in SIXTEEN]
    assert rgb_at(out, (6, 0)) == (255, 255, 255)


def test_int32_tiff_scaled_as_sixteen_bit():
    arr = np.array([[v for v, _ in SIXTEEN] + [-5, 70000]], np.int32)
    data = encode(Image.fromarray(arr, "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = load_image(data)
    assert [rgb_at(out, (x, 0))[0] for x in range(arr.shape[1])] == [e for _, e in SIXTEEN] + [0, 255]


def test_float_image_in_unit_range_scaled():
    arr = np.array([[0.0, 0.5, 1.0]], np.float32)
    out = load_image(Image.fromarray(arr, "F"))
    assert [rgb_at(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg():
    im = Image.new("CMYK", (48, 16), (0, 0, 0, 0))  # white paper
    im.paste((255, 0, 0, 0), (16, 0, 32, 16))  # pure cyan
    im.paste((0, 0, 0, 255), (32, 0, 48, 16))  # pure black
    data = encode(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert_close(rgb_at(out, (8, 8)), (255, 255, 255), 6)
    assert_close(rgb_at(out, (24, 8)), (0, 255, 255), 6)
    assert_close(rgb_at(out, (40, 8)), (0, 0, 0), 6)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert rgb_at(load_image(data), (2, 2)) == (255, 0, 0)


def test_webp_and_bmp_and_tiff():
    src = Image.new("RGB", (8, 8), (12, 34, 56))
    for fmt, tol in (("BMP", 0), ("TIFF", 0), ("WEBP", 3)):
        params = {"lossless": True} if fmt == "WEBP" else {}
        assert_close(rgb_at(load_image(encode(src, fmt, **params)), (4, 4)), (12, 34, 56), tol)


def test_pil_input_not_modified_and_new_object():
    src = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    out = load_image(src)
    assert out is not src and src.mode == "RGBA" and src.getpixel((0, 0)) == (0, 0, 0, 0)
    assert rgb_at(out, (0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (3, 2), (1, 2, 3))
    out = load_image(rgb)
    assert out is not rgb and rgb_at(out, (1, 1)) == (1, 2, 3)


# ---------------------------------------------------------------------------------------------
# EXIF orientation


def _two_colour_jpeg(orientation: int) -> bytes:
    """Stored 40×20: left half red, right half blue, tagged with an EXIF orientation."""
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize(
    "orientation, size, probes",
    [
        (1, (40, 20), {(5, 10): RED, (35, 10): BLUE}),
        (2, (40, 20), {(5, 10): BLUE, (35, 10): RED}),  # mirrored
        (3, (40, 20), {(5, 10): BLUE, (35, 10): RED}),  # 180°
        (6, (20, 40), {(10, 5): RED, (10, 35): BLUE}),  # rotate 90° CW to display: left → top
        (8, (20, 40), {(10, 5): BLUE, (10, 35): RED}),  # rotate 90° CCW: left → bottom
    ],
)
def test_exif_orientation_applied(orientation, size, probes):
    out = load_image(_two_colour_jpeg(orientation))
    assert out.size == size
    for xy, colour in probes.items():
        assert_close(rgb_at(out, xy), colour, 40)


def test_exif_orientation_applied_to_pil_input():
    im = Image.open(io.BytesIO(_two_colour_jpeg(6)))
    out = load_image(im)
    assert out.size == (20, 40)
    assert_close(rgb_at(out, (10, 5)), RED, 40)


# ---------------------------------------------------------------------------------------------
# Hostile and broken input


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes: a valid PNG header for a huge RGB image and one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (20_000, 20_000), (10_000, 10_000), (65_535, 1_100)])
def test_bomb_header_refused_before_decoding(w, h):
    data = png_claiming(w, h)
    assert len(data) < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(ImageError, match="too (large|many pixels)"):
            load_image(data)


def test_max_pixels_limit_is_ours():
    data = encode(Image.new("RGB", (100, 50), (9, 9, 9)), "PNG")
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=4999)
    assert load_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageError, match="too large"):
        load_image(Image.new("RGB", (100, 50)), max_pixels=4999)
    with pytest.raises(ValueError):
        load_image(data, max_pixels=0)


def test_pillow_limit_warning_and_error_become_ours(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    between = encode(Image.new("RGB", (40, 40)), "PNG")  # 1600 px: Pillow warns
    beyond = encode(Image.new("RGB", (50, 50)), "PNG")  # 2500 px > 2×: Pillow raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(between, max_pixels=None).size == (40, 40)
        # without a limit of the caller's, Pillow's hard limit (twice MAX_IMAGE_PIXELS) is the one cited
        with pytest.raises(ImageTooLarge, match=r"2500 pixels > limit 2000$"):
            load_image(beyond, max_pixels=None)


def test_pillow_hard_limit_reported_against_the_callers_limit():
    # 30000 x 30000 is past Pillow's own hard limit (2 x 89,478,485), which refuses it inside
    # Image.open, before our check: the message must still cite the limit the caller set
    data = png_claiming(30_000, 30_000)
    limit = 64 * 1024 * 1024
    with pytest.raises(ImageTooLarge) as info:
        load_image(data, max_pixels=limit)
    message = str(info.value)
    assert message.endswith(f"{30_000 * 30_000} pixels > limit {limit}"), message
    assert str(2 * 89_478_485) not in message


def _good_png() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"), "PNG")


def _good_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"), "JPEG")


def _corrupt_png() -> bytes:
    data = bytearray(_good_png())
    i = data.index(b"IDAT") + 20
    data[i : i + 8] = b"\xff" * 8  # breaks the CRC and the deflate stream
    return bytes(data)


BAD_INPUTS = {
    "zero_bytes": b"",
    "text": b"hello, this is plainly not an image\n" * 3,
    "pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
    "eps_not_allowed": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "random": bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)),
    "png_signature_only": b"\x89PNG\r\n\x1a\n",
    "truncated_png": _good_png()[: len(_good_png()) // 2],
    "truncated_jpeg": _good_jpeg()[: len(_good_jpeg()) // 2],
    "corrupt_png": _corrupt_png(),
    "zero_width_png": png_claiming(0, 10),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_image_error(name, tmp_path):
    data = BAD_INPUTS[name]
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert isinstance(info.value, ValueError) and str(info.value)
    p = tmp_path / f"{name}.bin"
    p.write_bytes(data)
    with pytest.raises(ImageError):
        load_image(p)


def test_missing_path_and_wrong_type():
    with pytest.raises(FileNotFoundError):
        load_image("/nonexistent/definitely/missing.png")
    with pytest.raises(TypeError):
        load_image(12345)


# ---------------------------------------------------------------------------------------------
# File handles


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_no_leaked_file_handles(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    files = {
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "animated.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "multi.tiff": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "ok.png": _good_png(),
        "exif.jpg": _two_colour_jpeg(6),
        "bomb.png": png_claiming(50_000, 50_000),
        "truncated.png": BAD_INPUTS["truncated_png"],
        "corrupt.png": BAD_INPUTS["corrupt_png"],
        "empty.png": b"",
        "text.png": BAD_INPUTS["text"],
    }
    paths = []
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
    gc.collect()
    before = _open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            for p in paths:
                try:
                    load_image(p)
                except ImageError:
                    pass
        gc.collect()
    assert _open_fds() == before
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
