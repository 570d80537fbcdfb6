"""OpenAPI for ``POST /v1/ocr``, which takes two body encodings (JSON and multipart/form-data).

Litestar derives a request body from one typed ``data`` parameter with one media type; this
handler reads either encoding itself, so its body is described here: the JSON schema comes from
the msgspec struct (one source of truth), the multipart form lists the same fields plus files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

from .schemas import OcrRequest

__all__ = ["OcrOperation"]

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


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    # OcrRequest has no nested structs, so its schema inlines completely (Litestar rebuilds
    # components.schemas from its own registry, so a component reference would dangle).
    (_,), defs = msgspec.json.schema_components([OcrRequest], ref_template=_REF)
    ocr = defs["OcrRequest"]
    return ocr, _multipart_schema(ocr)


@dataclass
class OcrOperation(Operation):
    """The ``/v1/ocr`` operation with its two request encodings."""

    def __post_init__(self) -> None:
        json_schema, form_schema = _schemas()
        self.request_body = RequestBody(
            required=True,
            content={  # plain JSON-schema dicts are rendered as they are
                "application/json": OpenAPIMediaType(schema=json_schema),  # type: ignore[arg-type]
                "multipart/form-data": OpenAPIMediaType(schema=form_schema),  # type: ignore[arg-type]
            },
        )
