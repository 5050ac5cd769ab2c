"""A model's traffic policy: which versions besides production answer (or silently also see)
the requests that name the model but no version.

Kept as ``<model folder>/traffic.json`` beside the production pointer and replaced the same way
(``os.replace`` under the pointer lock), so every server process and replica reads one policy
and a restart keeps it. A policy is tied to the production version it was set against: a
promote or a rollback removes it (:mod:`serving.store.pointer`), which is how promoting a
candidate ends its experiment.

- ``shadow``: production answers; a ``sample`` share of requests is also predicted by the
  ``shadow`` version, whose answers are only compared and captured.
- ``canary`` / ``ab``: ``weights`` share requests among versions (production among them for a
  canary). A request's routing key (header or ``key_field``) picks its version by hash, so one
  key keeps one version for the experiment's life; without a key, by chance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving.store.errors import StoreError
from serving.store.files import read_file_nofollow

TRAFFIC_FILE = "traffic.json"


class TrafficMode(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    AB = "ab"


@dataclass(frozen=True)
class Guard:
    """A canary returns its traffic to production when it does worse by more than a margin."""

    max_error_rate_increase: float = 0.05
    """Absolute: the candidate's error rate minus production's."""
    max_quality_drop: float | None = 0.05
    """Absolute, in the primary metric's units (None: quality is not guarded)."""
    min_requests: int = 200
    """Requests (and labelled rows, for quality) each version needs before the guard judges."""


@dataclass(frozen=True)
class TrafficPolicy:
    mode: TrafficMode
    production: int
    """The production version the policy was set against."""
    weights: tuple[tuple[int, float], ...]
    """Canary and A/B: (version, share) with shares summing to 1; shadow: production's alone."""
    started: float
    """UTC seconds; also salts the routing hash, so each experiment draws its own groups."""
    shadow: int | None = None
    sample: float = 1.0
    """Shadow: the share of requests also sent to the shadow version."""
    key_field: str | None = None
    """A feature whose value (in the request's first row) is the routing key when the request
    carries no ``X-Routing-Key`` header."""
    guard: Guard | None = None

    @property
    def versions(self) -> list[int]:
        """Every version the policy involves, production first."""
        out = [self.production, *(v for v, _ in self.weights)]
        if self.shadow is not None:
            out.append(self.shadow)
        return list(dict.fromkeys(out))

    @property
    def candidates(self) -> list[int]:
        return [v for v in self.versions if v != self.production]

    def describe(self) -> str:
        """The policy in a few words, for log lines and the command line."""
        if self.mode is TrafficMode.SHADOW:
            return f"shadow: v{self.shadow} sees {self.sample:.0%} of requests"
        shares = ", ".join(f"v{v} {share:.1%}" for v, share in self.weights)
        key = f", key {self.key_field!r} or X-Routing-Key" if self.key_field else ""
        return f"{self.mode.value}: {shares}{key}"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "production": self.production,
            "weights": {str(v): share for v, share in self.weights},
            "shadow": self.shadow,
            "sample": self.sample,
            "key_field": self.key_field,
            "guard": None if self.guard is None else vars(self.guard).copy(),
            "started": self.started,
        }

    @classmethod
    def from_json(cls, data: Any) -> TrafficPolicy:
        """Raises ValueError (or KeyError, TypeError) for anything not written by to_json."""
        mode = TrafficMode(data["mode"])
        weights = tuple((int(v), float(s)) for v, s in dict(data["weights"]).items())
        guard = data.get("guard")
        policy = cls(
            mode=mode,
            production=int(data["production"]),
            weights=weights,
            started=float(data["started"]),
            shadow=None if data.get("shadow") is None else int(data["shadow"]),
            sample=float(data.get("sample", 1.0)),
            key_field=data.get("key_field"),
            guard=None if guard is None else Guard(**guard),
        )
        policy.check()
        return policy

    def check(self) -> None:
        """Raise ValueError when the policy is not one the service can apply."""
        shares = [s for _, s in self.weights]
        if any(v < 1 for v in self.versions):
            raise ValueError("versions are numbered from 1")
        if not all(math.isfinite(s) and s >= 0 for s in shares) or abs(sum(shares) - 1) > 1e-9:
            raise ValueError("weights must be non-negative shares that sum to 1")
        if self.mode is TrafficMode.SHADOW:
            if self.shadow is None or self.shadow == self.production:
                raise ValueError("a shadow policy names a version other than production")
            if not 0 < self.sample <= 1:
                raise ValueError("the shadow sample is a share in (0, 1]")
        elif self.shadow is not None or len(self.weights) < 2:
            raise ValueError("canary and A/B policies share traffic among two or more versions")
        if self.key_field is not None and not isinstance(self.key_field, str):
            raise ValueError("key_field names a feature")


def read(folder: Path) -> TrafficPolicy | None:
    """The model's policy, or None when it has none."""
    path = folder / TRAFFIC_FILE
    try:
        raw = read_file_nofollow(path)
    except FileNotFoundError:
        return None
    try:
        return TrafficPolicy.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise StoreError(
            f"the traffic policy {path} is corrupt ({type(exc).__name__}: {exc}); "
            "delete it to end the experiment"
        ) from None


def dumps(policy: TrafficPolicy) -> str:
    return json.dumps(policy.to_json(), indent=2) + "\n"


def remove(folder: Path) -> bool:
    """Delete the policy file (the caller holds the pointer lock); True when there was one."""
    try:
        (folder / TRAFFIC_FILE).unlink()
    except FileNotFoundError:
        return False
    return True
