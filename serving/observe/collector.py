"""The prometheus-client collector: snapshots merged and turned into metric families.

At scrape time :class:`MetricsCollector` takes this process's snapshot, adds the other server
processes' (counters and histograms sum; gauges sum or take the maximum, and count only while
their process lives) and exports each family in prometheus-client's types, histogram buckets
made cumulative as the exposition format wants them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from serving.observe.families import Family
from serving.observe.snapshots import SnapshotDir

if TYPE_CHECKING:
    from serving.observe.metrics import Metrics


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
