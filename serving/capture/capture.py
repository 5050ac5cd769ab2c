"""Capture as the service runs it: which requests are kept, the writer, retention.

:meth:`Capture.wants` and :meth:`Capture.put` are what the request path calls once a request is
answered (see serving.core.predictor); everything after runs on the writer's thread and in the
writer process (serving.capture.process), which also applies retention. A database that
cannot be reached at start-up does not stop the service: the schema is created on the first
write that reaches it, and until then batches are dropped and counted like any other failure.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from serving.capture.feedback import Kept, Outcome, join
from serving.capture.policy import CapturePolicy
from serving.capture.records import Captured, CapturedRow
from serving.capture.writer import CaptureWriter
from serving.execution.runtime import FloatArray, Prediction
from serving.settings import Settings
from serving.store import Manifest

if TYPE_CHECKING:
    from sqlalchemy import Engine

# The database modules (SQLAlchemy: ~23 MB in each server process) are imported when capture
# is on, in Capture and from_settings, not when the service imports this module.

log = logging.getLogger("servewell.capture")

FLUSH_BEFORE_FEEDBACK_S = 2.0
"""Longest wait for queued predictions to be written before labels are joined to them."""


def from_settings(settings: Settings) -> Capture | None:
    """The service's capture, started; None when ``SERVEWELL_CAPTURE`` is ``none``."""
    models = settings.capture_models
    if models is not None and not models:
        return None
    days = settings.capture_max_age_days
    policy = CapturePolicy(
        models=models,
        sample=settings.capture_sample,
        queue_rows=settings.capture_queue_rows,
        max_age_s=None if days is None else days * 86_400.0,
        max_rows_per_model=settings.capture_max_rows_per_model,
    )
    from serving.capture.database import default_url

    capture = Capture(settings.capture_url or default_url(settings.store), policy)
    capture.start()
    return capture


class Capture:
    def __init__(self, url: str, policy: CapturePolicy) -> None:
        from serving.capture.database import open_engine
        from serving.capture.process import WriterProcess
        from serving.capture.store import CaptureStore

        self.policy = policy
        self.engine: Engine = open_engine(url)
        self.store = CaptureStore(self.engine)
        self.process = WriterProcess(url, policy)
        self.writer = CaptureWriter(self.process, max_rows=policy.queue_rows)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._random = random.random

    def start(self) -> None:
        try:
            self.ensure_schema()
        except Exception as exc:  # the database may come later; predictions go on
            log.error("capture: the database is not usable yet (%s: %s)", type(exc).__name__, exc)
        self.process.start()
        self.writer.start()

    def close(self, timeout_s: float) -> None:
        started = time.monotonic()
        self.writer.close(timeout_s)
        self.process.close(max(0.1, timeout_s - (time.monotonic() - started)))
        self.engine.dispose()

    def ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                from serving.capture.database import ensure_schema

                ensure_schema(self.engine)
                self._schema_ready = True

    def wants(self, name: str) -> bool:
        """Whether to keep a request of model ``name`` (drawn once per request: a shadowed
        request's two answers are kept together or not at all)."""
        policy = self.policy
        if not policy.wants(name):
            return False
        return policy.sample >= 1.0 or self._random() < policy.sample

    def put(
        self,
        manifest: Manifest,
        request_id: str,
        latency_s: float,
        transport: str,
        rows: FloatArray,
        prediction: Prediction,
        class_keys: Sequence[str],
    ) -> None:
        """Queue one answered request that :meth:`wants` kept (never blocks, never raises)."""
        try:
            record = Captured(
                manifest,
                request_id,
                time.time(),
                latency_s * 1000.0,
                transport,
                rows,
                prediction,
                class_keys,
            )
            self.writer.offer(record)
        except Exception:  # capture's own fault must not become the request's
            self.writer.dropped += len(rows)
            log.exception("capture: a request could not be queued")

    def read(
        self,
        model: str,
        *,
        limit: int,
        since: float | None,
        labelled_only: bool,
        version: int | None = None,
    ) -> list[CapturedRow]:
        """Captured rows, newest first, after writing what is queued (blocking)."""
        self.writer.flush(FLUSH_BEFORE_FEEDBACK_S)
        self.ensure_schema()
        return self.store.rows(
            model, limit=limit, since=since, labelled_only=labelled_only, version=version
        )

    def feedback(self, model: str, kept: Kept, now: float) -> list[Outcome]:
        """Join labels to captured predictions (blocking: run it off the event loop). What
        is still queued is written first, so a label may follow its prediction at once."""
        self.writer.flush(FLUSH_BEFORE_FEEDBACK_S)
        self.ensure_schema()
        return join(model, kept, self.store, now)
