"""Prometheus metrics, counted in plain Python and turned into metric families when scraped.

prometheus-client's metric objects take a lock on every ``inc``/``observe`` and, in its
multiprocess mode, write the value to a memory-mapped file; measured, that is 15 to 24 µs of
the event loop per predict request against about 1 µs here (docs/design.md, "Metrics across
processes"). So the hot path only adds to dicts and lists of this process (:class:`Metrics`),
and :class:`MetricsCollector` builds the families for prometheus-client's exposition at scrape
time. Gauges that mirror live state (queue depth, workers, served versions) are read then too.

The parts, one concept each: the metric definitions and the values they count into
(serving.observe.families), the snapshots several server processes share
(serving.observe.snapshots), and the scrape-time merge and export (serving.observe.collector).
This module holds one process's :class:`Metrics` and names all of them for importers.

Several server processes (``SERVEWELL_WORKERS`` > 1): each one writes a snapshot of its counts
to a shared directory every second (:class:`SnapshotDir`), and the process that answers a scrape
merges its own live counts with the latest snapshots of the others. Counters and histograms of
processes that have exited stay counted (as Prometheus counters must); their gauges do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.observe.collector import MetricsCollector
from serving.observe.families import (
    DEFINITIONS,
    LATENCY_BUCKETS,
    ROWS_BUCKETS,
    Family,
    Histogram,
    Labels,
)
from serving.observe.snapshots import SnapshotDir, SnapshotWriter

__all__ = [
    "LATENCY_BUCKETS",
    "ROWS_BUCKETS",
    "Family",
    "Histogram",
    "Labels",
    "Metrics",
    "MetricsCollector",
    "SnapshotDir",
    "SnapshotWriter",
]


class Metrics:
    """Every metric of one server process; see the module docstring.

    One attribute per row of :data:`~serving.observe.families.DEFINITIONS`, named by it."""

    requests: Family
    latency: Family
    in_flight: Family
    idle_poll: Family
    batch_rows: Family
    queue_wait: Family
    queue_depth: Family
    workers: Family
    restarts: Family
    inference: Family
    load_seconds: Family
    load_failures: Family
    model_info: Family
    out_of_range: Family
    rows_checked: Family
    unseen_categories: Family
    capture_written: Family
    capture_dropped: Family
    live_metric: Family
    live_rows: Family
    live_degraded: Family
    capture_queue: Family
    traffic_weight: Family
    shadow_requests: Family
    shadow_agreement: Family

    def __init__(self) -> None:
        self.families = [Family(definition) for definition in DEFINITIONS]
        """In the order /metrics lists them."""
        for family in self.families:
            setattr(self, family.definition.attribute, family)
        self.refreshers: list[Callable[[], None]] = []
        """Called before every snapshot: set gauges that mirror live state."""
        self._requests: dict[tuple[str, str, str, int], Histogram] = {}
        """Latency per model, version, endpoint and status: one lookup per request; the
        request counter and the status-free histogram are derived from it at scrape time."""
        self.in_flight_now = 0

    # -- hot path ---------------------------------------------------------------------------

    def request_done(
        self, model: str, version: str, endpoint: str, status: int, seconds: float
    ) -> None:
        key = (model, version, endpoint, status)
        hist = self._requests.get(key)
        if hist is None:
            hist = self._requests[key] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def predict_totals(self) -> dict[tuple[str, str], tuple[int, int, list[int]]]:
        """Per model version since the start: predict requests, 5xx answers and latency
        bucket counts (serving.observe.recent samples these)."""
        out: dict[tuple[str, str], tuple[int, int, list[int]]] = {}
        for (model, version, _, status), hist in list(self._requests.items()):
            if not model:  # not a predict request
                continue
            n, errors, buckets = out.get((model, version), (0, 0, [0] * len(hist.counts)))
            count = sum(hist.counts)
            merged = [a + b for a, b in zip(buckets, hist.counts, strict=True)]
            out[(model, version)] = (n + count, errors + (count if status >= 500 else 0), merged)
        return out

    # -- scrape -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every family's current values, as plain data (also what other processes read)."""
        self.in_flight.values[()] = float(self.in_flight_now)
        requests: dict[Labels, Any] = {}
        latency: dict[Labels, Histogram] = {}
        for (model, version, endpoint, status), hist in list(self._requests.items()):
            requests[(model, version, endpoint, str(status))] = float(sum(hist.counts))
            merged = latency.get((model, version, endpoint))
            if merged is None:
                merged = latency[(model, version, endpoint)] = Histogram(LATENCY_BUCKETS)
            merged.counts = [a + b for a, b in zip(merged.counts, hist.counts, strict=True)]
            merged.sum += hist.sum
        self.requests.values = requests
        self.latency.values = latency
        for refresh in self.refreshers:
            refresh()
        return {f.name: f.snapshot() for f in self.families}
