"""Recent traffic per model version, for people rather than Prometheus: requests per second,
error rate and latency quantiles over the last minute.

Nothing is added to the request path: the background pass samples the cumulative request
histograms the metrics already keep (:meth:`~serving.observe.metrics.Metrics.predict_totals`)
every second, and a reader subtracts the sample of a minute ago from the newest, as
Prometheus's ``rate`` and ``histogram_quantile`` would. Figures are this server process's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from serving.observe.families import LATENCY_BUCKETS

Totals = Mapping[tuple[str, str], tuple[int, int, Sequence[int]]]
"""(model, version) -> (requests, 5xx answers, latency bucket counts), since the start."""

WINDOW_S = 60.0


@dataclass(frozen=True)
class Recent:
    """One version's traffic over ``seconds`` (the time the samples span)."""

    seconds: float
    requests: int
    per_second: float
    error_rate: float | None
    """Share of 5xx answers (None without requests)."""
    p50_ms: float | None
    p99_ms: float | None

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "window_s": round(self.seconds, 1),
            "requests": self.requests,
            "per_second": round(self.per_second, 2),
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


class RecentTraffic:
    """Samples of the cumulative totals, the last :data:`WINDOW_S` seconds of them."""

    def __init__(self, totals: Callable[[], Totals], window_s: float = WINDOW_S) -> None:
        self._totals = totals
        self.window_s = window_s
        self._samples: deque[tuple[float, Totals]] = deque()

    def sample(self, now: float) -> None:
        self._samples.append((now, dict(self._totals())))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def of(self, model: str, version: int) -> Recent | None:
        """The version's traffic between the oldest and the newest sample (None before two
        samples exist)."""
        if len(self._samples) < 2:
            return None
        (start, before), (end, after) = self._samples[0], self._samples[-1]
        key = (model, str(version))
        zero: tuple[int, int, Sequence[int]] = (0, 0, [0] * (len(LATENCY_BUCKETS) + 1))
        n0, e0, b0 = before.get(key, zero)
        n1, e1, b1 = after.get(key, zero)
        seconds = max(end - start, 1e-9)
        requests = n1 - n0
        buckets = [b - a for a, b in zip(b0, b1, strict=True)]
        return Recent(
            seconds=seconds,
            requests=requests,
            per_second=requests / seconds,
            error_rate=(e1 - e0) / requests if requests else None,
            p50_ms=quantile_ms(buckets, 0.5),
            p99_ms=quantile_ms(buckets, 0.99),
        )


def quantile_ms(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram's bucket counts (the last one above every bound), in
    milliseconds, interpolated within its bucket as Prometheus's ``histogram_quantile`` does;
    the largest bound when it lies beyond."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(buckets):
        if seen + count >= rank and count:
            if i == len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1] * 1000
            low = LATENCY_BUCKETS[i - 1] if i else 0.0
            high = LATENCY_BUCKETS[i]
            return round((low + (high - low) * (rank - seen) / count) * 1000, 3)
        seen += count
    return LATENCY_BUCKETS[-1] * 1000
