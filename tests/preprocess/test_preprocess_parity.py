"""Parity with transformers' PIL GotOcr2 image processor (committed outputs, no transformers import)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gotocr_fast import preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CASE_NAMES = [
    "odd_37x53", "tiny_1x1", "tiny_1x1_crop", "tiny_3x2_crop", "page_595x842",
    "page_595x842_crop", "wide_2000x90", "wide_2000x90_crop", "tall_90x1500_crop",
    "square_600x600_crop", "square_300x300_crop", "photo_641x479_crop12",
    "upscale_200x150_crop", "full_1000x1400",
]


def _ours(pixel_parity, name):
    case = pixel_parity.cases[name]
    image = pixel_parity.input(name)
    views = preprocess.views_for(image, case["image_size"], crop=case["crop"], max_tiles=case["max_tiles"])
    return case, views, preprocess.pixel_values(views, case["image_size"], CLIP_MEAN, CLIP_STD)


def test_fixture_covers_the_cases(pixel_parity):
    assert sorted(pixel_parity.cases) == sorted(CASE_NAMES)
    sizes = {c["image_size"] for c in pixel_parity.cases.values()}
    assert 1024 in sizes
    assert {tuple(c["grid"]) for c in pixel_parity.cases.values()} >= {(1, 1), (2, 2), (6, 1), (1, 6), (4, 3)}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_resize_and_tiling_match_transformers(pixel_parity, numpy_normalizer, name):
    """Our views + PIL resize path, normalised by the transformers-order numpy stand-in: exact."""
    case, views, ours = _ours(pixel_parity, name)
    ref = pixel_parity.pixel_values(name)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    assert len(views) == case["num_views"]
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_pixel_values_native_match_transformers(pixel_parity, name):
    import gotocr_fast._preprocess  # noqa: E402,F401 - required: a broken build fails, never skips
    case, views, ours = _ours(pixel_parity, name)
    ref = pixel_parity.pixel_values(name)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.flags.c_contiguous
    assert float(np.max(np.abs(ours - ref))) <= 1e-5


@pytest.mark.parametrize("name", CASE_NAMES)
def test_tile_grid_matches_fixture_case(pixel_parity, name):
    case = pixel_parity.cases[name]
    w, h = pixel_parity.input(name).size
    if case["crop"]:
        assert preprocess.tile_grid(w, h, case["image_size"], case["max_tiles"]) == tuple(case["grid"])


def test_tile_grids_match_transformers(tile_grids):
    mismatches = []
    for w, h, size, max_tiles, cols, rows in tile_grids.tolist():
        got = preprocess.tile_grid(w, h, size, max_tiles)
        if got != (cols, rows):
            mismatches.append(((w, h, size, max_tiles), got, (cols, rows)))
    assert not mismatches, mismatches[:10]
    # The table must exercise the interesting branches, not only 1×1.
    grids = {(c, r) for *_, c, r in tile_grids.tolist()}
    assert len(grids) >= 10


def test_pixel_values_without_native_build_says_so(monkeypatch):
    """When the extension is missing the error names it (and nothing falls back to numpy)."""
    import builtins

    real_import = builtins.__import__

    def no_native(name, *args, **kwargs):
        if name == "gotocr_fast._preprocess" or (name == "gotocr_fast" and args[2] and "_preprocess" in args[2]):
            raise ImportError("simulated missing extension")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_native)
    monkeypatch.delitem(__import__("sys").modules, "gotocr_fast._preprocess", raising=False)
    with pytest.raises(ImportError, match="_preprocess"):
        preprocess.pixel_values([Image.new("RGB", (4, 4))], 4, CLIP_MEAN, CLIP_STD)
