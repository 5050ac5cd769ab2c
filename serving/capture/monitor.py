"""Live quality as the service keeps it: computed from the capture database for every served
version (on request, and every ``quality_interval_s`` for the metrics), with one log line when
a version turns degraded and one when it recovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from serving.capture.capture import Capture
from serving.capture.quality import (
    TIME_WINDOWS,
    DegradedWatch,
    QualityReport,
    live_quality,
    quality_over_time,
)
from serving.settings import Settings
from serving.store import Manifest

log = logging.getLogger("servewell.capture")


HISTORY_ROWS = 100_000
"""The newest labelled rows a quality history reads (a page view must stay cheap)."""


class QualityMonitor:
    def __init__(self, capture: Capture, settings: Settings) -> None:
        self.capture = capture
        self.last_n = settings.quality_last_n
        self.min_rows = settings.quality_min_rows
        self.tolerance = settings.quality_tolerance
        self.interval_s = settings.quality_interval_s
        self.watch = DegradedWatch()
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def history(
        self, manifest: Manifest, span_s: float, buckets: int, now: float | None = None
    ) -> list[dict[str, Any]]:
        """The primary metric over time (blocking: run it in a thread)."""
        now = time.time() if now is None else now
        self.capture.ensure_schema()
        rows = self.capture.store.rows(
            manifest.name,
            labelled_only=True,
            version=manifest.version,
            since=now - span_s,
            limit=HISTORY_ROWS,
        )
        return quality_over_time(manifest, rows, now=now, span_s=span_s, buckets=buckets)

    def report(self, manifest: Manifest, now: float | None = None) -> QualityReport:
        """Live quality of one version (blocking: database and metrics; run it in a thread)."""
        now = time.time() if now is None else now
        self.capture.ensure_schema()
        store, name, version = self.capture.store, manifest.name, manifest.version
        recent = store.rows(name, labelled_only=True, version=version, limit=self.last_n)
        since = now - max(TIME_WINDOWS.values())
        day = store.rows(name, labelled_only=True, version=version, since=since, limit=1_000_000)
        seen = {(r.request_id, r.row) for r in recent}
        rows = recent + [r for r in day if (r.request_id, r.row) not in seen]
        report = live_quality(
            manifest,
            rows,
            now=now,
            last_n=self.last_n,
            tolerance=self.tolerance,
            min_rows=self.min_rows,
        )
        self._note(report, now)
        return report

    def _note(self, report: QualityReport, now: float) -> None:
        with self._lock:  # the periodic computation and requests' ones run in threads at once
            changed = self.watch.changed(report, now)
        if changed:
            if report.degraded:
                log.warning(
                    "model %s v%d is degraded: %s", report.model, report.version, report.reason
                )
            else:
                log.info(
                    "model %s v%d is no longer degraded (%s)",
                    report.model,
                    report.version,
                    report.reason or f"{report.primary_metric} {report.live}",
                )

    def forget_others(self, served: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            for key in set(self.watch.latest()) - set(served):
                self.watch.forget(*key)

    @property
    def latest(self) -> dict[tuple[str, int], QualityReport]:
        """The latest report of each served version, for the metrics."""
        with self._lock:
            return self.watch.latest()

    # -- periodic ------------------------------------------------------------------------------

    def start(self, manifests: Callable[[], list[Manifest]]) -> None:
        """Every ``interval_s``: a report for each manifest ``manifests()`` gives (read on the
        event loop; computed in a thread)."""
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(manifests))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, manifests: Callable[[], list[Manifest]]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            served = manifests()
            try:
                await asyncio.to_thread(self._all, served)
            except Exception as exc:  # the database's problem; try again next time
                log.error("live quality: %s: %s", type(exc).__name__, exc)

    def _all(self, served: list[Manifest]) -> None:
        now = time.time()
        self.forget_others([(m.name, m.version) for m in served])
        for manifest in served:
            self.report(manifest, now)
