"""Prometheus metrics, counted in plain Python and turned into metric families when scraped.

prometheus-client's metric objects take a lock on every ``inc``/``observe`` (and in its
multiprocess mode write to a memory-mapped file); a predict request would pay for about ten
of them. Here the hot path only adds to dicts and lists of this process (:class:`Metrics`), and
:class:`MetricsCollector` builds the families for prometheus-client's exposition at scrape time.
Gauges that mirror live state (queue depth, workers, served versions) are read then too.

Several server processes (``SERVEWELL_WORKERS`` > 1): each one writes a snapshot of its counts
to a shared directory every second (:class:`SnapshotDir`), and the process that answers a scrape
merges its own live counts with the latest snapshots of the others. Counters and histograms of
processes that have exited stay counted (as Prometheus counters must); their gauges do not.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

Labels = tuple[str, ...]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: requests, queue waits and batches of small models take well under a millisecond."""
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    """Bucket counts (not cumulative) and the sum of one labelled histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: list[float]) -> None:
        """``observe`` each value (one call for a batch's queue waits)."""
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self.sum += sum(values)


class Family:
    """One metric with its labelled values (floats, or Histograms)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        kind: Literal["counter", "gauge", "histogram"],
        labels: Sequence[str],
        *,
        bounds: Sequence[float] = (),
        merge: Literal["sum", "max"] = "sum",
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.kind = kind
        self.labels = tuple(labels)
        self.bounds = tuple(bounds)
        self.merge = merge
        """How a gauge adds up over processes (counters and histograms always sum)."""
        self.values: dict[Labels, Any] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def histogram(self, labels: Labels) -> Histogram:
        """The histogram of these label values (created on first use; keep it to observe)."""
        child = self.values.get(labels)
        if child is None:
            child = self.values[labels] = Histogram(self.bounds)
        return child

    def snapshot(self) -> dict[str, Any]:
        if self.kind == "histogram":
            samples = [[list(k), list(h.counts), h.sum] for k, h in list(self.values.items())]
        else:
            samples = [[list(k), v] for k, v in list(self.values.items())]
        return {"kind": self.kind, "samples": samples}


class Metrics:
    """Every metric of one server process; see the module docstring."""

    def __init__(self) -> None:
        mv = ("model", "version")
        self.requests = Family(
            "servewell_requests",
            "HTTP requests answered, by model, version, endpoint (path template) and status.",
            "counter",
            (*mv, "endpoint", "status"),
        )
        self.latency = Family(
            "servewell_request_duration_seconds",
            "Time from receiving a request to sending its response.",
            "histogram",
            (*mv, "endpoint"),
            bounds=LATENCY_BUCKETS,
        )
        self.in_flight = Family(
            "servewell_requests_in_flight", "Requests being answered now.", "gauge", ()
        )
        self.batch_rows = Family(
            "servewell_batch_rows",
            "Rows per batch sent to the inference executor.",
            "histogram",
            mv,
            bounds=ROWS_BUCKETS,
        )
        self.queue_wait = Family(
            "servewell_batch_queue_wait_seconds",
            "Time a request's rows waited in the micro-batcher before their batch was sent.",
            "histogram",
            mv,
            bounds=LATENCY_BUCKETS,
        )
        self.queue_depth = Family(
            "servewell_batch_queue_rows",
            "Rows waiting in the micro-batcher for a batch (per model version).",
            "gauge",
            mv,
        )
        self.workers = Family(
            "servewell_inference_workers",
            "Live inference worker processes (1 for inline inference), over all server processes.",
            "gauge",
            (),
        )
        self.restarts = Family(
            "servewell_inference_worker_restarts",
            "Inference workers that died and were replaced.",
            "counter",
            (),
        )
        self.inference = Family(
            "servewell_inference_seconds",
            "Per batch: time from sending it to the executor until its result is back "
            "(the model's compute plus the transfer to and from the worker).",
            "histogram",
            ("model", "runtime"),
            bounds=LATENCY_BUCKETS,
        )
        self.load_seconds = Family(
            "servewell_model_load_seconds",
            "Seconds the last load of a model version took (verification and loading into "
            "every executor process; at startup models load together, so each shows the total).",
            "gauge",
            mv,
            merge="max",
        )
        self.load_failures = Family(
            "servewell_model_load_failures",
            "Model versions that could not be loaded (at startup or in a hot swap).",
            "counter",
            ("model",),
        )
        self.model_info = Family(
            "servewell_model_info",
            "1 for every served model version, with its runtime and whether it is the "
            "default (production) version of its model.",
            "gauge",
            (*mv, "runtime", "default"),
            merge="max",
        )
        self.out_of_range = Family(
            "servewell_input_out_of_range",
            "Input values outside the feature's training [min, max], by model and feature.",
            "counter",
            ("model", "feature"),
        )
        self.rows_checked = Family(
            "servewell_input_rows_checked",
            "Rows checked against the training ranges (the denominator of the above).",
            "counter",
            ("model",),
        )
        self.unseen_categories = Family(
            "servewell_input_unseen_category",
            "Categorical values not seen in training, by model and feature (such rows are "
            "refused with 422: the models accept training categories only).",
            "counter",
            ("model", "feature"),
        )
        self.families = [
            self.requests,
            self.latency,
            self.in_flight,
            self.batch_rows,
            self.queue_wait,
            self.queue_depth,
            self.workers,
            self.restarts,
            self.inference,
            self.load_seconds,
            self.load_failures,
            self.model_info,
            self.out_of_range,
            self.rows_checked,
            self.unseen_categories,
        ]
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


class SnapshotDir:
    """Per-process snapshot files in a directory shared by the server processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()

    def write(self, snapshot: dict[str, Any]) -> None:
        data = orjson.dumps({"pid": self.pid, "families": snapshot})
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path / f"{self.pid}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def others(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        """(alive, families) of every other process that wrote a snapshot."""
        for file in self.path.glob("*.json"):
            if not file.stem.isdigit() or int(file.stem) == self.pid:
                continue
            try:
                data = orjson.loads(file.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # replaced or removed meanwhile
            yield _alive(int(file.stem)), data["families"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsCollector:
    """prometheus-client collector: this process's metrics, merged with the other server
    processes' snapshots when there are several."""

    def __init__(self, metrics: Metrics, shared: SnapshotDir | None = None) -> None:
        self.metrics = metrics
        self.shared = shared

    def collect(self) -> Iterable[Metric]:
        own = self.metrics.snapshot()
        merged: dict[str, dict[tuple[Any, ...], Any]] = {}
        sources: list[tuple[bool, dict[str, Any]]] = [(True, own)]
        if self.shared is not None:
            with contextlib.suppress(OSError):
                self.shared.write(own)
            sources += list(self.shared.others())
        by_name = {f.name: f for f in self.metrics.families}
        for alive, families in sources:
            for name, data in families.items():
                family = by_name.get(name)
                if family is None or (family.kind == "gauge" and not alive):
                    continue
                _merge(family, merged.setdefault(name, {}), data["samples"])
        for family in self.metrics.families:
            yield _export(family, merged.get(family.name, {}))


def _merge(family: Family, into: dict[tuple[Any, ...], Any], samples: list[Any]) -> None:
    for sample in samples:
        key = tuple(str(v) for v in sample[0])
        if family.kind == "histogram":
            counts, total = sample[1], sample[2]
            known = into.get(key)
            if known is None:
                into[key] = [list(counts), total]
            else:
                known[0] = [a + b for a, b in zip(known[0], counts, strict=True)]
                known[1] += total
        elif family.merge == "max" and family.kind == "gauge":
            into[key] = max(into.get(key, sample[1]), sample[1])
        else:
            into[key] = into.get(key, 0.0) + sample[1]


def _export(family: Family, values: dict[tuple[Any, ...], Any]) -> Metric:
    labels = list(family.labels)
    if family.kind == "counter":
        counter = CounterMetricFamily(family.name, family.documentation, labels=labels)
        for key, value in sorted(values.items()):
            counter.add_metric(list(key), value)
        return counter
    if family.kind == "gauge":
        gauge = GaugeMetricFamily(family.name, family.documentation, labels=labels)
        for key, value in sorted(values.items()):
            gauge.add_metric(list(key), value)
        return gauge
    hist = HistogramMetricFamily(family.name, family.documentation, labels=labels)
    for key, (counts, total) in sorted(values.items()):
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip([*family.bounds, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        hist.add_metric(list(key), buckets, total)
    return hist


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class SnapshotWriter:
    """Writes this process's snapshot to the shared directory every ``interval`` seconds."""

    def __init__(self, metrics: Metrics, shared: SnapshotDir, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.shared = shared
        self.interval = interval
        self.last = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            with contextlib.suppress(OSError):
                self.shared.write(self.metrics.snapshot())
