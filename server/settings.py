"""The server's settings: one typed, immutable object built from the command line and the environment.

Every option has a ``--flag`` and an environment variable ``GOTOCR_<NAME>`` (``--max-body-bytes`` ↔
``GOTOCR_MAX_BODY_BYTES``). Precedence: command line > environment > default. The API key is best
passed through ``GOTOCR_API_KEY`` (a command line is visible to every local user in ``ps``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from gotocr_fast import EngineConfig, OcrOptions
from gotocr_fast.inputs import DEFAULT_MAX_PIXELS, DEFAULT_PDF_DPI

__all__ = ["ServerSettings", "SettingsError", "build_parser", "settings_from_args"]

ENV_PREFIX = "GOTOCR_"
MiB = 1024 * 1024


class SettingsError(ValueError):
    """An invalid option value (the CLI prints it and exits with status 2)."""


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the server needs to know; defaults are the safe ones (docs/HTTP.md, "Security defaults")."""

    model: str
    """Model folder (``got-text-*.gguf`` + ``got-vision-*.gguf``) or the text GGUF path."""
    vision: str | None = None
    """The vision GGUF, when ``model`` is a text GGUF path."""
    model_name: str | None = None
    """Name reported in responses and ``/v1/models`` (default: the model folder's name)."""
    host: str = "127.0.0.1"
    port: int = 8000

    # ---- inputs and their limits
    allowed_root: str | None = None
    """Local paths are readable only under this folder; unset = local paths refused (403)."""
    allow_urls: bool = False
    """Fetch ``http(s)`` image URLs (never to loopback/private/link-local/metadata addresses)."""
    max_body_bytes: int = 32 * MiB
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Width × height limit of one decoded image or rendered PDF page (decompression bombs)."""
    max_images: int = 16
    """Images (pages included) per request."""
    max_pdf_pages: int = 32
    max_input_bytes: int = 32 * MiB
    """Size limit of one input file, fetched URL or decoded data URI."""
    pdf_dpi: float = DEFAULT_PDF_DPI
    """PDF pages are rendered at this resolution (capped by ``max_image_pixels``)."""
    fetch_timeout: float = 10.0
    """Seconds for a whole URL fetch, redirects included."""
    fetch_max_redirects: int = 3

    # ---- generation
    max_tokens_limit: int = 8192
    """Largest ``max_tokens`` a request may ask for (larger → 400)."""
    default_max_tokens: int | None = None
    """``max_tokens`` when a request gives none; unset: the engine's (GOT's 4096, or what the
    context leaves after the prompt)."""
    loop_guard: int | None = None
    """The loop guard's span in tokens for requests that give none (0 = off; unset: the engine's)."""

    # ---- engine and scheduling
    slots: int = EngineConfig.max_slots
    """Requests decoded concurrently (engine batch slots)."""
    queue: int = EngineConfig.max_queue
    """Sequences (one per prompt, or per box) waiting for a slot before new requests are refused with 429."""
    n_ctx: int = EngineConfig.n_ctx
    kv_tokens: int | None = None
    """KV cache cells the running requests share (unset: the engine's, ``n_ctx`` and at least 2048 a slot)."""
    kv_type: str | None = None
    """KV cache type (unset: the engine's, f16, or f32 for an f32 model)."""
    threads: int | None = None
    vision_precision: str = EngineConfig.vision_precision
    """Vision encoder arithmetic: ``bf16`` where the CPU multiplies bf16 natively (else f32)."""

    # ---- HTTP
    api_key: str | None = None
    """When set, every ``/v1`` route, ``/metrics`` and ``/docs`` require ``Authorization: Bearer <key>``."""
    public_ops: bool = False
    """With ``api_key``: serve ``/metrics`` and ``/docs`` without the key (``/health`` is always open)."""
    shutdown_timeout: float = 30.0
    """Seconds to let in-flight requests finish on SIGTERM/SIGINT."""
    log_level: str = "info"
    ui: bool = True
    """Serve the web page at ``/`` (``--no-ui``: the HTTP API only)."""

    def __post_init__(self) -> None:
        try:  # the engine's fields follow the engine's rules
            self.engine_config()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        positive = ("port", "max_body_bytes", "max_images", "max_pdf_pages", "max_input_bytes")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue < 0 or self.fetch_max_redirects < 0:
            raise SettingsError("queue and fetch_max_redirects must be >= 0")
        if self.fetch_timeout <= 0 or self.shutdown_timeout < 0 or self.pdf_dpi <= 0:
            raise SettingsError("fetch_timeout and pdf_dpi must be > 0, shutdown_timeout >= 0")
        if self.port > 65535:
            raise SettingsError(f"port must be <= 65535, got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise SettingsError("api_key must not be empty")

    def engine_config(self) -> EngineConfig:
        """The engine's configuration these settings give."""
        return EngineConfig(
            model=self.model,
            vision=self.vision,
            n_threads=self.threads,
            vision_precision=self.vision_precision,
            n_ctx=self.n_ctx,
            kv_tokens=self.kv_tokens,
            kv_type=self.kv_type,
            max_slots=self.slots,
            max_queue=self.queue,
            max_pixels=self.max_image_pixels,
            # llama.cpp's own log lines (load details, warnings) only at --log-level debug
            verbose=self.log_level.lower() == "debug",
            max_tokens_limit=self.max_tokens_limit,
            default_max_tokens=self.default_max_tokens,
            loop_guard=self.loop_guard,
        )

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        p = Path(self.model)
        return p.name if p.is_dir() or not p.suffix else p.stem


# (field, type, help). The CLI flag is --field-with-dashes, the env var GOTOCR_FIELD.
_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("model", str, "model folder (or text GGUF path)"),
    ("vision", str, "vision GGUF path when --model is a text GGUF"),
    ("model_name", str, "model name reported to clients"),
    ("host", str, "bind address (default 127.0.0.1)"),
    ("port", int, "port (default 8000)"),
    ("allowed_root", str, "folder whose files requests may read (unset: local paths refused)"),
    ("allow_urls", bool, "allow fetching http(s) image URLs (public addresses only)"),
    ("max_body_bytes", int, "request body limit in bytes (413 above)"),
    ("max_image_pixels", int, "pixel limit per decoded image / PDF page (413 above)"),
    ("max_images", int, "images (pages included) per request"),
    ("max_pdf_pages", int, "pages per PDF"),
    ("max_input_bytes", int, "size limit of one file / URL / data URI"),
    ("pdf_dpi", float, "PDF render resolution"),
    ("fetch_timeout", float, "seconds for one URL fetch, redirects included"),
    ("fetch_max_redirects", int, "redirects followed per URL"),
    ("max_tokens_limit", int, "largest max_tokens accepted"),
    ("default_max_tokens", int, f"max_tokens when a request gives none (default {OcrOptions.REFERENCE_MAX_TOKENS}, as "
                                "GOT's scripts, or what the context leaves after the prompt)"),
    ("loop_guard", int, "stop a repeating loop once its repeats span this many tokens, for requests that give no "
                        f"loop_guard (finish_reason 'repetition'; default {OcrOptions.LOOP_GUARD.min_span}; 0 = off)"),
    ("slots", int, "concurrent decode slots"),
    ("queue", int, "queued requests before 429"),
    ("n_ctx", int, "context tokens per request"),
    ("kv_tokens", int, "KV cache cells shared by the running requests, >= --n-ctx (default: --n-ctx, at least "
                       "2048 a slot; about 96 KiB each for the full-size model; docs/MEMORY.md)"),
    ("kv_type", str, "KV cache type: f16 (default; f32 for an f32 model), f32, or q8_0 (K in q8_0, V in f16: "
                     "3/4 of f16's memory, for models whose heads are a multiple of 32 wide; docs/MEMORY.md)"),
    ("threads", int, "CPU threads for the engine"),
    ("vision_precision", str, "vision encoder arithmetic: f32 (default, the reference's numerics) or bf16 "
                              "(AMX / AVX512_BF16 CPUs, ~3.5x faster a view on AMX; f32 elsewhere)"),
    ("api_key", str, "require 'Authorization: Bearer KEY' on /v1, /metrics and /docs (prefer env GOTOCR_API_KEY)"),
    ("public_ops", bool, "with --api-key: serve /metrics and /docs without the key"),
    ("shutdown_timeout", float, "graceful shutdown seconds"),
    ("log_level", str, "uvicorn log level"),
    ("ui", bool, "serve the web page at / (--no-ui: the HTTP API only)"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def build_parser(prog: str = "gotocr serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve GOT-OCR2 over HTTP. Every option can also be set as GOTOCR_<OPTION> in the environment.",
    )
    for name, typ, help_ in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, dest=name, type=typ, default=None, help=help_)
    return parser


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, typ, _ in _OPTIONS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        key = ENV_PREFIX + name.upper()
        if typ is bool:
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                raise SettingsError(f"{key}: expected a boolean, got {raw!r}")
            values[name] = low in _TRUE
        else:
            try:
                values[name] = typ(raw)
            except ValueError:
                raise SettingsError(f"{key}: expected {typ.__name__}, got {raw!r}") from None
    return values


def settings_from_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerSettings:
    """Parse ``argv`` (without the program/subcommand name) over the environment into settings."""
    args = build_parser().parse_args(argv)
    values = _from_env(os.environ if env is None else env)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if not values.get("model"):
        raise SettingsError("--model (or GOTOCR_MODEL) is required")
    try:
        return ServerSettings(**values)
    except TypeError as exc:  # pragma: no cover - every option maps to a field
        raise SettingsError(str(exc)) from None
