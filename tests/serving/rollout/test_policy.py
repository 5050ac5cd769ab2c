"""An operator's request becomes a traffic policy, or an error naming the field."""

from __future__ import annotations

import pytest

from serving.core.errors import InvalidInputError
from serving.rollout.policy import TrafficRequest, build
from serving.store import Guard, TrafficMode


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (TrafficRequest(TrafficMode.SHADOW), "version"),
        (TrafficRequest(TrafficMode.SHADOW, version=1), "version"),
        (TrafficRequest(TrafficMode.SHADOW, version=2, sample=1.5), "sample"),
        (TrafficRequest(TrafficMode.SHADOW, version=2, key_field="rooms"), "key_field"),
        (TrafficRequest(TrafficMode.SHADOW, version=2, guard=Guard()), "guard"),
        (TrafficRequest(TrafficMode.CANARY, version=2), "weight"),
        (TrafficRequest(TrafficMode.CANARY, version=2, weight=100), "weight"),
        (TrafficRequest(TrafficMode.CANARY, version=2, weight=5, weights={1: 1}), "weights"),
        (TrafficRequest(TrafficMode.AB, weights={1: 1.0}), "weights"),
        (TrafficRequest(TrafficMode.AB, weights={1: 1.0, 2: -1.0}), "weights"),
        (TrafficRequest(TrafficMode.AB, weights={1: 1.0, 2: 1.0}, version=2), "version"),
    ],
)
def test_requests_that_do_not_fit_name_the_field(request_: TrafficRequest, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        build(request_, production=1, now=1.0)
    assert [d.loc for d in caught.value.details] == [("body", field)]


def test_ab_weights_become_shares() -> None:
    policy = build(TrafficRequest(TrafficMode.AB, weights={3: 1.0, 1: 3.0}), 1, 5.0)
    assert policy.weights == ((1, 0.75), (3, 0.25))
    assert policy.versions == [1, 3]
