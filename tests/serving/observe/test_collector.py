"""Scrape-time export: every family listed even when empty, gauges merged by their rule."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.observe.collector import MetricsCollector
from serving.observe.metrics import Metrics
from serving.observe.snapshots import SnapshotDir


def _text(collector: MetricsCollector) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_every_family_is_listed_in_order_with_its_type_and_help_before_any_count() -> None:
    metrics = Metrics()
    parsed = text_string_to_metric_families(_text(MetricsCollector(metrics)))
    listed = [(f.name, f.type, f.documentation) for f in parsed]
    assert listed == [(f.name, f.kind, f.documentation) for f in metrics.families]


def test_max_gauges_take_the_largest_process_and_sum_gauges_add_up(tmp_path: Path) -> None:
    own, other = Metrics(), Metrics()
    own.load_seconds.values[("iris", "1")] = 2.0
    other.load_seconds.values[("iris", "1")] = 5.0
    own.workers.values[()] = 2.0
    other.workers.values[()] = 3.0
    data = {"pid": os.getppid(), "families": other.snapshot()}
    (tmp_path / f"{os.getppid()}.json").write_bytes(orjson.dumps(data))
    text = _text(MetricsCollector(own, SnapshotDir(tmp_path)))
    assert 'servewell_model_load_seconds{model="iris",version="1"} 5.0' in text
    assert "servewell_inference_workers 5.0" in text
