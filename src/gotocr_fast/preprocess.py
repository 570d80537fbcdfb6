"""Image preprocessing: decode → RGB → views (tiles) → normalised pixel tensors.

The pipeline follows GOT-OCR2 (docs/MODEL.md, "Preprocessing") and transformers' PIL-based GotOcr2 image processor,
which is the parity reference (``tests/preprocess`` compares against its committed outputs):

* ``load_image`` decodes untrusted input with Pillow and returns an RGB image with the EXIF
  orientation applied. Decompression bombs are refused from the header, before any pixel is
  decoded (:class:`ImageTooLarge`); every other decoding failure becomes :class:`ImageError`.
* ``views_for`` returns the views the encoder sees: the image itself, or GOT's multi-crop tiles
  plus a thumbnail.
* ``pixel_values`` resizes each view to S×S with PIL bicubic on uint8 (as transformers does) and
  hands the uint8 pixels to the native ``gotocr_fast._preprocess.normalize_rgb``.
* ``box_to_prompt_coords`` scales a pixel box to GOT's 0..1000 prompt coordinates.

Decisions where we differ from a plain ``Image.open(...).convert("RGB")`` (what GOT's demo does):

* Transparency (RGBA, LA, PA, P/L/RGB with a ``transparency`` key) is composited onto white, as
  transformers 5.x ``convert_to_rgb`` does. GOT's ``convert("RGB")`` drops alpha instead, which
  turns the common "black text on a transparent background" PNG into a black page.
* 16-bit and 32-bit integer greyscale (modes ``I;16*``, ``I``) is scaled 65535 → 255 with rounding;
  Pillow's ``convert`` would clip every value above 255 to white. Float images (``F``) in 0..1 are
  scaled ×255, otherwise clipped to 0..255.
* The EXIF orientation is applied (neither GOT nor transformers do): a phone photo of a page must
  reach the model upright.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageTooLarge",
    "box_to_prompt_coords",
    "boxes_to_prompt_coords",
    "load_image",
    "pixel_values",
    "tile_grid",
    "views_for",
]

#: Default limit on width × height of a decoded image (≈ 200 MB as RGB). An A4 page scanned at
#: 600 dpi is ≈ 35 Mpx. It is below Pillow's own ``Image.MAX_IMAGE_PIXELS`` default, so with the
#: default ours is the limit that bites.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

#: Pillow formats we are willing to decode. Anything else is refused before decoding: EPS would run
#: Ghostscript on untrusted input, and exotic scientific/legacy formats are attack surface an OCR
#: service has no use for.
ALLOWED_FORMATS: tuple[str, ...] = (
    "PNG", "JPEG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "JPEG2000",
    "PPM", "PCX", "TGA", "ICO", "QOI", "SGI",
)

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image]

# Bicubic with Pillow's antialiasing support: what transformers' PIL processor and GOT's
# torchvision/PIL Resize use.
_RESAMPLE = Image.Resampling.BICUBIC

# warnings.catch_warnings() mutates process-global state; serialise our own uses of it. It only
# wraps Image.open (header parsing), never the pixel decode, so the lock is held briefly.
_OPEN_LOCK = threading.Lock()


class ImageError(ValueError):
    """The input is not a usable image: not an image, corrupt, truncated, or too many pixels."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (ours or Pillow's limit): a decompression bomb.

    A subclass of :class:`ImageError`, so ``except ImageError`` still catches it; callers that
    must tell "too big" from "not an image" (the server: 413 vs 415) catch this one first.
    """


# --------------------------------------------------------------------------------------------
# Decoding


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` into a new RGB ``PIL.Image`` with the EXIF orientation applied.

    ``source`` is encoded image bytes, a path to an image file, or a ``PIL.Image`` (not modified;
    the result is always a new image). Animated images give their first frame. ``max_pixels``
    bounds width × height (``None``: no limit of ours; Pillow's ``Image.MAX_IMAGE_PIXELS`` hard
    limit still applies). Raises :class:`ImageError` for anything that is not a decodable image;
    ``OSError`` from opening a path (missing file, permissions) propagates unchanged.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")

    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        try:
            return _to_rgb(_apply_exif_orientation(source))
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad data
            raise ImageError(f"cannot convert image: {exc}") from exc

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("empty input: zero bytes")
        return _decode(io.BytesIO(data), max_pixels, "image data")

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        with open(path, "rb") as fp:  # OSError (missing, permissions, directory) propagates
            if os.fstat(fp.fileno()).st_size == 0:
                raise ImageError(f"empty file: {path}")
            return _decode(fp, max_pixels, str(path))

    raise TypeError(f"expected bytes, a path or a PIL.Image, got {type(source).__name__}")


def _decode(fp, max_pixels: int | None, what: str) -> Image.Image:
    """Decode the first frame of ``fp`` into a new RGB image; ``fp`` stays owned by the caller."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Our own check below (against max_pixels) is the limit; Pillow's warning for images
            # above its global MAX_IMAGE_PIXELS must not leak to the caller's log or, with
            # warnings-as-errors, escape as a non-ImageError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(exc, max_pixels, what) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{what}: not a recognised image format") from exc
    except Exception as exc:  # noqa: BLE001 - corrupt headers raise many types
        raise ImageError(f"{what}: cannot read image header: {exc}") from exc

    with im:
        try:
            _check_size(im.size, max_pixels)
            im.load()  # first frame only; animated images stay on frame 0
            _check_size(im.size, max_pixels)  # some formats (ICO) pick their size on load
            return _to_rgb(_apply_exif_orientation(im))
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise _bomb_error(exc, max_pixels, what) from exc
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raise many types
            raise ImageError(f"{what}: cannot decode image: {exc}") from exc


def _bomb_error(exc: Image.DecompressionBombError, max_pixels: int | None, what: str) -> ImageTooLarge:
    """Pillow's own hard limit (twice ``Image.MAX_IMAGE_PIXELS``) refused the image before our check
    could run: report it against the caller's limit, which is the one the caller configured."""
    # Pillow's message: "Image size (N pixels) exceeds limit of M pixels, could be decompression bomb ..."
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1))} pixels" if found else "too many pixels"
    limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return ImageTooLarge(f"{what}: image too large: {pixels} > limit {limit}")


def _check_size(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Return ``im`` rotated/flipped per its EXIF orientation (a new image or ``im`` itself)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation not in (2, 3, 4, 5, 6, 7, 8):
            return im  # skip exif_transpose's full copy for the common upright case
        rotated = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not reject a readable image
        return im
    return im if rotated is None else rotated


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new RGB image (see the module docstring for the rules)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # convert() always returns a new image, even for RGB input.
    return im.convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale → 8-bit ``L``, scaled instead of clipped."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.clip(np.rint(arr), 0, 255)
    else:
        # I;16, I;16B, I;16L, I;16N and I (int32) are all read as 16-bit sample values:
        # 0..65535 → 0..255, rounding half up: round(v / 257) == (2v + 257) // 514.
        v = np.clip(arr.astype(np.int64), 0, 65535)
        out = (2 * v + 257) // 514
    return Image.fromarray(out.astype(np.uint8), mode="L")


# --------------------------------------------------------------------------------------------
# Views (multi-crop tiling)


def tile_grid(
    width: int, height: int, image_size: int, max_tiles: int = 6, min_tiles: int = 1
) -> tuple[int, int]:
    """GOT's multi-crop grid ``(cols, rows)`` for a ``width``×``height`` image.

    Candidates are all grids with ``min_tiles <= cols*rows <= max_tiles``, visited by increasing
    tile count (cols-major within a count, as transformers does). The grid whose cols/rows is
    closest to width/height wins; on an exact tie the later (larger) grid wins while the image
    area exceeds half of the grid's area at ``image_size`` per tile.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    candidates = sorted(
        (
            (cols, rows)
            for cols in range(1, max_tiles + 1)
            for rows in range(1, max_tiles + 1)
            if min_tiles <= cols * rows <= max_tiles
        ),
        key=lambda grid: grid[0] * grid[1],
    )
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), math.inf
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def views_for(
    image: Image.Image, image_size: int, crop: bool = False, max_tiles: int = 6
) -> list[Image.Image]:
    """The views the vision encoder sees for one RGB image.

    Without ``crop``: ``[image]`` (the resize to ``image_size`` happens in :func:`pixel_values`).
    With ``crop``: GOT's multi-crop — resize to ``cols*S`` × ``rows*S`` (bicubic), cut S×S tiles
    row by row, and append an S×S thumbnail of the whole image when there is more than one tile.
    A 1×1 grid gives ``[image]``: the tile would be exactly the resize :func:`pixel_values` does.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(max_tiles, int) or max_tiles < 1:
        raise ValueError(f"max_tiles must be a positive int, got {max_tiles!r}")
    if not crop:
        return [image]
    width, height = image.size
    cols, rows = tile_grid(width, height, image_size, max_tiles)
    if cols * rows == 1:
        return [image]
    s = image_size
    canvas = image.resize((cols * s, rows * s), _RESAMPLE)
    tiles = [
        canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s))
        for r in range(rows)
        for c in range(cols)
    ]
    tiles.append(image.resize((s, s), _RESAMPLE))
    return tiles


# --------------------------------------------------------------------------------------------
# Pixel tensors


def _native_normalize():
    """``gotocr_fast._preprocess.normalize_rgb`` (imported lazily: the package imports without it)."""
    try:
        from gotocr_fast._preprocess import normalize_rgb
    except ImportError as exc:
        raise ImportError(
            "gotocr_fast._preprocess (native image normalisation) is not built; "
            "build the package as described in DEVELOPING.md"
        ) from exc
    return normalize_rgb


def pixel_values(
    views: Sequence[Image.Image],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Stack ``views`` into a float32 ``[N, 3, S, S]`` array for the vision encoder.

    Each view is resized to S×S with PIL bicubic on its uint8 pixels (skipped when already S×S,
    where Pillow's resize is the identity), then normalised — ``(x/255 - mean)/std``, HWC → CHW —
    by the native ``normalize_rgb``. Views must be RGB (as :func:`load_image`/:func:`views_for`
    return them).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    mean_t = _three_floats("mean", mean)
    std_t = _three_floats("std", std)
    if any(s == 0.0 for s in std_t):
        raise ValueError(f"std must be non-zero, got {std_t}")
    views = list(views)
    if not views:
        raise ValueError("no views")
    for i, view in enumerate(views):
        if not isinstance(view, Image.Image) or view.mode != "RGB":
            what = view.mode if isinstance(view, Image.Image) else type(view).__name__
            raise ValueError(f"view {i} must be an RGB PIL.Image, got {what}")
    normalize_rgb = _native_normalize()
    s = image_size
    out = np.empty((len(views), 3, s, s), dtype=np.float32)
    for i, view in enumerate(views):
        if view.size != (s, s):
            view = view.resize((s, s), _RESAMPLE)
        hwc = np.ascontiguousarray(np.asarray(view, dtype=np.uint8))
        out[i] = normalize_rgb(hwc, mean_t, std_t)
    return out


def _three_floats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name} must be 3 finite numbers, got {values!r}")
    return vals  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Boxes


def box_to_prompt_coords(box, width: int, height: int):
    """Scale a pixel box ``[x1, y1, x2, y2]`` to GOT's prompt coordinates (ints 0..1000).

    GOT (and transformers) compute ``int(x / width * 1000)`` — truncation, divide first — and so
    do we, bit for bit. The box must be 4 finite numbers with ``0 <= x1 < x2 <= width`` and
    ``0 <= y1 < y2 <= height``; otherwise ``ValueError``. Given several boxes (a sequence of
    4-number sequences) it returns a list of tuples, one per box.
    """
    box = _plain(box)
    if _is_box_list(box):
        return boxes_to_prompt_coords(box, width, height)
    return _scale_box(box, width, height)


def boxes_to_prompt_coords(boxes, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """:func:`box_to_prompt_coords` for one box or a sequence of boxes; always returns a list."""
    boxes = _plain(boxes)
    if not _is_box_list(boxes):
        return [_scale_box(boxes, width, height)]
    if len(boxes) == 0:
        raise ValueError("empty list of boxes")
    return [_scale_box(b, width, height) for b in boxes]


def _plain(value):
    """numpy arrays (of one box or several) → nested lists of Python numbers."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _is_box_list(value) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(isinstance(b, Sequence) and not isinstance(b, (str, bytes)) for b in value)
    )


def _scale_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    for name, dim in (("width", width), ("height", height)):
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"image {name} must be a positive int, got {dim!r}")
    if (
        isinstance(box, (str, bytes))
        or not isinstance(box, Sequence)
        or len(box) != 4
        or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in box
        )
    ):
        raise ValueError(f"a box must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(
            f"box {list(box)} must satisfy 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}"
        )
    return (
        int(x1 / width * 1000),
        int(y1 / height * 1000),
        int(x2 / width * 1000),
        int(y2 / height * 1000),
    )
