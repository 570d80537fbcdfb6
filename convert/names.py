"""Checkpoint tensor names → one canonical spelling, and the layout a checkpoint is in.

Canonical names are the transformers hub names (what ``GotOcr2ForConditionalGeneration`` writes
with ``save_pretrained``): ``language_model.model.*``, ``lm_head.weight``, ``vision_tower.*``,
``multi_modal_projector.*``. Every spelling transformers itself loads maps onto them, and so do
the original GOT-OCR2.0 names (mapping as in transformers' ``convert_got_ocr2_weights_to_hf.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ConvertError

LAYOUT_ORIGINAL = "original"
LAYOUT_HF = "hf"

ORIGINAL_ARCHITECTURES = frozenset({"GOTQwenForCausalLM"})
HF_ARCHITECTURES = frozenset({"GotOcr2ForConditionalGeneration"})
ORIGINAL_MODEL_TYPES = frozenset({"GOT"})
HF_MODEL_TYPES = frozenset({"got_ocr2"})

LM_PREFIX = "language_model.model."
LM_HEAD = "lm_head.weight"
VISION_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "multi_modal_projector."

# transformers layout: (prefix as stored, canonical prefix). Longest first: the first match wins.
_HF_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.model.", LM_PREFIX),
    ("model.language_model.", LM_PREFIX),
    ("language_model.model.", LM_PREFIX),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", LM_PREFIX),
    ("model.vision_tower.", VISION_PREFIX),
    ("vision_tower.", VISION_PREFIX),
    ("model.multi_modal_projector.", PROJECTOR_PREFIX),
    ("multi_modal_projector.", PROJECTOR_PREFIX),
    ("lm_head.", "lm_head."),
)

_ORIGINAL_VISION = "model.vision_tower_high."
# original GOT-OCR2.0 → canonical, applied in order (first match wins).
_ORIGINAL_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^model\.vision_tower_high\.patch_embed\.proj\.", "vision_tower.patch_embed.projection."),
        (r"^model\.vision_tower_high\.pos_embed$", "vision_tower.pos_embed"),
        (r"^model\.vision_tower_high\.blocks\.(\d+)\.norm([12])\.", r"vision_tower.layers.\1.layer_norm\2."),
        (r"^model\.vision_tower_high\.blocks\.(\d+)\.(attn|mlp)\.", r"vision_tower.layers.\1.\2."),
        (r"^model\.vision_tower_high\.neck\.0\.", "vision_tower.neck.conv1."),
        (r"^model\.vision_tower_high\.neck\.1\.", "vision_tower.neck.layer_norm1."),
        (r"^model\.vision_tower_high\.neck\.2\.", "vision_tower.neck.conv2."),
        (r"^model\.vision_tower_high\.neck\.3\.", "vision_tower.neck.layer_norm2."),
        # net_2 / net_3 live inside the vision tower in GOT's code; accept them at model.* too.
        (r"^model\.(?:vision_tower_high\.)?net_2\.", "multi_modal_projector.conv_upsampler1."),
        (r"^model\.(?:vision_tower_high\.)?net_3\.", "multi_modal_projector.conv_upsampler2."),
        (r"^model\.mm_projector_vary\.", "multi_modal_projector.multimodal_projector."),
        (r"^lm_head\.", "lm_head."),
        (r"^model\.", LM_PREFIX),
    )
)


def detect_layout(config: dict, names: Iterable[str]) -> str:
    """``"original"`` or ``"hf"`` from config.json's architectures / model_type (names as fallback)."""
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    model_type = config.get("model_type")
    if any(a in ORIGINAL_ARCHITECTURES for a in architectures) or model_type in ORIGINAL_MODEL_TYPES:
        return LAYOUT_ORIGINAL
    if any(a in HF_ARCHITECTURES for a in architectures) or model_type in HF_MODEL_TYPES:
        return LAYOUT_HF
    if architectures or model_type:
        raise ConvertError(
            f"unknown architecture {', '.join(architectures) or model_type!r} in config.json: expected "
            f"GOTQwenForCausalLM (GOT-OCR2.0) or GotOcr2ForConditionalGeneration (transformers)"
        )
    names = list(names)
    if any(n.startswith(_ORIGINAL_VISION) for n in names):
        return LAYOUT_ORIGINAL
    if any(n.startswith(("vision_tower.", "model.vision_tower.")) for n in names):
        return LAYOUT_HF
    raise ConvertError("unknown architecture: config.json names none and the tensor names are not GOT-OCR2's")


def canonical_name(name: str, layout: str) -> str | None:
    """The canonical name of a stored tensor name, or ``None`` for a tensor we do not use."""
    if layout == LAYOUT_HF:
        for stored, canonical in _HF_PREFIXES:
            if name.startswith(stored):
                return canonical + name[len(stored):]
        return None
    for pattern, replacement in _ORIGINAL_RULES:
        canonical, count = pattern.subn(replacement, name, count=1)
        if count:
            return canonical
    return None


def canonicalize(names: Iterable[str], layout: str) -> dict[str, str]:
    """Map canonical name → stored name for every tensor we use; two spellings of one tensor fail."""
    mapping: dict[str, str] = {}
    for stored in names:
        canonical = canonical_name(stored, layout)
        if canonical is None:
            continue
        if canonical in mapping:
            raise ConvertError(f"tensors {mapping[canonical]!r} and {stored!r} are both {canonical!r}")
        mapping[canonical] = stored
    return mapping
