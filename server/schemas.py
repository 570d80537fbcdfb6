"""Request and response bodies at the HTTP edge (msgspec structs, validated on decode).

``OcrRequestBody`` is the seed project's JSON body (docs/HTTP.md); the responses keep its OpenAI
``text_completion`` shape so its clients work unchanged. The structs only describe the wire format
(types, and the ranges the OpenAPI document shows); defaults come from the engine's
``OcrOptions`` and every rule is checked there (``modes.py`` converts a body into it). The chat structs are the subset of
OpenAI's chat-completions API the official ``openai`` client sends. Unknown fields are ignored
(clients add their own), never an error.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta

from gotocr_fast import OcrOptions

__all__ = [
    "OcrRequestBody",
    "OcrChoice",
    "OcrResponse",
    "Usage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionChunk",
    "ModelCard",
    "ModelList",
    "Health",
    "VersionInfo",
]

Number = Union[int, float]
ImageFileSpec = Union[str, list[Union[str, list[str]]]]
"""A string, a list of strings (one result each), or lists of strings (one multi-page prompt each)."""
BoxSpec = list[Union[Number, list[Number]]]
"""``[x1, y1, x2, y2]`` or a list of such boxes (checked by ``OcrOptions``)."""
OcrType = Literal[OcrOptions.TYPES]  # type: ignore[valid-type]
Color = Literal[OcrOptions.COLORS]  # type: ignore[valid-type]
_GUARD = OcrOptions.LOOP_GUARD

MaxTokens = Annotated[int, Meta(ge=1, description="maximum tokens to generate")]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0, description="0 = greedy (deterministic)")]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Meta(gt=0.0)]
NoRepeatNgramSize = Annotated[int, Meta(
    ge=0, description="ban any n-gram of the prompt and output from repeating (transformers' no_repeat_ngram_size); "
    f"default: {OcrOptions.REFERENCE_NO_REPEAT_NGRAM_SIZE} for one view, 0 (off) for crop and multi-page, as GOT's official "
    "scripts; 0 = off")]
LoopGuard = Annotated[int, Meta(
    ge=0, description=f"stop when the text ends in one cycle (<= {_GUARD.max_period} tokens) repeated >= "
    f"{_GUARD.min_repeats} times over at least this many tokens: finish_reason 'repetition', the text keeps "
    "the first cycle; default: the server's --loop-guard; 0 = off")]
FinishReason = Annotated[Literal["stop", "length", "repetition"], Meta(
    description="OpenAI's stop / length, plus 'repetition' (our extension): the loop guard stopped a loop")]


class OcrRequestBody(msgspec.Struct, kw_only=True):
    """``POST /v1/ocr`` body (docs/HTTP.md)."""

    image_file: Annotated[
        ImageFileSpec,
        Meta(
            description="path under the allowed root, folder, .pdf, http(s) URL or data:image/...;base64 URI; "
            "a list gives one result per item, an inner list one multi-page prompt"
        ),
    ]
    type: OcrType = OcrOptions.type
    box: BoxSpec | None = None
    color: Color | None = None
    crop: bool = OcrOptions.crop
    max_tokens: MaxTokens | None = None
    temperature: Temperature = OcrOptions.temperature
    top_p: TopP = OcrOptions.top_p
    repetition_penalty: RepetitionPenalty = OcrOptions.repetition_penalty
    seed: int | None = None
    no_repeat_ngram_size: NoRepeatNgramSize | None = None
    loop_guard: LoopGuard | None = None
    render: Annotated[
        Literal["html"] | None,
        Meta(description="html: each choice also carries `html`, a standalone HTML document of its text "
             "(math typeset, tables drawn, works offline); needs type format"),
    ] = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OcrChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason = "stop"
    stop_reason: Annotated[int | str | None, Meta(
        description="with finish_reason 'stop': the id of the token that ended the answer (151645 = <|im_end|>, "
        "151643 = <|endoftext|>) or the stop text found in it; else null")] = None
    prompt_logprobs: None = None
    html: Annotated[str, Meta(description='with render "html": the answer as a standalone HTML document')] \
        | msgspec.UnsetType = msgspec.UNSET
    """Only with ``render: "html"`` (absent otherwise)."""


class OcrResponse(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[OcrChoice]
    usage: Usage
    object: str = "text_completion"


# ---------------------------------------------------------------- chat completions (OpenAI subset)


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageUrlPart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageUrl


ContentPart = Union[TextPart, ImageUrlPart]


class ChatMessage(msgspec.Struct):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/chat/completions``. The last user message's ``image_url`` parts are the pages of
    one prompt; its text picks the OCR mode (see ``modes.mode_from_text``). The extra fields
    ``ocr_type``/``box``/``color``/``crop`` (``extra_body`` in the openai client) override the text."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None
    n: Annotated[int, Meta(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    repetition_penalty: RepetitionPenalty | None = None
    no_repeat_ngram_size: NoRepeatNgramSize | None = None
    loop_guard: LoopGuard | None = None
    ocr_type: OcrType | None = None
    box: BoxSpec | None = None
    color: Color | None = None
    crop: bool | None = None


class AssistantMessage(msgspec.Struct):
    content: str
    role: str = "assistant"


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletionResponse(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: str = "chat.completion"


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: str = "chat.completion.chunk"


# ---------------------------------------------------------------- ops


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "gotocr_fast"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


class Health(msgspec.Struct):
    status: Literal["loading", "ready", "failed", "stopping"]
    model: str
    message: str | None = None


class VersionInfo(msgspec.Struct):
    version: str
    model: str
