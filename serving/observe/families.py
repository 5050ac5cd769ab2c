"""The metrics servewell exposes, and the plain-Python values they count into.

Every metric is one row of :data:`DEFINITIONS` (name, help text, kind, labels, buckets, how a
gauge adds up over processes); :class:`~serving.observe.metrics.Metrics` builds a
:class:`Family` from each row. A family holds its labelled values as floats, or as
:class:`Histogram` objects that the hot path keeps and observes into without a lookup.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Labels = tuple[str, ...]
Kind = Literal["counter", "gauge", "histogram"]

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


@dataclass(frozen=True)
class Definition:
    """What one metric is: its name (without ``_total``), help text, kind and labels."""

    attribute: str
    """The :class:`~serving.observe.metrics.Metrics` attribute holding its family."""
    name: str
    documentation: str
    kind: Kind
    labels: Labels
    bounds: tuple[float, ...] = ()
    """Histogram bucket upper bounds (``+Inf`` is implied)."""
    merge: Literal["sum", "max"] = "sum"
    """How a gauge adds up over processes (counters and histograms always sum)."""


class Family:
    """One metric with its labelled values (floats, or Histograms)."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.name = definition.name
        self.documentation = definition.documentation
        self.kind = definition.kind
        self.labels = definition.labels
        self.bounds = definition.bounds
        self.merge = definition.merge
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


_MV = ("model", "version")

DEFINITIONS: tuple[Definition, ...] = (
    Definition(
        "requests",
        "servewell_requests",
        "HTTP requests answered, by model, version, endpoint (path template) and status.",
        "counter",
        (*_MV, "endpoint", "status"),
    ),
    Definition(
        "latency",
        "servewell_request_duration_seconds",
        "Time from receiving a request to sending its response.",
        "histogram",
        (*_MV, "endpoint"),
        bounds=LATENCY_BUCKETS,
    ),
    Definition(
        "in_flight", "servewell_requests_in_flight", "Requests being answered now.", "gauge", ()
    ),
    Definition(
        "idle_poll",
        "servewell_idle_poll_seconds",
        "Time the event loop kept polling after its last request in flight, not sleeping.",
        "counter",
        (),
    ),
    Definition(
        "batch_rows",
        "servewell_batch_rows",
        "Rows per batch sent to the inference executor.",
        "histogram",
        _MV,
        bounds=ROWS_BUCKETS,
    ),
    Definition(
        "queue_wait",
        "servewell_batch_queue_wait_seconds",
        "Time a request's rows waited in the micro-batcher before their batch was sent.",
        "histogram",
        _MV,
        bounds=LATENCY_BUCKETS,
    ),
    Definition(
        "queue_depth",
        "servewell_batch_queue_rows",
        "Rows waiting in the micro-batcher for a batch (per model version).",
        "gauge",
        _MV,
    ),
    Definition(
        "workers",
        "servewell_inference_workers",
        "Live inference worker processes (1 for inline inference), over all server processes.",
        "gauge",
        (),
    ),
    Definition(
        "restarts",
        "servewell_inference_worker_restarts",
        "Inference workers that died and were replaced.",
        "counter",
        (),
    ),
    Definition(
        "inference",
        "servewell_inference_seconds",
        "Per batch: time from sending it to the executor until its result is back "
        "(the model's compute plus the transfer to and from the worker).",
        "histogram",
        ("model", "runtime"),
        bounds=LATENCY_BUCKETS,
    ),
    Definition(
        "load_seconds",
        "servewell_model_load_seconds",
        "Seconds the last load of a model version took (verification and loading into "
        "every executor process; at startup models load together, so each shows the total).",
        "gauge",
        _MV,
        merge="max",
    ),
    Definition(
        "load_failures",
        "servewell_model_load_failures",
        "Model versions that could not be loaded (at startup or in a hot swap).",
        "counter",
        ("model",),
    ),
    Definition(
        "model_info",
        "servewell_model_info",
        "1 for every served model version, with its runtime and whether it is the "
        "default (production) version of its model.",
        "gauge",
        (*_MV, "runtime", "default"),
        merge="max",
    ),
    Definition(
        "out_of_range",
        "servewell_input_out_of_range",
        "Input values outside the feature's training [min, max], by model and feature.",
        "counter",
        ("model", "feature"),
    ),
    Definition(
        "rows_checked",
        "servewell_input_rows_checked",
        "Rows checked against the training ranges (the denominator of the above).",
        "counter",
        ("model",),
    ),
    Definition(
        "unseen_categories",
        "servewell_input_unseen_category",
        "Categorical values not seen in training, by model and feature (such rows are "
        "refused with 422: the models accept training categories only).",
        "counter",
        ("model", "feature"),
    ),
    Definition(
        "capture_written",
        "servewell_capture_rows",
        "Captured prediction rows written to the capture database.",
        "counter",
        (),
    ),
    Definition(
        "capture_dropped",
        "servewell_capture_dropped",
        "Captured prediction rows dropped: the queue was full, or the database refused their "
        "batch (the log says why, at most once a minute).",
        "counter",
        (),
    ),
    Definition(
        "live_metric",
        "servewell_live_metric",
        "Live quality from feedback labels: each metric of a served version over a window "
        "(last_n labelled rows, 1h, 24h), as of its last computation.",
        "gauge",
        (*_MV, "metric", "window"),
        merge="max",
    ),
    Definition(
        "live_rows",
        "servewell_live_labelled_rows",
        "Labelled rows each live quality window rests on.",
        "gauge",
        (*_MV, "window"),
        merge="max",
    ),
    Definition(
        "live_degraded",
        "servewell_live_degraded",
        "1 when a version's live primary metric is worse than its holdout metric by more than "
        "SERVEWELL_QUALITY_TOLERANCE, with enough labelled rows; else 0.",
        "gauge",
        _MV,
        merge="max",
    ),
    Definition(
        "capture_queue",
        "servewell_capture_queue_rows",
        "Captured rows waiting to be written.",
        "gauge",
        (),
    ),
    Definition(
        "traffic_weight",
        "servewell_traffic_weight",
        "Traffic experiments: the share of a model's requests that name no version each "
        "version answers (role production or candidate), or for a shadow the share it also "
        "predicts.",
        "gauge",
        (*_MV, "role"),
        merge="max",
    ),
    Definition(
        "shadow_requests",
        "servewell_shadow_requests",
        "Requests sent to a shadow version since its experiment began, by outcome: answered, "
        "failed, or skipped (its queue was full).",
        "gauge",
        (*_MV, "outcome"),
    ),
    Definition(
        "shadow_agreement",
        "servewell_shadow_agreement",
        "Share of shadowed rows whose shadow answer equals production's, since the experiment "
        "began.",
        "gauge",
        _MV,
        merge="max",
    ),
)
"""Every metric, in the order /metrics lists them."""
