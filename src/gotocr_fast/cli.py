"""The ``gotocr`` command: one entry point, subcommands loaded on demand.

Each subcommand lives in its own module with a ``main(argv) -> int | None`` style function and
parses its own arguments; this file only picks the module, so ``gotocr --help`` stays fast and a
subcommand whose dependencies are heavy (the server, the converter) costs nothing until used.

Error policy, the same for every subcommand:
- a documented user error (bad input file, invalid request, conversion failure, ``CliError``)
  prints ``error: <message>`` on stderr and exits 2;
- anything else is a bug and keeps its traceback;
- a subcommand that is not part of this build prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from . import __version__

EXIT_USER_ERROR = 2
EXIT_UNAVAILABLE = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing failure a subcommand reports as ``error: <message>`` (exit code 2)."""


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    function: str
    help: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("convert", "gotocr_fast.convert.cli", "main", "convert a GOT checkpoint to GGUF files"),
    Subcommand("ocr", "gotocr_fast.engine.cli", "ocr_main", "OCR images or PDFs with a converted model"),
    Subcommand("batch", "gotocr_fast.engine.cli", "batch_main", "OCR many inputs concurrently"),
    Subcommand("eval", "gotocr_fast.engine.eval_cli", "eval_main", "score OCR of a folder against .txt truths (CER, WER)"),
    Subcommand("serve", "gotocr_fast.server.cli", "main", "run the HTTP OCR service"),
    Subcommand("demo", "gotocr_fast.demo", "main", "read a sample page with the bundled demo model"),
    Subcommand("synth", "gotocr_fast.synth", "main", "write a seeded random-weight GOT checkpoint"),
)
_BY_NAME = {s.name: s for s in SUBCOMMANDS}

# Exception types that mean "the user asked for something wrong", by (module, class name). They are
# looked up only in modules already imported: an exception can only be an instance of a class whose
# module has been loaded, so this never imports anything.
_USER_ERROR_TYPES: tuple[tuple[str, str], ...] = (
    ("gotocr_fast.convert.errors", "ConvertError"),
    ("gotocr_fast.engine.errors", "OcrError"),
    ("gotocr_fast.preprocess", "ImageError"),
)
_BUILTIN_USER_ERRORS = (CliError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, _BUILTIN_USER_ERRORS):
        return True
    for module_name, class_name in _USER_ERROR_TYPES:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _version_text() -> str:
    """Package version plus the ggml build the native core runs on (loads the native core)."""
    lines = [f"gotocr_fast {__version__}"]
    try:
        from ._preprocess import ggml_info
    except ImportError as exc:
        lines.append(f"native core: not importable ({exc})")
    else:
        info = ggml_info()
        features = " ".join(k for k, v in info["cpu_features"].items() if v in ("1", ""))
        lines.append(f"ggml {info['version']} ({info['commit']}), backends: {', '.join(info['backends'])}")
        if features:
            lines.append(f"CPU features: {features}")
        from .llama_load import extra_bufts

        try:
            choice = extra_bufts()
            lines.append(f"llama.cpp extra buffer types: {'on' if choice.enabled else 'off'} ({choice.reason})")
        except ValueError as exc:  # a bad GOTOCR_EXTRA_BUFTS value
            lines.append(f"llama.cpp extra buffer types: {exc}")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object):
        super().__init__(option_strings, dest=dest, nargs=0, help="show version and ggml build, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(_version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    width = max(len(s.name) for s in SUBCOMMANDS)
    commands = "\n".join(f"  {s.name:<{width}}  {s.help}" for s in SUBCOMMANDS)
    parser = argparse.ArgumentParser(
        prog="gotocr",
        usage="gotocr [-h] [--version] COMMAND [ARGS...]",
        description="Fast self-hosted OCR with the GOT-OCR2 model.",
        epilog=f"commands:\n{commands}\n\nRun 'gotocr COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "command",
        nargs="?",
        choices=[s.name for s in SUBCOMMANDS],
        metavar="COMMAND",
        help="one of the commands below",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _load(sub: Subcommand) -> Callable[[list[str]], object] | None:
    """The subcommand's entry function, or None when its module is not part of this build."""
    try:
        module = importlib.import_module(sub.module)
    except ModuleNotFoundError as exc:
        # Only "this subcommand's own module is absent" means unavailable; a missing dependency
        # *inside* an existing module is a real failure and keeps its traceback.
        missing = exc.name or ""
        if missing and (sub.module == missing or sub.module.startswith(missing + ".")):
            return None
        raise
    return getattr(module, sub.function, None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.error("a COMMAND is required")
    sub = _BY_NAME[args.command]
    entry = _load(sub)
    if entry is None:
        print(
            f"gotocr: the '{sub.name}' command is not available in this build "
            f"({sub.module}.{sub.function} is missing)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    try:
        result = entry(list(args.args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if result is None:
        return 0
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
