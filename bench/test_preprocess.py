"""Ours: preprocessing of one decoded page with ``gotocr_fast.preprocess``.

``views_for`` (GOT's multi-crop tiling in crop mode) + ``pixel_values`` (bicubic resize to
1024², native normalisation to float32 CHW): one view, and crop mode (A4 page → 2×3 tiles +
thumbnail). The transformers image processor does the same work in
``test_baseline_transformers.py::test_preprocess``.
"""

from __future__ import annotations

import pytest

from harness import need_attr, run_rounds, tag


def _preprocess(views_for, pixel_values, page, size, crop, mean, std):
    return pixel_values(views_for(page, size, crop=crop, max_tiles=6), size, mean, std)


@pytest.mark.parametrize("crop", [False, True], ids=["1view", "crop"])
def test_preprocess(benchmark, pages, got_config, crop):
    views_for = need_attr("gotocr_fast.preprocess", "views_for")
    pixel_values = need_attr("gotocr_fast.preprocess", "pixel_values")
    from gotocr_fast.synth import CLIP_MEAN, CLIP_STD

    page = pages(1)[0]
    size = got_config.vision.image_size
    args = (views_for, pixel_values, page, size, crop, CLIP_MEAN, CLIP_STD)
    try:
        views = _preprocess(*args).shape[0]
    except ImportError as exc:  # the native normaliser is not built
        pytest.skip(str(exc))
    tag(benchmark, "preprocess_crop" if crop else "preprocess_1view", "ours", units=1, unit="page",
        views=views)
    run_rounds(benchmark, _preprocess, rounds=10, setup=lambda: (args, {}))
