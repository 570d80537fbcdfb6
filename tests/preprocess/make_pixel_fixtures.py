"""Write the preprocessing parity fixtures from transformers' PIL-based GotOcr2 image processor.

Run by hand (needs transformers + Pillow, not torch) from the repository root:

    python tests/preprocess/make_pixel_fixtures.py

Writes tests/preprocess/fixtures/pixel_parity.npz (inputs + transformers' pixel values) and
tests/preprocess/fixtures/tile_grids.npz (transformers' tile grid for many image sizes). The inputs
are stored, not regenerated, so the tests do not depend on this script's random streams.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# (name, width, height, image_size, crop_to_patches, max_patches)
CASES = [
    ("odd_37x53", 37, 53, 256, False, 6),
    ("tiny_1x1", 1, 1, 256, False, 6),
    ("tiny_1x1_crop", 1, 1, 256, True, 6),
    ("tiny_3x2_crop", 3, 2, 128, True, 6),
    ("page_595x842", 595, 842, 256, False, 6),
    ("page_595x842_crop", 595, 842, 128, True, 6),
    ("wide_2000x90", 2000, 90, 256, False, 6),
    ("wide_2000x90_crop", 2000, 90, 128, True, 6),
    ("tall_90x1500_crop", 90, 1500, 128, True, 6),
    ("square_600x600_crop", 600, 600, 256, True, 6),  # tie (1,1)/(2,2): area wins → 2×2
    ("square_300x300_crop", 300, 300, 256, True, 6),  # tie, small area → 1×1
    ("photo_641x479_crop12", 641, 479, 96, True, 12),  # transformers' default max 12
    ("upscale_200x150_crop", 200, 150, 256, True, 6),  # tiles from an upscaled canvas
    ("full_1000x1400", 1000, 1400, 1024, False, 6),  # the one real-size case
]


def document_like(width: int, height: int, seed: int) -> np.ndarray:
    """A page-ish RGB image: white paper, dark glyph-like strokes, a colour block, a gradient and
    a small noise patch — sharp edges exercise bicubic overshoot, the rest every value range."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 255, np.uint8)
    # glyph rows
    line_h = max(2, height // 12)
    for top in range(line_h // 2, height - 1, line_h):
        x = int(rng.integers(0, max(1, width // 10)))
        while x < width:
            gw = int(rng.integers(1, max(2, line_h)))
            gh = int(rng.integers(1, max(2, line_h * 2 // 3)))
            ink = rng.integers(0, 80, size=3)
            img[top : top + gh, x : x + gw] = ink
            x += gw + int(rng.integers(1, max(2, line_h // 2)))
    # colour block and gradient
    bw, bh = max(1, width // 5), max(1, height // 6)
    img[:bh, width - bw :] = (200, 30, 60)
    gx = np.linspace(0, 255, max(1, width // 3), dtype=np.float64)
    gy = np.linspace(0, 255, max(1, height // 4), dtype=np.float64)
    grad = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None], (gx[None, :] + gy[:, None]) / 2), -1)
    img[height - grad.shape[0] :, : grad.shape[1]] = grad.astype(np.uint8)
    # noise patch
    nw, nh = max(1, width // 8), max(1, height // 8)
    y0, x0 = height // 2, width // 2
    img[y0 : y0 + nh, x0 : x0 + nw] = rng.integers(0, 256, size=(min(nh, height - y0), min(nw, width - x0), 3))
    return img


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for seed, (name, w, h, size, crop, max_patches) in enumerate(CASES):
        rgb = document_like(w, h, seed)
        proc = GotOcr2ImageProcessorPil(
            size={"height": size, "width": size},
            crop_to_patches=crop,
            min_patches=1,
            max_patches=max_patches,
        )
        out = proc(images=[Image.fromarray(rgb, "RGB")], return_tensors="np")
        pv = np.asarray(out["pixel_values"], dtype=np.float32)
        cols, rows = get_optimal_tiled_canvas((h, w), (size, size), 1, max_patches) if crop else (1, 1)
        assert pv.shape == (int(out["num_patches"][0]), 3, size, size), pv.shape
        arrays[f"{name}.input"] = rgb
        arrays[f"{name}.pixel_values"] = pv
        meta.append(
            {"name": name, "image_size": size, "crop": crop, "max_tiles": max_patches,
             "grid": [int(cols), int(rows)], "num_views": int(pv.shape[0])}
        )
        print(f"{name:24s} grid {cols}x{rows} views {pv.shape[0]}")
    arrays["meta"] = np.frombuffer(
        json.dumps(
            {"cases": meta, "transformers": transformers.__version__, "pillow": PIL.__version__}
        ).encode(),
        dtype=np.uint8,
    )
    np.savez_compressed(FIXTURES / "pixel_parity.npz", **arrays)

    # Tile grids over many sizes: random sizes plus exact-ratio ties and area-threshold squares.
    rng = np.random.default_rng(1234)
    sizes = [tuple(int(v) for v in rng.integers(1, 5000, size=2)) for _ in range(1500)]
    sizes += [(int(v), int(v)) for v in (1, 2, 255, 256, 362, 363, 1024, 1448, 1449, 3000)]
    sizes += [(5 * k, 2 * k) for k in (1, 50, 400, 700)] + [(2 * k, 5 * k) for k in (1, 50, 400, 700)]
    sizes += [(3 * k, 2 * k) for k in (1, 300, 900)] + [(7, 6), (13, 12), (12, 13), (4000, 1), (1, 4000)]
    rows_ = []
    for image_size in (1024, 256):
        for max_tiles in (1, 6, 12):
            for w, h in sizes:
                cols, rows = get_optimal_tiled_canvas((h, w), (image_size, image_size), 1, max_tiles)
                rows_.append((w, h, image_size, max_tiles, cols, rows))
    np.savez_compressed(FIXTURES / "tile_grids.npz", grids=np.asarray(rows_, dtype=np.int32))
    for f in sorted(FIXTURES.glob("*.npz")):
        print(f.name, f.stat().st_size)


if __name__ == "__main__":
    main()
