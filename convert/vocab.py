"""Qwen's tiktoken vocabulary as a byte-level BPE (the form llama.cpp and HF tokenizers use).

GOT tokenizes with Qwen's tiktoken file (151643 ranks, a base64 byte string per rank) plus the
special tokens of :mod:`gotocr_fast.tokens`. llama.cpp and HF ``tokenizers`` instead want
GPT-2 "byte-level" token strings (every byte mapped to a printable code point) and an ordered
merge list. This module does that translation, writes / reads the HF ``tokenizer.json`` form,
and holds the text normalisation GOT applies before BPE.

Merges: tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest
rank. A merge list that reproduces this lists, for every multi-byte token, each split into two
tokens that are both in the vocabulary, ordered by the rank of the merged token (then by the
pieces' ranks). That is what transformers' ``TikTokenConverter`` writes; a ranked-merge BPE
(llama.cpp, HF) then takes the same steps as tiktoken.

NFC: GOT's Qwen tokenizer runs ``unicodedata.normalize("NFC", text)`` before BPE. llama.cpp's
``qwen2`` tokenizer does not normalise, so the engine must pass text through
:func:`normalize_text` before ``llama_tokenize``. The ``tokenizer.json`` we write carries an NFC
normalizer so HF ``tokenizers`` matches GOT on its own.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.util
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConvertError

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen's tiktoken pre-tokenizer: digits split one by one (llama.cpp's ``qwen2`` pre-type)."""

TIKTOKEN_FILENAME = "qwen.tiktoken"


def normalize_text(text: str) -> str:
    """Normalise text the way GOT's tokenizer does before BPE (Unicode NFC).

    llama.cpp does not normalise; call this on every prompt before ``llama_tokenize``.
    """
    return unicodedata.normalize("NFC", text)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable code point table used by byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def bytes_to_token_string(data: bytes) -> str:
    """The byte-level token string for a token's raw bytes."""
    return "".join(BYTE_TO_UNICODE[b] for b in data)


def token_string_to_bytes(token: str) -> bytes:
    """Inverse of :func:`bytes_to_token_string`; raises ``KeyError`` on a non byte-level string."""
    return bytes(UNICODE_TO_BYTE[c] for c in token)


@dataclass(frozen=True)
class QwenBpe:
    """A byte-level BPE vocabulary: ``tokens[i]`` is the token string of id ``i``.

    ``merges`` is ordered by priority (first = merged first), each a pair of token strings.
    ``specials`` maps the special/added token strings to their ids (may be empty for a bare
    tiktoken file; the converter then uses :data:`gotocr_fast.tokens.SPECIAL_TOKENS`).
    """

    tokens: list[str]
    merges: list[tuple[str, str]]
    specials: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)


def bundled_qwen_tiktoken() -> Path:
    """``gotocr_fast/data/qwen.tiktoken``: the copy shipped in this package (see its NOTICE)."""
    # Found through the package, not this file: in a source tree convert/ is not inside it.
    package = importlib.util.find_spec(__name__.split(".")[0])
    return Path(package.origin).parent / "data" / TIKTOKEN_FILENAME


def find_qwen_tiktoken() -> Path:
    """Qwen's ``qwen.tiktoken``: the package's own copy, else an installed dashscope's.

    The package ships the file (2.5 MB, Apache-2.0, copied from dashscope 2.0.2) so a base
    install needs nothing more; dashscope itself would bring ~45 packages of network client.
    dashscope is only looked up (never imported) when the bundled copy is missing, e.g. in a
    source tree whose data folder was stripped.
    """
    bundled = bundled_qwen_tiktoken()
    if bundled.is_file():
        return bundled
    try:
        spec = importlib.util.find_spec("dashscope")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(
            f"qwen.tiktoken not found: {bundled} is missing from this install; reinstall gotocr-fast "
            "or install dashscope==2.0.2 (`pip install --no-deps dashscope==2.0.2`), which ships it"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "resources" / TIKTOKEN_FILENAME
        if candidate.is_file():
            return candidate
    raise ConvertError(
        f"qwen.tiktoken not found: {bundled} is missing and the installed dashscope "
        f"({', '.join(spec.submodule_search_locations)}) has no resources/{TIKTOKEN_FILENAME}; "
        "reinstall gotocr-fast or install dashscope==2.0.2"
    )


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a tiktoken file (``<base64 bytes> <rank>`` per line) into bytes → rank."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"cannot read tokenizer {path}: {exc}") from None
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            encoded, rank_text = line.split()
            ranks[base64.b64decode(encoded, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error):
            raise ConvertError(f"unreadable tokenizer {path}: line {line_no} is not '<base64> <rank>'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConvertError(f"unreadable tokenizer {path}: ranks are not 0..{len(ranks) - 1} without gaps")
    if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
        raise ConvertError(f"unreadable tokenizer {path}: not every single byte has a rank")
    return ranks


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of each multi-byte token into two vocabulary tokens, in merge priority order.

    Priority: rank of the merged token, then rank of the left piece, then of the right piece
    (the order transformers' TikTokenConverter uses). See the module docstring for why this
    reproduces tiktoken.
    """
    keyed: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank = ranks.get(left)
            if left_rank is None:
                continue
            right_rank = ranks.get(right)
            if right_rank is None:
                continue
            keyed.append((rank, left_rank, right_rank, left, right))
    keyed.sort()
    return [(left, right) for _, _, _, left, right in keyed]


def load_qwen_bpe(path: str | Path | None = None) -> QwenBpe:
    """Read ``qwen.tiktoken`` (default: :func:`find_qwen_tiktoken`) as a byte-level BPE.

    Returns the 151643 token strings in rank order and the merges derived from the ranks;
    ``specials`` is left empty (the file has none).
    """
    path = Path(find_qwen_tiktoken() if path is None else path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConvertError(f"cannot read tokenizer {path}: {exc}") from None
    return _load_qwen_bpe_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_qwen_bpe_cached(path: str, size: int, mtime_ns: int) -> QwenBpe:
    """Deriving the merges takes seconds: cache per file version (size/mtime in the key)."""
    ranks = read_tiktoken_ranks(path)
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    tokens = [bytes_to_token_string(data) for data, _ in by_rank]
    merges = [(bytes_to_token_string(a), bytes_to_token_string(b)) for a, b in merges_from_ranks(ranks)]
    return QwenBpe(tokens=tokens, merges=merges)


def write_tokenizer_json(path: str | Path, bpe: QwenBpe, specials: Mapping[str, int]) -> Path:
    """Write an HF ``tokenizers`` tokenizer.json for ``bpe`` plus ``specials`` (string → id).

    Byte-level BPE with the Qwen split regex (digits one by one, as tiktoken does), NFC
    normaliser (GOT normalises before BPE), ByteLevel decoder, specials as added tokens that are
    matched before normalisation and pre-tokenisation.
    """
    path = Path(path)
    added = [
        {
            "id": token_id,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for content, token_id in sorted(specials.items(), key=lambda item: item[1])
    ]
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {token: token_id for token_id, token in enumerate(bpe.tokens)},
            "merges": [[left, right] for left, right in bpe.merges],
        },
    }
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def read_tokenizer_json(path: str | Path) -> QwenBpe:
    """Read a byte-level BPE ``tokenizer.json`` back: vocab (by id), merges, added tokens.

    ``tokens`` covers ids ``0 .. n-1`` of the BPE model's vocab (they must be contiguous);
    added tokens go to ``specials`` whatever their id.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        model = document["model"]
        if model.get("type", "BPE") != "BPE":
            raise ConvertError(f"unreadable tokenizer {path}: model type {model.get('type')!r} is not BPE")
        vocab: dict[str, int] = model["vocab"]
        raw_merges = model["merges"]
        added = document.get("added_tokens") or []
    except ConvertError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConvertError(f"unreadable tokenizer {path}: {type(exc).__name__}: {exc}") from None

    specials = {entry["content"]: int(entry["id"]) for entry in added}
    # Added tokens may also sit in the model vocab (transformers sometimes writes them twice).
    plain = {token: token_id for token, token_id in vocab.items() if token not in specials}
    tokens: list[str | None] = [None] * len(plain)
    for token, token_id in plain.items():
        if not 0 <= token_id < len(tokens) or tokens[token_id] is not None:
            raise ConvertError(f"unreadable tokenizer {path}: vocab ids are not 0..{len(tokens) - 1} without gaps")
        tokens[token_id] = token
    merges: list[tuple[str, str]] = []
    for merge in raw_merges:
        if isinstance(merge, str):  # older tokenizers format: "left right"
            left, sep, right = merge.partition(" ")
            if not sep:
                raise ConvertError(f"unreadable tokenizer {path}: bad merge {merge!r}")
        else:
            left, right = merge
        merges.append((left, right))
    return QwenBpe(tokens=tokens, merges=merges, specials=specials)  # type: ignore[arg-type]
