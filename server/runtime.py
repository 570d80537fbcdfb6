"""The objects every handler shares, injected as ``rt`` (one per app)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gotocr_fast import EngineConfig

from .inputs import InputResolver
from .metrics import Metrics
from .runner import EngineHolder, OcrService
from .settings import ServerSettings

__all__ = ["Runtime"]


@dataclass
class Runtime:
    settings: ServerSettings
    engine_config: EngineConfig
    """The engine's configuration (its request defaults and limits apply before any input is read)."""
    metrics: Metrics
    holder: EngineHolder
    service: OcrService
    resolver: InputResolver
    model_name: str
    started: int = field(default_factory=lambda: int(time.time()))
