"""Wires metrics, drift tracking, request ids and the access log into the app.

:class:`Observability` attaches observers to the data plane (rows of every prediction), to
each model version's batcher (batch sizes, queue waits, inference time) and to the lifecycle
(loads and load failures), and runs the background pass (drift counting, snapshots for other
server processes). The request edge (serving.http.edge) gives every request its id, and counts and
logs every response with the metrics and access log held here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from serving.capture.monitor import QualityMonitor
from serving.core.dataplane import DataPlane, ServedModel
from serving.core.errors import ErrorDetail
from serving.execution.executor import ModelKey
from serving.execution.runtime import FloatArray
from serving.observe.drift import DriftTracker
from serving.observe.drift_history import INTERVAL_S as DRIFT_INTERVAL_S
from serving.observe.drift_history import DriftHistory
from serving.observe.logs import AccessLog, resolve_format
from serving.observe.metrics import (
    Histogram,
    Metrics,
    MetricsCollector,
    SnapshotDir,
    SnapshotWriter,
)
from serving.observe.recent import RecentTraffic
from serving.settings import Settings
from serving.store import FeatureKind

log = logging.getLogger("servewell")

BACKGROUND_INTERVAL_S = 1.0


class _BatchObserver:
    """One model version's batcher observer: its histograms and drift state bound once.

    Drift is fed here, a batch at a time, rather than per request: one reference queued and
    one vectorised range check per batch (about 30 single-row requests at c=100)."""

    __slots__ = ("drift", "inference", "rows", "timed", "tracker", "wait", "warn")

    def __init__(
        self,
        metrics: Metrics,
        served: ServedModel,
        tracker: DriftTracker,
        warn: bool,
        timed: bool = True,
    ) -> None:
        name, version = served.key
        labels = (name, str(version))
        self.rows = metrics.batch_rows.histogram(labels)
        self.wait = metrics.queue_wait.histogram(labels)
        self.inference: Histogram = metrics.inference.histogram((name, served.runtime or "?"))
        self.tracker = tracker
        self.drift = tracker.track(served.manifest)
        self.warn = warn
        self.timed = timed
        """Inference time is observed for plain batches only: an explained batch takes many
        times longer and would make the model look slow."""

    def batch_sent(self, rows: FloatArray, waits: list[float]) -> list[int]:
        self.rows.observe(len(rows))
        self.wait.observe_all(waits)
        return self.tracker.sent(self.drift, rows, self.warn)

    def batch_done(self, seconds: float) -> None:
        if self.timed:
            self.inference.observe(seconds)

    def warnings(self, rows: FloatArray) -> tuple[str, ...]:
        return tuple(self.drift.out_of_range(rows))


class Observability:
    """Metrics and drift of one server process (both None when ``metrics`` is off)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics: Metrics | None = Metrics() if settings.metrics else None
        self.quality: QualityMonitor | None = None
        """Live quality, when capture is on (its reports become gauges)."""
        self.drift: DriftTracker | None = None
        self.shared: SnapshotDir | None = None
        if self.metrics is not None:
            self.drift = DriftTracker(settings.drift_window_rows, self._count_drift)
            if settings.metrics_dir is not None:
                self.shared = SnapshotDir(settings.metrics_dir)
        self.collector = (
            MetricsCollector(self.metrics, self.shared) if self.metrics is not None else None
        )
        self.recent = (
            RecentTraffic(self.metrics.predict_totals) if self.metrics is not None else None
        )
        """The last minute's requests per version (the overview and the UI)."""
        self.drift_history = DriftHistory() if self.metrics is not None else None
        self.access: AccessLog | None = None
        if settings.access_log and settings.log_level in ("info", "debug"):
            self.access = AccessLog(resolve_format(settings.log_format))
        self.warn = settings.input_warnings
        self._task: asyncio.Task[None] | None = None
        self._drift_task: asyncio.Task[None] | None = None
        self._dataplane: DataPlane | None = None

    # -- wiring -----------------------------------------------------------------------------

    def start(self, dataplane: DataPlane, startup_s: float) -> None:
        """Attach to a started data plane; start the access log and the background pass."""
        self._dataplane = dataplane
        if self.access is not None:
            self.access.start()
        metrics = self.metrics
        if metrics is None:
            return
        dataplane.refusal_observer = self._count_unseen
        for (name, version), served in dataplane.models.items():
            if served.state.value == "ready":
                metrics.load_seconds.values[(name, str(version))] = startup_s
            else:
                metrics.load_failures.inc((name,))
        for name, _ in dataplane.unreadable:
            metrics.load_failures.inc((name,))
        for name in dataplane.broken_names:
            metrics.load_failures.inc((name,))
        metrics.refreshers.append(self._refresh)
        if self.recent is not None:  # the zero every later figure counts from
            self.recent.sample(time.monotonic())
        self.follow()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._background())
        if self.drift_history is not None:
            # A task of its own: its reports run in threads, and a busy thread pool must not
            # hold up the per-second pass (drift rows, snapshots, recent traffic).
            self._drift_task = loop.create_task(self._drift_points())

    def follow(self) -> None:
        """Observe the batchers of newly served versions; forget swapped-out ones."""
        dataplane = self._dataplane
        if self.metrics is None or dataplane is None:
            return
        ready = dataplane.ready_models()
        assert self.drift is not None  # made with the metrics
        for served in ready:
            for batcher in served.batchers:  # explained rows are inputs too: drift, warnings
                if batcher.observer is None:
                    timed = batcher is served.batcher
                    batcher.observer = _BatchObserver(
                        self.metrics, served, self.drift, self.warn, timed
                    )
        self.drift.forget({s.key for s in ready})

    def model_loaded(self, key: ModelKey, seconds: float, error: str | None) -> None:
        """Lifecycle listener: one load attempt of a version during a hot swap."""
        if self.metrics is None:
            return
        if error is None:
            self.metrics.load_seconds.values[(key[0], str(key[1]))] = seconds
        else:
            self.metrics.load_failures.inc((key[0],))

    async def stop(self) -> None:
        for task in (self._task, self._drift_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._drift_task = None
        if self.access is not None:
            self.access.stop()
        if self._dataplane is not None:
            self._dataplane.refusal_observer = None
            self._dataplane = None

    # -- hot path ---------------------------------------------------------------------------

    def _count_unseen(self, served: ServedModel, details: list[ErrorDetail]) -> None:
        """Count values of categorical features that are not a training category (the schema
        refuses them; the count says which features clients send new values for)."""
        assert self.metrics is not None
        manifest = served.manifest
        categorical = {f.name for f in manifest.features if f.kind == FeatureKind.CATEGORICAL}
        if not categorical:
            return
        names = manifest.feature_names
        for detail in details:
            if detail.type != "literal_error" or len(detail.loc) < 3:
                continue
            where = detail.loc[2]
            feature = names[where] if isinstance(where, int) and where < len(names) else where
            if feature in categorical:
                self.metrics.unseen_categories.inc((manifest.name, str(feature)))

    # -- background -------------------------------------------------------------------------

    async def _background(self) -> None:
        writer = (
            SnapshotWriter(self.metrics, self.shared)
            if self.metrics is not None and self.shared is not None
            else None
        )
        while True:
            await asyncio.sleep(BACKGROUND_INTERVAL_S)
            try:
                self.process_drift()
                if self.recent is not None:
                    self.recent.sample(time.monotonic())
                if writer is not None:
                    writer.tick()
            except Exception:  # never let metrics take the service down
                log.exception("metrics background pass failed")

    async def _drift_points(self) -> None:
        """Every drift-history interval, one drift report per production version."""
        while True:
            history, tracker, dataplane = self.drift_history, self.drift, self._dataplane
            if history is None or tracker is None or dataplane is None:
                return
            try:
                self.process_drift()
                keys = list(dataplane.default_version.items())
                history.forget(set(keys))
                for key in keys:
                    compute = tracker.report(key)  # the window's copy, taken in the loop
                    if compute is not None:
                        history.add(*key, await asyncio.to_thread(compute))
            except Exception:  # never let drift history take the service down
                log.exception("drift history pass failed")
            await asyncio.sleep(DRIFT_INTERVAL_S)

    def process_drift(self) -> None:
        """Count and window the rows queued since the last pass (runs in the event loop:
        a few vectorised operations per model version)."""
        if self.drift is not None:
            self.drift.process(self.drift.take())

    def _count_drift(self, key: ModelKey, names: list[str], counts: Any, rows: int) -> None:
        assert self.metrics is not None
        name = key[0]
        self.metrics.rows_checked.inc((name,), rows)
        for i in np.flatnonzero(counts):
            self.metrics.out_of_range.inc((name, names[i]), int(counts[i]))

    @staticmethod
    def _quality_gauges(metrics: Metrics, monitor: QualityMonitor) -> None:
        values: dict[tuple[str, ...], float] = {}
        rows: dict[tuple[str, ...], float] = {}
        degraded: dict[tuple[str, ...], float] = {}
        for (name, version), report in list(monitor.latest.items()):
            v = str(version)
            degraded[(name, v)] = float(report.degraded)
            for window, quality in report.windows.items():
                rows[(name, v, window)] = float(quality.rows)
                for metric, value in quality.metrics.items():
                    if value is not None:
                        values[(name, v, metric, window)] = value
        metrics.live_metric.values = values
        metrics.live_rows.values = rows
        metrics.live_degraded.values = degraded

    @staticmethod
    def _traffic_gauges(metrics: Metrics, dataplane: DataPlane) -> None:
        weights: dict[tuple[str, ...], float] = {}
        shadow: dict[tuple[str, ...], float] = {}
        agreement: dict[tuple[str, ...], float] = {}
        for name, route in list(dataplane.registry.routes.items()):
            policy = route.policy
            for version, share in policy.weights:
                role = "production" if version == policy.production else "candidate"
                weights[(name, str(version), role)] = share
            if policy.shadow is None:
                continue
            v = str(policy.shadow)
            weights[(name, v, "shadow")] = policy.sample
            stats = route.shadow_stats
            stats.fold()
            answered = stats.requests - stats.errors
            for outcome, count in (
                ("answered", answered),
                ("failed", stats.errors),
                ("skipped", stats.skipped),
            ):
                shadow[(name, v, outcome)] = float(count)
            if stats.rows:
                agreement[(name, v)] = stats.equal / stats.rows
        metrics.traffic_weight.values = weights
        metrics.shadow_requests.values = shadow
        metrics.shadow_agreement.values = agreement

    def _refresh(self) -> None:
        """Gauges mirroring live state, read at scrape (and snapshot) time."""
        metrics = self.metrics
        dataplane = self._dataplane
        if metrics is None or dataplane is None:
            return
        self.process_drift()  # a scrape sees every row answered before it
        depth: dict[tuple[str, ...], float] = {}
        info: dict[tuple[str, ...], float] = {}
        for served in dataplane.ready_models():
            name, version = served.key
            depth[(name, str(version))] = float(sum(b.queued_rows for b in served.batchers))
            default = "true" if dataplane.default_version.get(name) == version else "false"
            info[(name, str(version), served.runtime or "unknown", default)] = 1.0
        metrics.queue_depth.values = depth
        metrics.model_info.values = info
        capture = dataplane.capture
        if capture is not None:
            writer = capture.writer
            metrics.capture_written.values[()] = float(writer.written)
            metrics.capture_dropped.values[()] = float(writer.dropped)
            metrics.capture_queue.values[()] = float(writer.queued_rows)
        if self.quality is not None:
            self._quality_gauges(metrics, self.quality)
        self._traffic_gauges(metrics, dataplane)
        if dataplane.executor is not None:
            status = dataplane.executor.status()
            metrics.workers.values[()] = float(status.workers)
            if status.restarts is not None:
                metrics.restarts.values[()] = float(status.restarts)
