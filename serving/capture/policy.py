"""What is captured and how long it is kept (``SERVEWELL_CAPTURE*`` settings)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class CapturePolicy:
    """What is captured and kept."""

    models: Collection[str] | None
    """Names whose requests are captured; None: every model."""
    sample: float = 1.0
    """Share of requests captured (each request is kept whole or not at all)."""
    queue_rows: int = 100_000
    max_age_s: float | None = 30 * 86_400.0
    max_rows_per_model: int | None = 1_000_000
    prune_interval_s: float = 3600.0

    def wants(self, name: str) -> bool:
        return self.models is None or name in self.models
