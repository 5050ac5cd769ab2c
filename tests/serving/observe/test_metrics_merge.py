"""The metrics' arithmetic: histogram buckets, and adding up server processes' snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.observe.metrics import Histogram, Metrics, MetricsCollector, SnapshotDir


def test_histogram_buckets_are_less_or_equal() -> None:
    hist = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 3.0):
        hist.observe(value)
    assert hist.counts == [2, 2, 1]
    assert hist.sum == 8.0


def _samples(collector: MetricsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_snapshots_of_other_processes_add_up(tmp_path: Path) -> None:
    own, other, gone = Metrics(), Metrics(), Metrics()
    for metrics, n in ((own, 2), (other, 3), (gone, 5)):
        for _ in range(n):
            metrics.request_done("iris", "1", "/models/{name}/predict", 200, 0.002)
        metrics.workers.values[()] = 1.0
    shared = SnapshotDir(tmp_path)
    for metrics, pid in ((other, os.getppid()), (gone, _dead_pid())):
        data = {"pid": pid, "families": metrics.snapshot()}
        (tmp_path / f"{pid}.json").write_bytes(orjson.dumps(data))
    samples = _samples(MetricsCollector(own, shared))
    labels = (("endpoint", "/models/{name}/predict"), ("model", "iris"), ("version", "1"))
    # Counters and histograms keep the counts of a process that exited; gauges do not.
    assert samples[("servewell_requests_total", (*labels[:2], ("status", "200"), labels[2]))] == 10
    assert samples[("servewell_request_duration_seconds_count", labels)] == 10
    assert abs(samples[("servewell_request_duration_seconds_sum", labels)] - 0.02) < 1e-12
    bucket = (
        "servewell_request_duration_seconds_bucket",
        (*labels[:1], ("le", "0.0025"), *labels[1:]),
    )
    assert samples[bucket] == 10
    assert samples[("servewell_inference_workers", ())] == 2
    assert (tmp_path / f"{os.getpid()}.json").exists()  # the scrape shared its own counts too
