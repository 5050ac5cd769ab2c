"""What the data plane needs from whatever runs the models: the :class:`Executor` protocol.

Two implementations: :class:`serving.execution.pool.InferencePool` (worker processes) and
:class:`serving.execution.inline.InlineExecutor` (one thread of the server). Readiness and
the metrics ask an executor through :meth:`Executor.status`, never by testing its type, so a
third kind (e.g. a remote one) needs no change above this layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.core.errors import (
    EXPLAIN_FAILED,
    PREDICT_FAILED,
    ExplanationsUnavailableError,
    InferenceError,
    ServingError,
)
from serving.execution.runtime import FloatArray, Prediction, RuntimeName

ModelKey = tuple[str, int]
"""A model version: (name, version)."""

log = logging.getLogger("servewell.executor")


def failure_error(reason: str, unexplained: bool) -> ServingError:
    """What a batch that failed in the model becomes: the cause is logged (or carried as the
    error's detail), never sent to the client."""
    if unexplained:
        log.error("explanations unavailable: %s", reason)
        return ExplanationsUnavailableError(EXPLAIN_FAILED)
    return InferenceError(PREDICT_FAILED, detail=reason)


@dataclass(frozen=True, slots=True)
class ExecutorStatus:
    """A snapshot of an executor's health, for readiness and the metrics."""

    up: bool
    size: int
    workers: int
    """Workers that exist now (alive or loading)."""
    workers_ready: int
    """Workers alive and holding the models: fewer than ``size`` while one is replaced."""
    replacing: int
    restarts: int | None
    """Workers replaced after they died or hung; None when this executor never replaces any
    (the restarts metric is then left out rather than reported as a flat zero)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """What :meth:`Executor.open` made of the versions it was asked to load."""

    runtimes: dict[ModelKey, RuntimeName]
    failed: dict[ModelKey, str]


class Executor(Protocol):
    size: int

    @property
    def up(self) -> bool: ...

    async def open(self, keys: Sequence[ModelKey]) -> Opened:
        """Start, loading ``keys``; a version that fails is reported, not raised."""
        ...

    def status(self) -> ExecutorStatus: ...

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool, explain: bool = False
    ) -> asyncio.Future[Prediction]:
        """Run one batch; ``explain``: with its rows' feature contributions."""
        ...

    async def load_model(self, key: ModelKey) -> RuntimeName: ...

    async def unload_model(self, key: ModelKey) -> None: ...

    def close(self) -> None: ...
