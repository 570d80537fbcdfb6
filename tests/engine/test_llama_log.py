"""llama.cpp's log in user-facing output: errors always, info and warnings only when asked."""

from __future__ import annotations

import pytest

import llama_cpp  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: F401 - required: a broken build fails, never skips
from gotocr_fast.engine.errors import ModelError
from gotocr_fast.engine.model import TextModel

# llama.cpp warns about GOT's vocabulary at every load: "</s>" looks like a control token.
LOAD_WARNING = "control-looking token"


def _text_gguf(model_dir):
    (path,) = model_dir.glob("got-text-*.gguf")
    return path


def test_load_warning_hidden_unless_verbose(tiny_model_dir, capfd):
    TextModel(_text_gguf(tiny_model_dir), n_slots=1, n_ctx_slot=64, verbose=False).close()
    out, err = capfd.readouterr()
    assert LOAD_WARNING not in err and "print_info" not in err and out == ""
    TextModel(_text_gguf(tiny_model_dir), n_slots=1, n_ctx_slot=64, verbose=True).close()
    assert LOAD_WARNING in capfd.readouterr().err


def test_llama_cpp_errors_stay_visible(tmp_path, capfd):
    bad = tmp_path / "got-text-f32.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelError, match="could not load the text model"):
        TextModel(bad, n_slots=1, n_ctx_slot=64, verbose=False)
    assert "error loading model" in capfd.readouterr().err


@pytest.mark.parametrize("args,marker", [(["--random", "tiny"], "--- OCR output"), ([], "--- whole page")],
                         ids=["random", "bundled"])
def test_demo_prints_no_library_lines(args, marker, capfd, monkeypatch, tmp_path):
    from gotocr_fast import demo, demo_model, llama_log

    if not args and not demo_model.has_bundle():
        pytest.skip("this build bundles no demo model")
    monkeypatch.setenv(demo_model.CACHE_ENV, str(tmp_path))
    sent: list[tuple[int, str]] = []  # every line llama.cpp / ggml handed to the log callback
    show = llama_log._show

    def recording(level, text):
        sent.append((level, text.decode("utf-8", "replace").strip()))
        show(level, text)

    monkeypatch.setattr(llama_log, "_show", recording)
    assert demo.main([*args, "--max-tokens", "4"]) == 0
    out, err = capfd.readouterr()
    assert marker in out
    assert any(LOAD_WARNING in text for _, text in sent)  # the library did talk
    printed = {line.strip() for line in (out + err).splitlines()}
    leaked = [text for level, text in sent if level != 4 and text in printed - {""}]
    assert leaked == [], leaked
