"""views_for tiling, pixel_values validation and box → prompt coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from gotocr_fast import preprocess
from gotocr_fast.preprocess import box_to_prompt_coords, boxes_to_prompt_coords, tile_grid, views_for

S = 32
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def blocks_image(cols: int, rows: int, size: int = S) -> Image.Image:
    """Exactly cols·S × rows·S, one flat colour per S×S block, numbered row by row."""
    im = Image.new("RGB", (cols * size, rows * size))
    for i in range(cols * rows):
        r, c = divmod(i, cols)
        im.paste(COLOURS[i], (c * size, r * size, (c + 1) * size, (r + 1) * size))
    return im


@pytest.mark.parametrize("cols, rows", [(3, 2), (2, 3), (6, 1), (1, 5), (2, 1)])
def test_tiles_cut_row_by_row_then_thumbnail(cols, rows):
    # The image already has the grid's size, so the canvas resize is the identity and each tile
    # must be exactly one flat block; the thumbnail is the whole image at S×S.
    im = blocks_image(cols, rows)
    views = views_for(im, S, crop=True, max_tiles=6)
    assert len(views) == cols * rows + 1
    for i, tile in enumerate(views[:-1]):
        assert tile.size == (S, S) and tile.mode == "RGB"
        pixels = np.asarray(tile).reshape(-1, 3)
        assert (pixels == COLOURS[i]).all(), i
    thumb = views[-1]
    assert thumb.size == (S, S)
    # the thumbnail shows block (0, 0) in its top-left and the last block in its bottom-right
    assert thumb.getpixel((1, 1)) == COLOURS[0]
    assert thumb.getpixel((S - 2, S - 2)) == COLOURS[cols * rows - 1]


def test_no_crop_and_single_tile_give_the_image_itself():
    im = Image.new("RGB", (50, 40), (1, 2, 3))
    assert views_for(im, S) == [im]
    assert views_for(im, S, crop=True, max_tiles=1) == [im]
    small_square = Image.new("RGB", (20, 20))  # ratio 1, area below 2·S² → 1×1
    assert views_for(small_square, S, crop=True) == [small_square]


def test_max_tiles_bounds_the_grid():
    im = Image.new("RGB", (5000, 100))  # ratio 50
    assert len(views_for(im, S, crop=True, max_tiles=6)) == 7
    assert len(views_for(im, S, crop=True, max_tiles=12)) == 13
    assert len(views_for(im, S, crop=True, max_tiles=3)) == 4


@pytest.mark.parametrize(
    "w, h, size, max_tiles, expected",
    [
        (1000, 1000, 1024, 6, (1, 1)),  # ratio 1 tie with (2,2): area 1e6 <= 0.5·1024²·4
        (1449, 1449, 1024, 6, (2, 2)),  # area 2,099,601 > 2,097,152
        (1448, 1448, 1024, 6, (1, 1)),  # area 2,096,704
        (3000, 1000, 1024, 6, (3, 1)),
        (2480, 3508, 1024, 6, (2, 3)),  # A4 at 300 dpi
        (5, 2, 1024, 6, (2, 1)),  # 2.5: tie between 2/1 and 3/1, tiny area keeps (2,1)
        (5000, 2000, 1024, 6, (3, 1)),  # same tie, large area takes (3,1)
        (100, 4000, 1024, 6, (1, 6)),
        (100, 4000, 1024, 12, (1, 12)),
    ],
)
def test_tile_grid_known_cases(w, h, size, max_tiles, expected):
    assert tile_grid(w, h, size, max_tiles) == expected


def test_views_argument_validation():
    im = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError):
        views_for(im, 0)
    with pytest.raises(ValueError):
        views_for(im, S, crop=True, max_tiles=0)
    with pytest.raises(TypeError):
        views_for(np.zeros((4, 4, 3), np.uint8), S)
    with pytest.raises(ValueError):
        tile_grid(0, 5, S)


# ---------------------------------------------------------------------------------------------
# pixel_values (the non-native parts; parity lives in test_preprocess_parity.py)

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)


def test_pixel_values_shape_layout_and_resize(numpy_normalizer):
    a = Image.new("RGB", (S, S), (255, 0, 51))
    b = Image.new("RGB", (7, 3), (0, 255, 102))  # flat colour: resize keeps it exact
    out = preprocess.pixel_values([a, b], S, MEAN, STD)
    assert out.shape == (2, 3, S, S) and out.dtype == np.float32 and out.flags.c_contiguous
    expect_a = [(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 0.2 / 1.0]
    expect_b = [(0 - 0.5) / 0.5, (1 - 0.25) / 0.25, 0.4 / 1.0]
    for n, expect in enumerate((expect_a, expect_b)):
        for c in range(3):
            np.testing.assert_allclose(out[n, c], expect[c], atol=1e-6)


@pytest.mark.parametrize(
    "views, mean, std",
    [
        ([], MEAN, STD),
        ([Image.new("L", (4, 4))], MEAN, STD),
        ([Image.new("RGBA", (4, 4))], MEAN, STD),
        (["not an image"], MEAN, STD),
        ([Image.new("RGB", (4, 4))], (0.5, 0.5), STD),
        ([Image.new("RGB", (4, 4))], MEAN, (1.0, 0.0, 1.0)),
        ([Image.new("RGB", (4, 4))], MEAN, (1.0, math.nan, 1.0)),
    ],
)
def test_pixel_values_rejects_bad_arguments(views, mean, std):
    with pytest.raises(ValueError):
        preprocess.pixel_values(views, S, mean, std)


# ---------------------------------------------------------------------------------------------
# Boxes: GOT computes int(x / w * 1000) (truncation, divide first)


@pytest.mark.parametrize(
    "box, w, h, expected",
    [
        ([10, 20, 30, 40], 100, 200, (100, 100, 300, 200)),
        ([0, 0, 640, 480], 640, 480, (0, 0, 1000, 1000)),
        ([1, 1, 2, 2], 3, 3, (333, 333, 666, 666)),  # 666.67 truncates, does not round to 667
        ([0.5, 0.25, 1.5, 1.75], 2, 2, (250, 125, 750, 875)),
        ((7, 0, 29, 1), 100, 1, (70, 0, 290, 1000)),
        ([999, 0, 1000, 1], 1000, 1, (999, 0, 1000, 1000)),
        ([0.0, 0.0, 0.9999, 1.0], 1, 1, (0, 0, 999, 1000)),  # truncation again
        (np.array([1, 2, 3, 4], dtype=np.int64), 10, 10, (100, 200, 300, 400)),
    ],
)
def test_box_to_prompt_coords(box, w, h, expected):
    assert box_to_prompt_coords(box, w, h) == expected


def test_several_boxes_numpy():
    arr = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], dtype=np.float32)
    assert box_to_prompt_coords(arr, 20, 40) == [(0, 0, 500, 250), (250, 125, 1000, 500)]


def test_several_boxes():
    boxes = [[0, 0, 10, 10], (5, 5, 20, 20)]
    assert box_to_prompt_coords(boxes, 20, 40) == [(0, 0, 500, 250), (250, 125, 1000, 500)]
    assert boxes_to_prompt_coords(boxes, 20, 40) == [(0, 0, 500, 250), (250, 125, 1000, 500)]
    assert boxes_to_prompt_coords([0, 0, 10, 10], 20, 40) == [(0, 0, 500, 250)]


@pytest.mark.parametrize(
    "box",
    [
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        [5, 0, 5, 10],  # x1 == x2
        [6, 0, 5, 10],  # x1 > x2
        [0, 7, 5, 3],  # y1 > y2
        [-1, 0, 5, 5],
        [0, 0, 101, 5],  # beyond width
        [0, 0, 5, 51],  # beyond height
        [0, 0, math.nan, 5],
        [0, 0, math.inf, 5],
        [0, 0, "5", 5],
        "0,0,5,5",
        [True, 0, 5, 5],
        None,
        [],
        [[0, 0, 5, 5], [1, 2, 3]],
    ],
)
def test_invalid_boxes(box):
    with pytest.raises(ValueError):
        box_to_prompt_coords(box, 100, 50)


def test_invalid_image_size_for_boxes():
    with pytest.raises(ValueError):
        box_to_prompt_coords([0, 0, 1, 1], 0, 10)
