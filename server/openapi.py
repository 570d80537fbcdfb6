"""OpenAPI details Litestar cannot derive from the handlers' signatures.

* ``POST /v1/ocr`` takes two body encodings (JSON and multipart/form-data). Litestar derives a
  request body from one typed ``data`` parameter with one media type; this handler reads either
  encoding itself, so its body is described here: the JSON schema comes from the msgspec struct
  (one source of truth) plus the constraints the server checks beyond the struct's types, the
  multipart form lists the same fields plus files.
* ``POST /v1/chat/completions`` answers JSON, or Server-Sent Events with ``stream: true``.
* Every error is ``{"error": {...}}`` (``errors.ErrorBody``), never Litestar's default
  ``{"status_code", "detail"}``: ``error_responses`` documents it for each status a route returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Reference, RequestBody, Schema

from .errors import ErrorBody
from .schemas import OcrRequestBody

__all__ = ["ChatOperation", "OcrOperation", "error_responses"]

_ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed or invalid body, unknown or unreadable path, bad option",
    401: "Missing or wrong API key (only when the server has one)",
    403: "Path outside the allowed root, or URL fetching off / URL blocked",
    413: "Too large: body, input bytes, image pixels, images per request or PDF pages",
    415: "Not an image (or a readable PDF), or an unsupported body encoding",
    429: "Request queue full; retry after Retry-After seconds",
    500: "Internal server error (no detail; see the server log)",
    503: "Model not loaded yet, failed to load, or the server is shutting down",
}

#: What every OCR route can answer besides 200.
OCR_ERRORS = (400, 401, 403, 413, 415, 429, 500, 503)


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route handler: the OpenAI-style error body for each status."""
    return {
        status: ResponseSpec(data_container=ErrorBody, generate_examples=False,
                             description=_ERROR_DESCRIPTIONS[status])
        for status in statuses
    }

_REF = "#/components/schemas/{name}"


def _multipart_schema(ocr_schema: dict[str, Any]) -> dict[str, Any]:
    props = dict(ocr_schema["properties"])
    props["image_file"] = {
        "type": "string",
        "description": "optional, as in the JSON body (a string, or a JSON list as text)",
    }
    props["box"] = {"type": "string", "description": "JSON text: [x1,y1,x2,y2] or [[x1,y1,x2,y2], ...]"}
    props["file"] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "image or PDF uploads (parts named file, files or image); one result per image/page",
    }
    return {"title": "OcrUploadForm", "type": "object", "properties": props}


def _json_body_schema(ocr_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON body: the struct's schema plus what the server refuses beyond its types
    (``inputs.InputResolver``): empty strings and empty lists as ``image_file``."""
    schema = dict(ocr_schema)
    props = dict(schema["properties"])
    image_file = dict(props["image_file"])
    entry = {"type": "string", "minLength": 1}
    image_file["anyOf"] = [
        entry,
        {"type": "array", "minItems": 1,
         "items": {"anyOf": [entry, {"type": "array", "minItems": 1, "items": entry}]}},
    ]
    props["image_file"] = image_file
    schema["properties"] = props
    return schema


def _example_data_uri() -> str:
    """A small white PNG as a data URI: request examples any server accepts (no file, no URL)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (255, 255, 255)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _examples(value: dict[str, Any], summary: str) -> dict[str, Example]:
    return {"data_uri": Example(summary=summary, value=value)}


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    # OcrRequestBody has no nested structs, so its schema inlines completely (Litestar rebuilds
    # components.schemas from its own registry, so a component reference would dangle).
    (_,), defs = msgspec.json.schema_components([OcrRequestBody], ref_template=_REF)
    ocr = defs["OcrRequestBody"]
    return _json_body_schema(ocr), _multipart_schema(ocr)


@dataclass
class OcrOperation(Operation):
    """The ``/v1/ocr`` operation with its two request encodings."""

    def __post_init__(self) -> None:
        json_schema, form_schema = _schemas()
        self.request_body = RequestBody(
            required=True,
            content={  # plain JSON-schema dicts are rendered as they are
                "application/json": OpenAPIMediaType(  # type: ignore[arg-type]
                    schema=json_schema,
                    examples=_examples({"image_file": _example_data_uri(), "max_tokens": 8},
                                       "one image as a data URI"),
                ),
                "multipart/form-data": OpenAPIMediaType(schema=form_schema),  # type: ignore[arg-type]
            },
        )


#: One Server-Sent Event of a streamed chat completion (the schema applies to each event).
_SSE_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    required=["data"],
    properties={
        "data": Schema(
            type=OpenAPIType.STRING,
            description="a chat.completion.chunk object as JSON text; an {\"error\": {...}} object if the "
            "request failed after the response began; the last event is the text [DONE]",
        ),
        "event": Schema(type=OpenAPIType.STRING),
        "id": Schema(type=OpenAPIType.STRING),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
    description="one Server-Sent Event (`data: ...` line)",
)


@dataclass
class ChatOperation(Operation):
    """``/v1/chat/completions``: its 200 is JSON, or ``text/event-stream`` when ``stream`` is true."""

    def __post_init__(self) -> None:
        body = self.request_body
        if isinstance(body, RequestBody) and "application/json" in (body.content or {}):
            message = {"role": "user", "content": [
                {"type": "text", "text": "OCR"},
                {"type": "image_url", "image_url": {"url": _example_data_uri()}},
            ]}
            body.content["application/json"].examples = _examples(
                {"model": "got-ocr2", "messages": [message], "max_tokens": 8}, "one image as a data URI")
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            content = dict(ok.content or {})
            as_json = content.get("application/json")
            # The handler is annotated `ChatCompletionResponse | Response[Any]` (the stream), which
            # Litestar renders as oneOf [the model, {}]: `{}` matches anything, so no body could
            # match exactly one of them. The JSON body is the model; the stream is described below.
            if as_json is not None and isinstance(as_json.schema, Schema) and as_json.schema.one_of:
                refs = [x for x in as_json.schema.one_of if isinstance(x, Reference)]
                if len(refs) == 1:
                    as_json.schema = refs[0]
            content["text/event-stream"] = OpenAPIMediaType(schema=_SSE_EVENT)
            ok.content = content
            ok.description = "The completion (JSON), or its chunks as Server-Sent Events with stream: true"
