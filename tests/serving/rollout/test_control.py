"""The canary guard's judgement: error rates and live quality against production's."""

from __future__ import annotations

from typing import Any

from serving.core.routing import Route
from serving.rollout.control import _error_breach, _quality_breach
from serving.store import Guard, TrafficMode, TrafficPolicy
from tests.serving.capture.records import manifest


def test_the_guard_judges_quality_only_with_enough_labelled_rows() -> None:

    guard = Guard(max_error_rate_increase=0.05, max_quality_drop=0.05, min_requests=100)
    policy = TrafficPolicy(TrafficMode.CANARY, 1, ((1, 0.9), (2, 0.1)), 1.0, guard=guard)
    r = Route("houses", policy, manifest())
    manifests = {1: manifest(version=1), 2: manifest(version=2)}  # f1_macro, higher is better

    def quality(live_2: float, rows_2: int) -> dict[int, Any]:
        return {
            1: {"metric": "f1_macro", "live": 0.90, "rows": 500},
            2: {"metric": "f1_macro", "live": live_2, "rows": rows_2},
        }

    assert _quality_breach(r, quality(0.80, 99), manifests) is None  # too few rows
    assert _quality_breach(r, quality(0.86, 500), manifests) is None  # within the margin
    reason = _quality_breach(r, quality(0.80, 500), manifests)
    assert reason is not None
    assert "v2's live f1_macro is 0.8 over 500" in reason

    for _ in range(100):
        r.stats[1].done(0.001, ok=True)
    for i in range(100):
        r.stats[2].done(0.001, ok=i >= 5)  # 5 % errors: within the margin
    assert _error_breach(r) is None
    r.stats[2].done(0.0, ok=False)
    r.stats[2].done(0.0, ok=False)
    r.stats[2].done(0.0, ok=False)
    r.stats[2].done(0.0, ok=False)  # 9 of 104
    assert "v2 failed 8.7% of 104 requests" in (_error_breach(r) or "")
