"""gotocr_fast.llama_load: llama.cpp's extra buffer types off where AMX int8 would crash, and every
text-model load (engine, stock ``Llama``) taking the same choice.

The q8_0 tests load and decode a q8_0 model with the default choice: on a CPU backend with AMX
int8 (Sapphire Rapids and newer Xeons) llama.cpp's AMX path killed the process with SIGILL here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import llama_cpp  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: F401 - required: a broken build fails, never skips
from gotocr_fast import llama_load
from gotocr_fast._preprocess import ggml_info
from gotocr_fast.engine.model import TextModel

AMX = {"AMX_INT8": "1", "AVX512": "1", "AVX2": "1"}
NO_AMX = {"AVX2": "1", "FMA": "1"}
EXTRA_BUFFER_LINE = re.compile(r"(AMX|REPACK)\S* model buffer size")
REPACK_LINE = "CPU_REPACK model buffer size"


@pytest.mark.parametrize(
    "mode, features, enabled",
    [
        (None, AMX, False), ("auto", AMX, False), (" AUTO ", AMX, False),
        (None, NO_AMX, True), ("auto", {**AMX, "AMX_INT8": "0"}, True),
        ("on", AMX, True), ("on", NO_AMX, True),
        ("off", AMX, False), ("off", NO_AMX, False),
    ],
)
def test_decide_extra_bufts(mode, features, enabled):
    choice = llama_load.decide_extra_bufts(mode, features)
    assert choice.enabled is enabled
    if mode is None and not enabled:
        assert "AMX" in choice.reason and "GOTOCR_EXTRA_BUFTS=on" in choice.reason
    # q4_K weights are routed to CPU_REPACK alone exactly where auto turned the extra types off
    auto_off = (mode or "auto").strip().lower() == "auto" and not enabled
    assert choice.repack_q4_k is auto_off


def test_no_q4_k_routing_without_avx2():
    choice = llama_load.decide_extra_bufts(None, {**AMX, "AVX2": "0"})
    assert not choice.enabled and not choice.repack_q4_k and "no repacking" in choice.reason


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="GOTOCR_EXTRA_BUFTS must be one of auto, on, off"):
        llama_load.decide_extra_bufts("yes", AMX)


def test_bad_mode_refuses_to_load(q8_0_text, monkeypatch):
    from gotocr_fast.engine.errors import ModelError

    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", "maybe")
    with pytest.raises(ModelError, match="GOTOCR_EXTRA_BUFTS must be one of"):
        TextModel(q8_0_text, n_slots=1, n_ctx_slot=64)


def test_this_process_follows_the_environment_and_the_backend(monkeypatch):
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", "off")
    assert llama_load.extra_bufts().enabled is False
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", "on")
    assert llama_load.extra_bufts().enabled is True
    monkeypatch.delenv("GOTOCR_EXTRA_BUFTS")
    amx = ggml_info()["cpu_features"].get("AMX_INT8") == "1"
    assert llama_load.extra_bufts().enabled is (not amx)


def test_off_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(llama_load, "_logged", set())
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", "off")
    with caplog.at_level("INFO", logger="gotocr_fast.llama_load"):
        for _ in range(3):
            llama_load.extra_bufts()
    lines = [r.getMessage() for r in caplog.records if r.name == "gotocr_fast.llama_load"]
    assert lines == ["text model: extra buffer types off: GOTOCR_EXTRA_BUFTS=off"]


@pytest.fixture(scope="module")
def q8_0_text(converted_model):
    return converted_model("tiny", "hf", "q8_0") / "got-text-q8_0.gguf"


def _prompt_logits(model: TextModel, ids: list[int]) -> np.ndarray:
    n = len(ids)
    logits = np.zeros(n, dtype=np.int8)
    logits[-1] = 1
    model.decode_tokens(np.asarray(ids, dtype=np.int32), np.arange(n, dtype=np.int32),
                        np.zeros(n, dtype=np.int32), logits)
    return model.logits(np.asarray([n - 1], dtype=np.int32))[0]


IDS = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644, 77091, 198]


def test_q8_0_model_decodes_in_the_engine_as_in_stock_llama(q8_0_text, monkeypatch):
    monkeypatch.delenv("GOTOCR_EXTRA_BUFTS", raising=False)
    model = TextModel(q8_0_text, n_slots=1, n_ctx_slot=64, n_threads=2, kv_type="f32")
    try:
        ours = _prompt_logits(model, IDS)
        # then greedy decode steps on the multi-threaded path that crashed with AMX buffers
        token = int(ours.argmax())
        for step in range(4):
            logits = np.ones(1, dtype=np.int8)
            model.decode_tokens(np.asarray([token], np.int32), np.asarray([len(IDS) + step], np.int32),
                                np.zeros(1, np.int32), logits)
            row = model.logits(np.zeros(1, np.int32))[0]
            assert np.isfinite(row).all()
            token = int(row.argmax())
    finally:
        model.close()
    llm = llama_load.open_stock_llama(model_path=str(q8_0_text), n_ctx=64, n_batch=64, n_threads=2,
                                      type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                                      logits_all=True, verbose=False)
    try:
        llm.eval(IDS)
        theirs = np.asarray(llm.scores[len(IDS) - 1], dtype=np.float32)
    finally:
        llm.close()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_the_choice_reaches_llama_cpp(q8_0_text, monkeypatch, capfd, mode):
    """Loading only (no matrix multiply): the weights' buffers say whether extra types were used."""
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", mode)
    model = TextModel(q8_0_text, n_slots=1, n_ctx_slot=64, n_threads=2, verbose=True)
    model.close()
    err = capfd.readouterr().err
    assert "CPU_Mapped model buffer size" in err  # the load log was seen at all
    if mode == "off":
        assert not EXTRA_BUFFER_LINE.search(err), err
    elif ggml_info()["cpu_features"].get("AMX_INT8") == "1":
        assert "AMX model buffer size" in err


@pytest.mark.parametrize("mode", ["off", "on"])
def test_stock_llama_takes_the_same_choice(q8_0_text, monkeypatch, mode):
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", mode)
    llm = llama_load.open_stock_llama(model_path=str(q8_0_text), vocab_only=True, verbose=False)
    try:
        assert bool(llm.model_params.use_extra_bufts) is (mode == "on")
    finally:
        llm.close()
    assert lib.llama_model_default_params is original
    assert bool(lib.llama_model_default_params().use_extra_bufts) is True  # llama.cpp's default, untouched


# --- q4_K weights in CPU_REPACK where the AMX buffer type is off ------------------------------------
# The tiny configs' 64-wide rows are shorter than a q4_K block, so llama.cpp writes no q4_K there;
# synth's "kquant" config, a one-layer model with 256-wide rows.

@pytest.fixture(scope="module")
def q4_k_m_text(tmp_path_factory):
    import shutil

    from gotocr_fast import synth
    from gotocr_fast.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("q4km")
    src = synth.write_checkpoint(root / "ckpt", config="kquant", layout="hf")
    files = convert_checkpoint(src, root / "gguf", outtype="q4_k_m", progress=False)
    shutil.rmtree(src)
    yield files.text
    shutil.rmtree(root, ignore_errors=True)


def _tensor_types(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (type name, shape as numpy orders it), read by gguf-py's reader independently of the
    engine's choice."""
    import gguf

    return {t.name: (t.tensor_type.name, tuple(int(n) for n in reversed(t.shape)))
            for t in gguf.GGUFReader(str(path)).tensors}


def test_only_q4_k_layer_matrices_are_routed(q4_k_m_text):
    types = _tensor_types(q4_k_m_text)
    routed = llama_load.repacked_tensors(q4_k_m_text)
    assert "blk.0.attn_q.weight" in routed and "blk.0.ffn_gate.weight" in routed
    for name in routed:
        kind, shape = types[name]
        assert kind == "Q4_K" and name.startswith("blk.") and shape[0] % 8 == 0
    # everything else stays where llama.cpp puts it: other types, norms, the token embedding
    others = [n for n, (kind, _) in types.items() if kind != "Q4_K"]
    assert others and not set(others) & set(routed)
    assert "token_embd.weight" not in routed


def test_an_unreadable_file_routes_nothing(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    assert llama_load.repacked_tensors(bad) == []


def _load_logits(path, mode, monkeypatch, capfd, steps=3):
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", mode)
    model = TextModel(path, n_slots=1, n_ctx_slot=64, n_threads=2, kv_type="f32", verbose=True)
    try:
        rows = [_prompt_logits(model, IDS)]
        token = int(rows[0].argmax())
        for step in range(steps):  # single-token decodes: the matrix-vector kernels
            model.decode_tokens(np.asarray([token], np.int32), np.asarray([len(IDS) + step], np.int32),
                                np.zeros(1, np.int32), np.ones(1, dtype=np.int8))
            rows.append(model.logits(np.zeros(1, np.int32))[0].copy())
            token = int(rows[-1].argmax())
    finally:
        model.close()
    return np.stack(rows), capfd.readouterr().err


@pytest.mark.skipif(ggml_info()["cpu_features"].get("AVX2") != "1", reason="llama.cpp repacks q4_K for AVX2 only")
def test_q4_k_weights_are_repacked_by_default_and_read_the_same(q4_k_m_text, monkeypatch, capfd):
    off, log_off = _load_logits(q4_k_m_text, "off", monkeypatch, capfd)
    assert "CPU_Mapped model buffer size" in log_off and not EXTRA_BUFFER_LINE.search(log_off)
    auto, log_auto = _load_logits(q4_k_m_text, "auto", monkeypatch, capfd)
    # repacked by llama.cpp's default (no AMX int8) or by our routing (AMX int8): either way, never AMX
    assert REPACK_LINE in log_auto, log_auto
    if ggml_info()["cpu_features"].get("AMX_INT8") == "1":
        assert "AMX model buffer size" not in log_auto
    assert np.isfinite(auto).all()
    # same weights, same activation quantization; only the summation order differs
    assert np.abs(auto - off).max() <= 0.02 * off.std(), np.abs(auto - off).max() / off.std()


@pytest.mark.skipif(ggml_info()["cpu_features"].get("AMX_INT8") != "1", reason="the routing applies where AMX int8 is")
def test_stock_llama_routes_the_same_tensors(q4_k_m_text, monkeypatch, capfd):
    monkeypatch.setenv("GOTOCR_EXTRA_BUFTS", "auto")
    llm = llama_load.open_stock_llama(model_path=str(q4_k_m_text), n_ctx=64, n_batch=64, n_threads=2, verbose=True)
    try:
        llm.eval(IDS[:4])
    finally:
        llm.close()
    err = capfd.readouterr().err
    assert REPACK_LINE in err and "AMX model buffer size" not in err
