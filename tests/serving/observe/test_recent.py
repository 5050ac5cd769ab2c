"""The last minute's traffic from samples of the cumulative request histograms."""

from __future__ import annotations

import pytest

from serving.observe.families import LATENCY_BUCKETS
from serving.observe.metrics import Metrics
from serving.observe.recent import RecentTraffic, quantile_ms


def test_quantiles_interpolate_within_a_bucket_as_prometheus_does() -> None:
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    buckets[0] = 10  # ten requests at or under 0.5 ms
    assert quantile_ms(buckets, 0.5) == pytest.approx(0.25)
    buckets[1] = 10  # ten more between 0.5 and 1 ms
    assert quantile_ms(buckets, 0.5) == pytest.approx(0.5)
    assert quantile_ms(buckets, 0.99) == pytest.approx(0.5 + 0.5 * 9.8 / 10)
    assert quantile_ms([0] * len(buckets), 0.5) is None
    beyond = [0] * len(buckets)
    beyond[-1] = 3  # slower than the largest bound: that bound, as Prometheus answers
    assert quantile_ms(beyond, 0.5) == LATENCY_BUCKETS[-1] * 1000


def test_rates_errors_and_latency_over_the_window() -> None:
    metrics = Metrics()
    recent = RecentTraffic(metrics.predict_totals, window_s=60)
    assert recent.of("iris", 1) is None  # one sample is no interval
    recent.sample(0.0)
    for _ in range(90):
        metrics.request_done("iris", "1", "/models/{name}/predict", 200, 0.0004)
    for _ in range(10):
        metrics.request_done("iris", "1", "/models/{name}/predict", 503, 0.002)
    metrics.request_done("", "", "/health/ready", 200, 0.0001)  # not a prediction
    recent.sample(10.0)
    figures = recent.of("iris", 1)
    assert figures is not None
    assert figures.requests == 100
    assert figures.per_second == pytest.approx(10.0)
    assert figures.error_rate == pytest.approx(0.1)
    assert figures.p50_ms is not None
    assert figures.p50_ms < 0.5
    assert figures.p99_ms is not None
    assert 1.0 < figures.p99_ms <= 2.5
    quiet = recent.of("churn", 1)  # a version without requests
    assert quiet is not None
    assert (quiet.requests, quiet.error_rate, quiet.p50_ms) == (0, None, None)


def test_old_samples_leave_the_window() -> None:
    metrics = Metrics()
    recent = RecentTraffic(metrics.predict_totals, window_s=60)
    recent.sample(0.0)
    for _ in range(50):
        metrics.request_done("iris", "1", "/models/{name}/predict", 200, 0.001)
    for t in range(1, 131):  # two minutes of samples, the requests all in the first second
        recent.sample(float(t))
    figures = recent.of("iris", 1)
    assert figures is not None
    assert figures.requests == 0
    assert 60 <= figures.seconds <= 61
