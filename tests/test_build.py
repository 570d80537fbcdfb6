"""The installed package: native linkage, image normalisation, wheel layout.

These tests check the *installed* gotocr_fast (run them after `pip install .`), not the source tree.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gotocr_fast

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DIST_NAME = "gotocr-fast"


def _llama_cpp_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations, "llama_cpp is not installed"
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "lib"


def _extension_modules() -> list[Path]:
    """Our compiled modules, found where the import system finds _preprocess (also when editable)."""
    spec = importlib.util.find_spec("gotocr_fast._preprocess")
    if spec is None or spec.origin is None:
        return []
    return sorted(Path(spec.origin).resolve().parent.glob("_*.so"))


def _is_editable() -> bool:
    text = importlib.metadata.distribution(DIST_NAME).read_text("direct_url.json")
    return bool(text) and json.loads(text).get("dir_info", {}).get("editable", False)


def _ggml_or_llama(name: str) -> bool:
    return name.startswith(("libggml", "libllama"))


# ---------------------------------------------------------------------------------------------
# (a) every extension resolves ggml/llama from the installed llama_cpp package
# ---------------------------------------------------------------------------------------------


def test_preprocess_extension_is_installed():
    from gotocr_fast import _preprocess

    assert Path(_preprocess.__file__).resolve() in _extension_modules()


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd not available")
@pytest.mark.parametrize("module", _extension_modules(), ids=lambda p: p.name.split(".")[0])
def test_extension_resolves_ggml_from_llama_cpp(module: Path):
    lib_dir = _llama_cpp_lib_dir()
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run(["ldd", str(module)], capture_output=True, text=True, check=True, env=env).stdout
    resolved: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m and _ggml_or_llama(m.group(1)):
            resolved[m.group(1)] = m.group(2)
    if module.name.startswith("_preprocess"):
        # _preprocess links ggml (for ggml_info): the check below is never vacuous.
        assert any(name.startswith("libggml") for name in resolved), out
    for name, path in resolved.items():
        assert path != "not", f"{module.name}: {name} not found\n{out}"
        assert Path(path).resolve().parent == lib_dir, f"{module.name}: {name} -> {path}, want {lib_dir}"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf not available")
@pytest.mark.parametrize("module", _extension_modules(), ids=lambda p: p.name.split(".")[0])
def test_extension_runpath_points_at_llama_cpp(module: Path):
    out = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]*)\]", out)
    entries = [p for joined in paths for p in joined.split(":")]
    assert entries == ["$ORIGIN/../llama_cpp/lib"], out
    # No -march / instruction-set flags baked in is a compile-time rule; what we can check here is
    # that the module does not depend on any ggml outside llama_cpp (covered above).


def test_one_ggml_in_the_process():
    """After loading llama_cpp and our extensions, every mapped libggml/libllama is llama_cpp's."""
    code = (
        "import llama_cpp, importlib, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(open('/proc/self/maps').read())\n"
    )
    modules = ["gotocr_fast." + p.name.split(".")[0] for p in _extension_modules()]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    maps = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True, env=env
    ).stdout
    libs = {line.split()[-1] for line in maps.splitlines() if re.search(r"/lib(ggml|llama)[^/]*\.so", line)}
    assert libs, "no ggml library mapped"
    lib_dir = _llama_cpp_lib_dir()
    outside = sorted(p for p in libs if Path(p).resolve().parent != lib_dir)
    assert not outside, f"ggml/llama loaded from outside {lib_dir}: {outside}"
    names = [Path(p).name for p in libs]
    assert len(names) == len(set(names)), f"a library is mapped twice: {sorted(libs)}"


def test_ggml_info_reports_the_cpu_backend():
    from gotocr_fast._preprocess import ggml_info

    info = ggml_info()
    assert info["version"] and info["commit"]
    assert "CPU" in info["backends"]
    assert isinstance(info["cpu_features"], dict)


# ---------------------------------------------------------------------------------------------
# (b) normalize_rgb against independent numpy computations
# ---------------------------------------------------------------------------------------------


def _expected_f64(img: np.ndarray, mean, std) -> np.ndarray:
    x = img.astype(np.float64) / 255.0
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 5), (17, 31), (64, 64), (333, 1024)])
def test_normalize_rgb_matches_float64(shape):
    from gotocr_fast._preprocess import normalize_rgb

    rng = np.random.default_rng(hash(shape) % 2**32)
    img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    img.flat[0] = 0
    img.flat[-1] = 255  # both ends of the range in every image
    out = normalize_rgb(img, CLIP_MEAN, CLIP_STD)
    assert out.dtype == np.float32
    assert out.shape == (3, *shape)
    assert out.flags.c_contiguous and out.flags.owndata
    np.testing.assert_allclose(out, _expected_f64(img, CLIP_MEAN, CLIP_STD), rtol=0, atol=1e-6)


def test_normalize_rgb_is_bit_identical_to_numpy_float32():
    """The documented op order: (float32(x) / 255 - mean32) / std32, each step in float32."""
    from gotocr_fast._preprocess import normalize_rgb

    img = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256  # every value, every channel
    img = img.astype(np.uint8)
    mean32 = np.asarray(CLIP_MEAN, np.float32)
    std32 = np.asarray(CLIP_STD, np.float32)
    want = ((img.astype(np.float32) / np.float32(255.0) - mean32) / std32).transpose(2, 0, 1)
    got = normalize_rgb(img, CLIP_MEAN, CLIP_STD)
    np.testing.assert_array_equal(got.view(np.uint32), np.ascontiguousarray(want).view(np.uint32))


def test_normalize_rgb_other_mean_std_and_channel_order():
    from gotocr_fast._preprocess import normalize_rgb

    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    img[..., 2] = 51
    out = normalize_rgb(img, [0.5, 0.0, 0.2], np.array([0.5, 1.0, 0.1]))
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(out[1], 0.0, atol=1e-6)  # (0 - 0) / 1
    np.testing.assert_allclose(out[2], 0.0, atol=1e-6)  # (0.2 - 0.2) / 0.1


def test_normalize_rgb_accepts_row_strided_crop():
    from gotocr_fast._preprocess import normalize_rgb

    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    crop = big[3:30, 7:41]
    assert not crop.flags.c_contiguous
    out = normalize_rgb(crop, CLIP_MEAN, CLIP_STD)
    np.testing.assert_allclose(out, _expected_f64(np.ascontiguousarray(crop), CLIP_MEAN, CLIP_STD), atol=1e-6)


def test_normalize_rgb_does_not_touch_input():
    from gotocr_fast._preprocess import normalize_rgb

    img = np.random.default_rng(2).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    before = img.copy()
    img.setflags(write=False)  # read-only input must be accepted
    normalize_rgb(img, CLIP_MEAN, CLIP_STD)
    np.testing.assert_array_equal(img, before)


def _bad_inputs():
    good = np.zeros((4, 6, 3), np.uint8)
    yield "float32", good.astype(np.float32)
    yield "uint16", good.astype(np.uint16)
    yield "int8", good.astype(np.int8)
    yield "2d", np.zeros((4, 6), np.uint8)
    yield "4 channels", np.zeros((4, 6, 4), np.uint8)
    yield "1 channel", np.zeros((4, 6, 1), np.uint8)
    yield "4d", np.zeros((1, 4, 6, 3), np.uint8)
    yield "empty", np.zeros((0, 6, 3), np.uint8)
    yield "column step", np.zeros((4, 12, 3), np.uint8)[:, ::2]
    yield "planar view", np.zeros((3, 4, 6), np.uint8).transpose(1, 2, 0)
    yield "fortran", np.asfortranarray(good)
    yield "flipped rows", good[::-1]
    yield "list", good.tolist()


@pytest.mark.parametrize("case", list(_bad_inputs()), ids=lambda c: c[0])
def test_normalize_rgb_rejects_bad_images(case):
    from gotocr_fast._preprocess import normalize_rgb

    with pytest.raises(ValueError, match="img"):
        normalize_rgb(case[1], CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize(
    "mean,std,match",
    [
        ((0.5, 0.5), CLIP_STD, "mean"),
        (CLIP_MEAN, (1, 1, 1, 1), "std"),
        (CLIP_MEAN, 1.0, "std"),
        (CLIP_MEAN, (0.2, 0.0, 0.2), "std"),
        (CLIP_MEAN, (0.2, float("nan"), 0.2), "std"),
        ((float("inf"), 0, 0), CLIP_STD, "mean"),
    ],
)
def test_normalize_rgb_rejects_bad_mean_std(mean, std, match):
    from gotocr_fast._preprocess import normalize_rgb

    with pytest.raises(ValueError, match=match):
        normalize_rgb(np.zeros((2, 2, 3), np.uint8), mean, std)


# ---------------------------------------------------------------------------------------------
# (c) one import root in the wheel
# ---------------------------------------------------------------------------------------------


def test_wheel_has_one_import_root():
    files = importlib.metadata.files(DIST_NAME)
    assert files, "installed without a RECORD"
    roots = set()
    for f in files:
        parts = Path(str(f)).parts
        if parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".pth")):
            continue  # console scripts, metadata
        if parts[0].startswith(("__editable__", "_editable_")):
            continue  # the import hook of an editable install
        roots.add(parts[0])
    assert roots == {"gotocr_fast"}, roots


def test_convert_and_server_are_subpackages():
    if _is_editable():
        pytest.skip("editable install: files are served from the source tree")
    dist = importlib.metadata.distribution(DIST_NAME)
    site = Path(dist.locate_file("")).resolve()
    for name in ("convert", "server"):
        assert not (site / name).exists(), f"top-level {name}/ in {site}"
        spec = importlib.util.find_spec(f"gotocr_fast.{name}")
        if spec is None:
            continue  # that part has not been written yet
        assert spec.origin and Path(spec.origin).resolve().is_relative_to(site / "gotocr_fast" / name)
