"""A traffic policy from what an operator asks for (admin API or ``make shadow`` / ``canary``),
checked field by field: the store holds the result (serving.store.traffic)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from serving.core.errors import ErrorDetail, InvalidInputError
from serving.store import Guard, TrafficMode, TrafficPolicy


@dataclass(frozen=True)
class TrafficRequest:
    """What an operator asks for; see :func:`build`."""

    mode: TrafficMode
    version: int | None = None
    """Shadow and canary: the candidate version."""
    sample: float = 1.0
    """Shadow: share of requests also sent to the candidate, in (0, 1]."""
    weight: float | None = None
    """Canary: percent of requests the candidate answers, in (0, 100)."""
    weights: Mapping[int, float] | None = None
    """A/B: version -> weight (any positive numbers; shares are weight / total)."""
    key_field: str | None = None
    guard: Guard | None = None


def build(request: TrafficRequest, production: int, now: float) -> TrafficPolicy:
    """The policy for ``request`` against ``production``; InvalidInputError names the field
    that does not fit."""
    mode = request.mode
    if mode is TrafficMode.AB:
        weights = _ab_weights(request.weights)
        _unused(request, version=request.version, weight=request.weight)
        policy = TrafficPolicy(
            mode, production, weights, now, key_field=request.key_field, guard=request.guard
        )
    else:
        version = request.version
        if version is None:
            raise _invalid("version", f"a {mode.value} policy names its candidate version")
        if version == production:
            raise _invalid("version", f"v{version} is production already")
        if mode is TrafficMode.SHADOW:
            if not 0 < request.sample <= 1:
                raise _invalid("sample", "the shadow sample is a share in (0, 1]")
            _unused(request, weight=request.weight, weights=request.weights)
            if request.guard is not None:
                raise _invalid("guard", "a shadow never answers clients: it needs no guard")
            policy = TrafficPolicy(
                mode, production, ((production, 1.0),), now, shadow=version, sample=request.sample
            )
        else:
            weight = request.weight
            if weight is None or not (math.isfinite(weight) and 0 < weight < 100):
                raise _invalid("weight", "a canary's weight is a percentage in (0, 100)")
            _unused(request, weights=request.weights)
            share = weight / 100.0
            policy = TrafficPolicy(
                mode,
                production,
                ((production, 1.0 - share), (version, share)),
                now,
                key_field=request.key_field,
                guard=request.guard,
            )
    if request.key_field is not None and mode is TrafficMode.SHADOW:
        raise _invalid("key_field", "a shadow sees every sampled request: it takes no key")
    policy.check()
    return policy


def _ab_weights(given: Mapping[int, float] | None) -> tuple[tuple[int, float], ...]:
    if not given or len(given) < 2:
        raise _invalid("weights", "an A/B policy shares traffic among two or more versions")
    for version, weight in given.items():
        if not (math.isfinite(weight) and weight > 0):
            raise _invalid("weights", f"the weight of v{version} must be a positive number")
    total = sum(given.values())
    return tuple((version, weight / total) for version, weight in sorted(given.items()))


def _unused(request: TrafficRequest, **fields: object) -> None:
    for name, value in fields.items():
        if value is not None:
            raise _invalid(name, f"a {request.mode.value} policy takes no {name}")


def _invalid(field: str, message: str) -> InvalidInputError:
    return InvalidInputError(
        "the traffic policy is not valid", [ErrorDetail(("body", field), message)]
    )
