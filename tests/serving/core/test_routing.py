"""Choosing a version by routing key or by chance, and the figures a route keeps."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from serving.core.routing import Route
from serving.store import TrafficMode, TrafficPolicy
from tests.serving.capture.records import manifest, regressor


def route(policy: TrafficPolicy) -> Route:
    return Route("houses", policy, manifest())


def canary(share: float, started: float = 1.0, key_field: str | None = None) -> TrafficPolicy:
    return TrafficPolicy(
        TrafficMode.CANARY, 1, ((1, 1 - share), (2, share)), started, key_field=key_field
    )


def test_keys_share_traffic_by_weight_and_each_keeps_its_version() -> None:
    r = route(canary(0.1))
    picks = [r.pick(f"user-{i}".encode()) for i in range(20_000)]
    assert Counter(picks)[2] / len(picks) == pytest.approx(0.1, abs=0.01)
    assert [r.pick(f"user-{i}".encode()) for i in range(20_000)] == picks
    # Another process (or replica) with the same policy picks the same.
    assert [route(canary(0.1)).pick(f"user-{i}".encode()) for i in range(500)] == picks[:500]


def test_a_new_experiment_draws_new_groups() -> None:
    first = [route(canary(0.5, started=1.0)).pick(f"u{i}".encode()) for i in range(400)]
    second = [route(canary(0.5, started=2.0)).pick(f"u{i}".encode()) for i in range(400)]
    assert first != second


def test_requests_without_a_key_are_shared_by_chance() -> None:
    r = route(canary(0.3))
    picks = Counter(r.pick(None) for _ in range(20_000))
    assert picks[2] / 20_000 == pytest.approx(0.3, abs=0.02)


def test_the_header_comes_before_the_key_field() -> None:
    r = route(canary(0.5, key_field="rooms"))
    rows = np.array([[50.0, 3.0, 1.0, 0.0], [1.0, 7.0, 0.0, 1.0]])
    assert r.key_of([(b"x-routing-key", b"abc")], rows) == b"abc"
    assert r.key_of([], rows) == b"3"  # the first row's value
    assert r.key_of([], np.array([[50.0, np.nan, 1.0, 0.0]])) is None
    assert route(canary(0.5)).key_of([], rows) is None


def test_shadow_agreement_is_counted_row_by_row() -> None:
    policy = TrafficPolicy(TrafficMode.SHADOW, 1, ((1, 1.0),), 1.0, shadow=2)
    r = route(policy)
    production = np.array(["cheap", "dear", "dear"], dtype=object)
    shadow = np.array(["cheap", "cheap", "dear"], dtype=object)
    for _ in range(600):  # past one fold
        r.shadow_stats.add(production, shadow)
    figures = r.summary()["versions"][1]["shadow"]
    assert figures["rows"] == 1800
    assert figures["equal_share"] == pytest.approx(2 / 3)
    confusion = {(c["v1"], c["v2"]): c["rows"] for c in figures["confusion"]}
    assert confusion == {("cheap", "cheap"): 600, ("dear", "cheap"): 600, ("dear", "dear"): 600}


def test_a_regressor_shadow_reports_the_mean_absolute_difference() -> None:
    policy = TrafficPolicy(TrafficMode.SHADOW, 1, ((1, 1.0),), 1.0, shadow=2)
    r = Route("prices", policy, regressor())
    r.shadow_stats.add(np.array([1.0, 2.0]), np.array([1.5, 2.0]))
    figures = r.summary()["versions"][1]["shadow"]
    assert figures["mean_abs_difference"] == pytest.approx(0.25)
    assert figures["equal_share"] == pytest.approx(0.5)


def test_latency_and_errors_per_version() -> None:
    r = route(canary(0.5))
    for ms in range(1, 101):
        r.stats[2].done(ms / 1000, ok=True)
    r.stats[2].done(0.0, ok=False)
    figures = r.summary()["versions"][1]
    assert figures["requests"] == 101
    assert figures["errors"] == 1
    assert figures["latency_ms"]["p50"] == pytest.approx(50.5)
    assert figures["latency_ms"]["rows"] == 100
