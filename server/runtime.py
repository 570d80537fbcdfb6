"""The objects every handler shares, injected as ``rt`` (one per app)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .inputs import InputResolver
from .metrics import Metrics
from .runner import EngineHolder, OcrService
from .settings import ServerSettings

__all__ = ["Runtime"]


@dataclass
class Runtime:
    settings: ServerSettings
    metrics: Metrics
    holder: EngineHolder
    service: OcrService
    resolver: InputResolver
    model_name: str
    started: int = field(default_factory=lambda: int(time.time()))
