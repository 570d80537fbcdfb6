"""``POST /v1/ocr``: the seed project's endpoint (JSON body, or the same fields as multipart/form-data)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import msgspec
from litestar import Request, post
from litestar.datastructures import UploadFile

from gotocr_fast import OcrResult
from gotocr_fast.web.render import render_document

from .errors import ApiError
from .modes import ocr_options
from .openapi import OCR_ERRORS, OcrOperation, error_responses
from .render import check_render
from .runner import until_disconnect
from .runtime import Runtime
from .schemas import OcrChoice, OcrRequestBody, OcrResponse, Usage

__all__ = ["ocr", "decode_json_body"]

_UPLOAD_FIELDS = ("file", "files", "image", "images", "file[]", "files[]")
_FORM_FIELDS = ("image_file", "type", "box", "color", "crop", "max_tokens", "temperature", "top_p",
                "repetition_penalty", "seed", "no_repeat_ngram_size", "loop_guard", "render")


def decode_json_body(body: bytes, typ: type) -> Any:
    if not body.strip():
        raise ApiError(400, "request body is empty (expected JSON)", "invalid_json")
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request: {exc}", "invalid_request") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "invalid_json") from None


async def _read_multipart(request: Request) -> tuple[OcrRequestBody, list[tuple[str, bytes]]]:
    form = await request.form()
    uploads: list[tuple[str, bytes]] = []
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in _UPLOAD_FIELDS:
                raise ApiError(400, f"unexpected file field {key!r} (use 'file')", "invalid_request")
            uploads.append((value.filename or key, await value.read()))
            await value.close()
        elif key in _UPLOAD_FIELDS:
            raise ApiError(400, f"field {key!r} must be a file upload", "invalid_request")
        elif key in _FORM_FIELDS:
            if key in fields:
                raise ApiError(400, f"field {key!r} given more than once", "invalid_request")
            fields[key] = value
    raw_images = fields.pop("image_file", None)
    if raw_images is not None and raw_images.lstrip().startswith("["):
        fields["image_file"] = _json_field("image_file", raw_images)
    elif raw_images:
        fields["image_file"] = raw_images
    else:
        fields["image_file"] = []
    if "box" in fields:
        fields["box"] = _json_field("box", fields["box"])
    for key in ("color", "seed", "max_tokens", "no_repeat_ngram_size", "loop_guard", "render"):
        if fields.get(key) == "":
            del fields[key]
    try:
        # strict=False: form values are text ("2048", "true", "0.5")
        return msgspec.convert(fields, OcrRequestBody, strict=False), uploads
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request: {exc}", "invalid_request") from None


def _json_field(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(400, f"field {name!r} must be JSON", "invalid_request") from None


@post(
    "/ocr",
    operation_class=OcrOperation,
    status_code=200,
    responses=error_responses(*OCR_ERRORS),
    summary="OCR images (seed-compatible)",
    description="JSON body (application/json) or the same fields as multipart/form-data with file uploads. "
    "One choice per image item (a folder or PDF gives one per page; an inner list is one multi-page prompt).",
)
async def ocr(request: Request, rt: Runtime) -> OcrResponse:
    media_type = request.content_type[0]
    if media_type == "multipart/form-data":
        body, uploads = await _read_multipart(request)
    elif media_type == "application/x-www-form-urlencoded":
        raise ApiError(415, "send JSON or multipart/form-data", "unsupported_media_type")
    else:  # application/json, or clients that send JSON without a content type
        body, uploads = decode_json_body(await request.body(), OcrRequestBody), []

    # checked before any input is read: a bad option costs no file or URL access
    options = rt.engine_config.resolve(ocr_options(body))
    check_render(body.render, body.type)
    rt.holder.require()  # 503 while loading: before any input work

    async def work() -> OcrResponse:
        t_input = time.perf_counter()
        prompts = await rt.resolver.resolve(body.image_file, uploads)
        rt.metrics.stage_seconds.observe(time.perf_counter() - t_input, "input")
        tasks = [asyncio.ensure_future(rt.service.run(pages, options)) for pages in prompts]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # every engine request is cancelled
            raise
        return _response(rt, results, body.render)

    return await until_disconnect(request.receive, work)


def _response(rt: Runtime, results: list[OcrResult], render: str | None = None) -> OcrResponse:
    choices = [
        OcrChoice(
            index=i,
            text=r.text,
            finish_reason=r.finish_reason,
            stop_reason=r.stop_reason,
            **({"html": render_document(r.text)} if render else {}),
        )
        for i, r in enumerate(results)
    ]
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return OcrResponse(
        id=f"ocr-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=rt.model_name,
        choices=choices,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
    )
