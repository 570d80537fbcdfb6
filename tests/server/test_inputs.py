"""image_file resolution: allowed-root paths, folders, PDFs, data URIs and every limit (no model)."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib

import pytest

from gotocr_fast.server.errors import ApiError
from gotocr_fast.server.inputs import InputLimits, InputResolver

from .conftest import pdf_bytes, png_bytes

LIMITS = InputLimits(max_images=8, max_pdf_pages=4, max_image_pixels=1_000_000, max_input_bytes=200_000, pdf_dpi=72)


def resolver(root, **kw) -> InputResolver:
    limits = InputLimits(**{**LIMITS.__dict__, **kw})
    return InputResolver(limits, str(root) if root is not None else None, fetcher=None)


def resolve(r: InputResolver, spec, uploads=()):
    prompts = asyncio.run(r.resolve(spec, uploads))
    return [[(p.width, p.height, p.getpixel((0, 0))) for p in pages] for pages in prompts]


def error(r: InputResolver, spec, uploads=()) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        asyncio.run(r.resolve(spec, uploads))
    return info.value.status, info.value.code


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def test_relative_absolute_and_nested_paths(image_root):
    r = resolver(image_root)
    assert resolve(r, "a.png") == [[(40, 30, (10, 20, 30))]]
    assert resolve(r, str(image_root / "a.png")) == [[(40, 30, (10, 20, 30))]]
    w, h, px = resolve(r, "sub/b.jpg")[0][0]
    assert (w, h) == (20, 10) and px[0] > 180  # JPEG: red, lossy
    assert resolve(r, "sub/../a.png") == [[(40, 30, (10, 20, 30))]]  # stays inside: fine


def test_folder_gives_its_images_natural_sorted(image_root):
    r = resolver(image_root)
    # p1 (11x10), p2 (12x10), p10 (20x10); notes.txt is skipped; one result each
    assert resolve(r, "pages") == [[(11, 10, (1, 1, 1))], [(12, 10, (2, 2, 2))], [(20, 10, (10, 10, 10))]]
    # an inner list makes one multi-page prompt
    assert resolve(r, [["pages"]]) == [[(11, 10, (1, 1, 1)), (12, 10, (2, 2, 2)), (20, 10, (10, 10, 10))]]


def test_pdf_pages(image_root):
    r = resolver(image_root)  # 72 dpi: 1 point = 1 pixel
    assert resolve(r, "doc.pdf") == [[(50, 40, (255, 255, 255))], [(40, 50, (0, 0, 0))]]
    assert resolve(r, [["doc.pdf", "a.png"]]) == [[(50, 40, (255, 255, 255)), (40, 50, (0, 0, 0)),
                                                   (40, 30, (10, 20, 30))]]
    r2 = resolver(image_root, pdf_dpi=144)
    assert [p[0][:2] for p in resolve(r2, "doc.pdf")] == [(100, 80), (80, 100)]


def test_pdf_render_capped_by_pixel_limit(image_root):
    big = pdf_bytes([((1000, 1000), (9, 9, 9))])
    (image_root / "big.pdf").write_bytes(big)
    r = resolver(image_root, pdf_dpi=300, max_image_pixels=250_000)
    (w, h, _), = resolve(r, "big.pdf")[0]
    assert w * h <= 250_000 and w > 400  # scaled down to the limit, not refused


def test_pdf_page_over_the_format_limit_refused(image_root):
    import io

    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    doc.new_page(20000, 20000).close()  # 278 inches a side: a bomb, not a page
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    (image_root / "bomb.pdf").write_bytes(buf.getvalue())
    assert error(resolver(image_root), "bomb.pdf") == (413, "image_too_large")


@pytest.mark.parametrize("spec", ["../secret.png", "sub/../../secret.png", "/etc/passwd", "/", "..", "~/../../x"])
def test_paths_outside_root_forbidden(image_root, spec):
    assert error(resolver(image_root), spec) == (403, "path_outside_root")


def test_symlink_escapes_forbidden_internal_symlinks_allowed(image_root, tmp_path):
    (image_root / "escape.png").symlink_to(tmp_path / "secret.png")
    (image_root / "escdir").symlink_to(tmp_path)
    (image_root / "inside.png").symlink_to(image_root / "a.png")
    r = resolver(image_root)
    assert error(r, "escape.png") == (403, "path_outside_root")
    assert error(r, "escdir/secret.png") == (403, "path_outside_root")
    assert resolve(r, "inside.png") == [[(40, 30, (10, 20, 30))]]
    (image_root / "pages" / "zz.png").symlink_to(tmp_path / "secret.png")
    assert error(r, "pages") == (403, "path_outside_root")  # a folder's escaping entry is refused too


def test_local_paths_off_without_root(image_root):
    assert error(resolver(None), str(image_root / "a.png")) == (403, "local_paths_disabled")
    assert error(resolver(None), "a.png") == (403, "local_paths_disabled")


def test_missing_empty_and_special_files(image_root):
    r = resolver(image_root)
    assert error(r, "nope.png") == (400, "file_not_found")
    assert error(r, "a.png/x") == (400, "file_not_found")
    (image_root / "empty.png").write_bytes(b"")
    assert error(r, "empty.png") == (415, "empty_input")
    (image_root / "text.png").write_text("hello, not a png")
    assert error(r, "text.png") == (415, "invalid_image")
    (image_root / "trunc.png").write_bytes(png_bytes((64, 64))[:60])
    assert error(r, "trunc.png") == (415, "invalid_image")
    os.mkfifo(image_root / "fifo.png")
    assert error(r, "fifo.png") == (400, "not_a_file")  # and no hang waiting for a writer
    (image_root / "emptydir").mkdir()
    assert error(r, "emptydir") == (400, "no_images")
    assert error(r, "a\x00.png") == (400, "invalid_path")
    assert error(r, []) == (400, "missing_image")
    assert error(r, [[]]) == (400, "missing_image")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_and_size_limits(image_root):
    r = resolver(image_root)
    assert error(r, data_uri(_png_header_only(100_000, 100_000))) == (413, "image_too_large")
    assert error(r, data_uri(png_bytes((1001, 1000)))) == (413, "image_too_large")  # > 1e6 pixels
    (image_root / "huge.bin").write_bytes(b"\0" * 300_000)
    assert error(r, "huge.bin") == (413, "input_too_large")
    assert error(r, data_uri(b"\0" * 300_000)) == (413, "input_too_large")


def test_count_limits(image_root):
    r = resolver(image_root, max_images=2)
    assert error(r, "pages") == (413, "too_many_images")  # 3 images > 2
    assert error(r, ["a.png", "a.png", "a.png"]) == (413, "too_many_images")
    assert error(r, "a.png", uploads=[("u1", png_bytes()), ("u2", png_bytes())]) == (413, "too_many_images")
    (image_root / "five.pdf").write_bytes(pdf_bytes([((20, 20), (i, i, i)) for i in range(5)]))
    assert error(resolver(image_root), "five.pdf") == (413, "too_many_pdf_pages")


def test_data_uris(image_root):
    r = resolver(None)  # data URIs need no root
    assert resolve(r, data_uri(png_bytes((7, 8), (1, 2, 3)))) == [[(7, 8, (1, 2, 3))]]
    assert resolve(r, data_uri(pdf_bytes([((30, 20), (0, 0, 0))]), "application/pdf")) == [[(30, 20, (0, 0, 0))]]
    assert error(r, "data:image/png;base64,@@@@") == (400, "invalid_data_uri")
    assert error(r, "data:image/png,rawtext") == (400, "invalid_data_uri")
    assert error(r, "data:text/html;base64," + base64.b64encode(b"<b>").decode()) == (415, "unsupported_media_type")
    assert error(r, "data:image/png;base64,") == (415, "empty_input")
    assert error(r, data_uri(b"GIF89a-truncated")) == (415, "invalid_image")
    assert error(r, data_uri(b"%PDF-1.4 garbage")) == (415, "invalid_pdf")


def test_urls_refused_when_disabled(image_root):
    r = resolver(image_root)
    assert error(r, "http://example.com/a.png") == (403, "urls_disabled")
    assert error(r, "file:///etc/passwd") == (403, "urls_disabled")


def test_uploads_and_mixed_order(image_root):
    r = resolver(image_root)
    out = resolve(r, ["a.png", data_uri(png_bytes((3, 4), (5, 6, 7)))], uploads=[("x.png", png_bytes((9, 9), (0, 0, 1)))])
    assert out == [[(40, 30, (10, 20, 30))], [(3, 4, (5, 6, 7))], [(9, 9, (0, 0, 1))]]
