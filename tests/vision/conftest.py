"""Fixtures for the vision encoder tests: converted vision GGUFs and a GGUF rewriter.

Vision GGUFs come from the project's converter (``gotocr_fast.convert``) run on the seeded synth
checkpoints (see ``tests/conftest.py``); broken files for the error tests are rewritten from a
good one with gguf-py. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import gguf
import numpy as np
import pytest

from gotocr_fast import synth

ARCH = "got-vision"


@pytest.fixture(scope="session")
def vision_gguf(converted_model) -> Callable[..., Path]:
    """vision_gguf(config="tiny", outtype="f32") -> path of got-vision-<outtype>.gguf."""

    def get(config: str = "tiny", outtype: str = "f32") -> Path:
        return converted_model(config, "hf", outtype) / f"got-vision-{outtype}.gguf"

    return get


@pytest.fixture(scope="session")
def tiny_vision_gguf(vision_gguf) -> Path:
    return vision_gguf("tiny", "f32")


def oracle_pixels(config: str, n_views: int = 2) -> np.ndarray:
    """The pixel recipe of tests/fixtures/README.md (vision oracles): synth_pixels(S, n, seed=0)."""
    return synth.synth_pixels(synth.CONFIGS[config].vision.image_size, n_views=n_views, seed=0)


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    set_keys: Mapping[str, tuple[object, gguf.GGUFValueType, gguf.GGUFValueType | None]] | None = None,
    drop_keys: Iterable[str] = (),
    drop_tensors: Iterable[str] = (),
    replace_tensors: Mapping[str, np.ndarray] | None = None,
    arch: str | None = None,
) -> Path:
    """Copy the GGUF at ``src`` to ``dst`` with keys / tensors changed (for the error tests)."""
    set_keys = dict(set_keys or {})
    drop_keys = set(drop_keys)
    drop_tensors = set(drop_tensors)
    replace_tensors = dict(replace_tensors or {})
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch or ARCH)
    skip = {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for field in reader.fields.values():
        if field.name in skip or field.name in drop_keys or field.name in set_keys:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype, sub) in set_keys.items():
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name in drop_tensors:
            continue
        if t.name in replace_tensors:
            writer.add_tensor(t.name, replace_tensors[t.name])
            continue
        shape = [int(x) for x in reversed(t.shape.tolist())]
        writer.add_tensor(t.name, np.array(t.data), raw_shape=shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture
def rewrite(tmp_path) -> Callable[..., Path]:
    counter = iter(range(1_000_000))

    def make(src: Path, **changes) -> Path:
        return rewrite_gguf(src, tmp_path / f"edited-{next(counter)}.gguf", **changes)

    return make
