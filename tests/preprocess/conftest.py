"""Helpers for the preprocessing tests.

- ``pixel_parity``: the committed transformers outputs (see ``make_pixel_fixtures.py``).
- ``numpy_normalize``: a test-only stand-in for the native ``normalize_rgb``, written from
  transformers' PIL path (uint8 → float64 × 1/255 → float32 → (x − mean) / std in float32), so the
  resize/tiling path can be checked against transformers even before the extension is built.
- ``encode(image, format, **params)``: a Pillow image as file bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def numpy_normalize(img: np.ndarray, mean, std) -> np.ndarray:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    x = (img.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class PixelParity:
    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.arrays = {k: data[k] for k in data.files}
        self.meta = json.loads(self.arrays.pop("meta").tobytes().decode())
        self.cases = {c["name"]: c for c in self.meta["cases"]}

    def input(self, name: str) -> Image.Image:
        return Image.fromarray(self.arrays[f"{name}.input"], "RGB")

    def pixel_values(self, name: str) -> np.ndarray:
        return self.arrays[f"{name}.pixel_values"]


@pytest.fixture(scope="session")
def pixel_parity() -> PixelParity:
    return PixelParity(FIXTURES / "pixel_parity.npz")


@pytest.fixture(scope="session")
def tile_grids() -> np.ndarray:
    with np.load(FIXTURES / "tile_grids.npz", allow_pickle=False) as data:
        return data["grids"]


@pytest.fixture
def numpy_normalizer(monkeypatch):
    """Route ``preprocess.pixel_values`` through ``numpy_normalize`` (no native build needed)."""
    from gotocr_fast import preprocess

    monkeypatch.setattr(preprocess, "_native_normalize", lambda: numpy_normalize)
    return numpy_normalize
