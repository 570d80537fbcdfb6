"""``POST /v1/chat/completions``: OpenAI-client compatible OCR.

The last user message's ``image_url`` parts (data URIs, or http(s) URLs when the server fetches
URLs) are the pages of one prompt; its text parts choose the mode (``modes.mode_from_text``):
"format", "box: [x1,y1,x2,y2]", "color: red", "crop". ``stream: true`` answers with Server-Sent
Events, ``chat.completion.chunk`` objects ending with ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gotocr_fast import OcrOptions

from .errors import ApiError, ClientDisconnected, error_event, to_api_error
from .inputs import PageBudget
from .modes import chat_request_options
from .openapi import OCR_ERRORS, ChatOperation, error_responses
from .routes_ocr import decode_json_body
from .runner import until_disconnect
from .runtime import Runtime
from .schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChunkChoice,
    Delta,
    ImageUrlPart,
    TextPart,
    Usage,
)

__all__ = ["chat_completions", "chat_options"]


def chat_options(data: ChatCompletionRequest, rt: Runtime) -> tuple[OcrOptions, list[str]]:
    """Engine options and the image URLs of a chat request."""
    if data.n != 1:
        raise ApiError(400, "only n=1 is supported", "invalid_request")
    user = next((m for m in reversed(data.messages) if m.role == "user"), None)
    if user is None:
        raise ApiError(400, "no user message", "invalid_request")
    parts = [] if user.content is None or isinstance(user.content, str) else user.content
    text = user.content if isinstance(user.content, str) else " ".join(
        p.text for p in parts if isinstance(p, TextPart)
    )
    urls = [p.image_url.url for p in parts if isinstance(p, ImageUrlPart)]
    if not urls:
        raise ApiError(400, "the last user message has no image_url part", "missing_image")

    return rt.engine_config.resolve(chat_request_options(data, text or "")), urls


async def _pages(rt: Runtime, urls: list[str]) -> list[Any]:
    budget = PageBudget(rt.settings.max_images)
    t0 = time.perf_counter()
    pages: list[Any] = []
    for url in urls:
        pages.extend(await rt.resolver.resolve_url_or_data(url, budget))
    rt.metrics.stage_seconds.observe(time.perf_counter() - t0, "input")
    return pages


def _usage(result: Any) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class EventStream(Stream):
    """A ``text/event-stream`` response. Litestar's ``Stream`` lets the handler's media type
    (JSON, from ``@post``) override its own, which served SSE as ``application/json``."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


def _sse(obj: Any) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


@post(
    "/chat/completions",
    status_code=200,
    summary="Chat completions (OpenAI-compatible OCR)",
    description=__doc__,
    operation_class=ChatOperation,
    responses=error_responses(*OCR_ERRORS),
)
async def chat_completions(
    data: ChatCompletionRequest, request: Request, rt: Runtime
) -> ChatCompletionResponse | Response[Any]:
    # `data` (typed for the OpenAPI schema) was converted by Litestar in lax mode ("8" → 8,
    # 0 → false); decode the body strictly instead, as /v1/ocr does, so a value of the wrong JSON
    # type is a 400 and not silently coerced. Litestar caches the body: this re-reads no bytes.
    data = decode_json_body(await request.body(), ChatCompletionRequest)
    options, urls = chat_options(data, rt)
    rt.holder.require()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    if not data.stream:
        async def work() -> ChatCompletionResponse:
            result = await rt.service.run(await _pages(rt, urls), options)
            return ChatCompletionResponse(
                id=completion_id,
                created=created,
                model=rt.model_name,
                choices=[ChatChoice(index=0, message=AssistantMessage(content=result.text),
                                    finish_reason=result.finish_reason)],
                usage=_usage(result),
            )

        return await until_disconnect(request.receive, work)

    async def open_stream() -> Any:
        return await rt.service.open_stream(await _pages(rt, urls), options)

    # Inputs, admission and submission happen before the response starts: their errors keep
    # their HTTP status (400/413/429...). From here on, errors can only travel in the stream.
    stream = await until_disconnect(request.receive, open_stream)
    include_usage = bool(data.stream_options and data.stream_options.include_usage)

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None,
              choices: bool = True) -> bytes:
        return _sse(ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=rt.model_name,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)] if choices else [],  # type: ignore[arg-type]
            usage=usage,
        ))

    async def events() -> AsyncIterator[bytes]:
        try:
            yield chunk(Delta(role="assistant", content=""))
            try:
                async for text in stream:
                    yield chunk(Delta(content=text))
            except ClientDisconnected:
                raise
            except Exception as exc:  # noqa: BLE001 - the status line is gone: report in-band
                yield error_event(to_api_error(exc))
                yield b"data: [DONE]\n\n"
                return
            result = stream.result
            yield chunk(Delta(), finish=result.finish_reason)
            if include_usage:
                yield chunk(Delta(), usage=_usage(result), choices=False)
            yield b"data: [DONE]\n\n"
        finally:
            stream.close()  # cancels the engine request if the client went away; frees the slot

    return EventStream(events(), media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
