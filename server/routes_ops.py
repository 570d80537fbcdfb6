"""Operational endpoints: ``/health``, ``/version``, ``/metrics``, ``/v1/models``."""

from __future__ import annotations

from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec

from gotocr_fast import __version__

from .metrics import CONTENT_TYPE
from .openapi import error_responses
from .runner import READY
from .runtime import Runtime
from .schemas import Health, ModelCard, ModelList, VersionInfo

__all__ = ["health", "version", "metrics", "list_models"]


@get("/health", summary="Readiness", description="200 once the model is loaded; 503 while it loads or if it failed.",
     responses={503: ResponseSpec(data_container=Health, generate_examples=False,
                                  description="Not ready: loading, failed or stopping")})
async def health(rt: Runtime) -> Response[Health]:
    holder = rt.holder
    body = Health(status=holder.state, model=rt.model_name, message=holder.error)  # type: ignore[arg-type]
    headers = {} if holder.state == READY else {"Retry-After": "5"}
    return Response(body, status_code=200 if holder.state == READY else 503, headers=headers)


@get("/version", summary="Server version")
async def version(rt: Runtime) -> VersionInfo:
    return VersionInfo(version=__version__, model=rt.model_name)


@get("/metrics", media_type=MediaType.TEXT, summary="Prometheus metrics",
     description="Text exposition format 0.0.4.")
async def metrics(rt: Runtime) -> Response[str]:
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE)


@get("/models", summary="List models (OpenAI)", responses=error_responses(401))
async def list_models(rt: Runtime) -> ModelList:
    return ModelList(data=[ModelCard(id=rt.model_name, created=rt.started)])
