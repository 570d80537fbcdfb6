"""The `gotocr` command: entry points, dispatch, error policy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import gotocr_fast
from gotocr_fast import cli


def _gotocr_script() -> str:
    """The console script installed next to this interpreter (or on PATH)."""
    local = Path(sys.executable).with_name("gotocr")
    if local.is_file():
        return str(local)
    found = shutil.which("gotocr")
    if found is None:
        pytest.fail("the gotocr console script is not installed")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_help_lists_every_command(launcher):
    cmd = [_gotocr_script()] if launcher == "script" else [sys.executable, "-m", "gotocr_fast"]
    r = _run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: gotocr")
    for name in ("convert", "ocr", "batch", "serve", "demo", "synth"):
        assert f"\n  {name} " in r.stdout


def test_unknown_command_exits_2():
    r = _run(_gotocr_script(), "no-such-command")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr and "no-such-command" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_command_exits_2():
    r = _run(sys.executable, "-m", "gotocr_fast")
    assert r.returncode == 2
    assert "COMMAND" in r.stderr


def test_version_reports_package_and_ggml():
    r = _run(sys.executable, "-m", "gotocr_fast", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"gotocr_fast {gotocr_fast.__version__}"
    assert "ggml " in r.stdout  # the native core is importable in an installed package
    assert "llama.cpp extra buffer types: " in r.stdout  # and says how text models will load


def test_import_and_help_stay_light():
    """`import gotocr_fast` and `gotocr --help` load no native code, numpy or torch."""
    code = (
        "import sys, gotocr_fast, gotocr_fast.cli\n"
        "try:\n    gotocr_fast.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('numpy', 'torch', 'llama_cpp', 'gotocr_fast._preprocess', 'gotocr_fast.engine') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = _run(sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


# --- dispatch and error policy, with stand-in subcommand modules ------------------------------


@pytest.fixture
def fake_command(monkeypatch):
    """Register a subcommand `fake` served by module `gotocr_fast_test_fake` (or another)."""

    def register(module: str, function: str = "main") -> None:
        sub = cli.Subcommand("fake", module, function, "test stand-in")
        monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, sub))
        monkeypatch.setitem(cli._BY_NAME, "fake", sub)

    return register


def _module(monkeypatch, name: str, main) -> None:
    mod = types.ModuleType(name)
    mod.main = main
    monkeypatch.setitem(sys.modules, name, mod)


def test_arguments_pass_through_and_return_code(monkeypatch, fake_command):
    seen = []

    def main(argv):
        seen.append(argv)
        return 7

    _module(monkeypatch, "gotocr_fast_test_fake", main)
    fake_command("gotocr_fast_test_fake")
    assert cli.main(["fake", "--help", "-x", "file.png"]) == 7
    assert seen == [["--help", "-x", "file.png"]]


def test_none_return_means_success(monkeypatch, fake_command):
    _module(monkeypatch, "gotocr_fast_test_fake", lambda argv: None)
    fake_command("gotocr_fast_test_fake")
    assert cli.main(["fake"]) == 0


def test_missing_module_is_one_line_not_a_traceback(capsys, fake_command):
    fake_command("gotocr_fast._no_such_module_for_tests")
    assert cli.main(["fake"]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available" in err and "fake" in err


def test_missing_function_is_unavailable(monkeypatch, capsys, fake_command):
    _module(monkeypatch, "gotocr_fast_test_fake", lambda argv: 0)
    fake_command("gotocr_fast_test_fake", function="no_such_function")
    assert cli.main(["fake"]) == cli.EXIT_UNAVAILABLE
    assert "not available" in capsys.readouterr().err


def test_missing_dependency_inside_a_module_keeps_its_traceback(tmp_path, monkeypatch, fake_command):
    (tmp_path / "gotocr_fast_test_broken.py").write_text("import gotocr_fast_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_command("gotocr_fast_test_broken")
    with pytest.raises(ModuleNotFoundError, match="gotocr_fast_no_such_dependency"):
        cli.main(["fake"])


def test_user_error_prints_error_and_exits_2(monkeypatch, capsys, fake_command):
    def main(argv):
        raise cli.CliError("bad model folder: x")

    _module(monkeypatch, "gotocr_fast_test_fake", main)
    fake_command("gotocr_fast_test_fake")
    assert cli.main(["fake"]) == 2
    assert capsys.readouterr().err == "error: bad model folder: x\n"


def test_file_not_found_is_a_user_error(monkeypatch, capsys, fake_command):
    def main(argv):
        open(os.path.join("/nonexistent-gotocr-dir", "img.png"), "rb")

    _module(monkeypatch, "gotocr_fast_test_fake", main)
    fake_command("gotocr_fast_test_fake")
    assert cli.main(["fake"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_registered_error_types_are_user_errors(monkeypatch, capsys, fake_command):
    """Types named in _USER_ERROR_TYPES count once their module is loaded (here: a stand-in)."""
    errors = types.ModuleType("gotocr_fast.engine.errors")

    class OcrError(Exception):
        pass

    errors.OcrError = OcrError
    monkeypatch.setitem(sys.modules, "gotocr_fast.engine.errors", errors)

    def main(argv):
        raise OcrError("context overflow: 9000 tokens > 8192")

    _module(monkeypatch, "gotocr_fast_test_fake", main)
    fake_command("gotocr_fast_test_fake")
    assert cli.main(["fake"]) == 2
    assert "error: context overflow" in capsys.readouterr().err


def test_unknown_errors_keep_their_traceback(monkeypatch, fake_command):
    def main(argv):
        raise RuntimeError("a bug")

    _module(monkeypatch, "gotocr_fast_test_fake", main)
    fake_command("gotocr_fast_test_fake")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake"])


def test_commands_without_a_model_say_how_to_pass_one(tmp_path, monkeypatch, capsys):
    """No --model, no GOTOCR_MODEL, and a build without the demo model: a clear error (with the
    bundled model, tests/test_demo_model.py covers these commands)."""
    from gotocr_fast import demo_model
    from gotocr_fast.cli import main as gotocr

    monkeypatch.delenv("GOTOCR_MODEL", raising=False)
    monkeypatch.setattr(demo_model, "has_bundle", lambda: False)
    image = tmp_path / "page.png"
    from PIL import Image

    Image.new("RGB", (64, 32), "white").save(image)
    assert gotocr(["ocr", str(image)]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert gotocr(["serve"]) == 2
    assert "--model (or GOTOCR_MODEL) is required" in capsys.readouterr().err


def test_demo_without_a_bundled_model_runs_random_weights_and_says_so(monkeypatch, capsys):
    from gotocr_fast import demo, demo_model

    monkeypatch.setattr(demo_model, "has_bundle", lambda: False)
    assert demo.main(["--max-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert "no bundled demo model" in err and "RANDOM weights" in err
    assert "--- OCR output (random weights" in out and "--- end ---" in out
