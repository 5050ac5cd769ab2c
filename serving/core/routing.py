"""One model's traffic policy as the request path applies it: which version answers a request
that names no version, whether it is also shadowed, and what each version did since the
experiment began (in this server process).

Assignment by routing key is a hash of the key salted with the model and the policy's start,
so a key keeps its version for the whole experiment in every process and replica, and a new
experiment draws new groups. Requests without a key are assigned by chance, by weight.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.core.shadow import Lookup, ShadowQueue
from serving.execution.runtime import FloatArray
from serving.store import Manifest, TrafficMode, TrafficPolicy

ROUTING_HEADER = b"x-routing-key"
LATENCIES_KEPT = 10_000
"""Latencies kept per version for its percentiles (the most recent ones)."""
_FOLD_EVERY = 64
"""Shadow answer pairs (one per flush of shadowed requests) kept before they are folded into
the agreement counts in one vectorised pass."""


class VersionStats:
    """What one version did for the experiment's requests in this process."""

    __slots__ = ("errors", "latencies", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)

    def done(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        if ok:
            self.latencies.append(seconds)
        else:
            self.errors += 1

    def summary(self) -> dict[str, Any]:
        kept = np.fromiter(self.latencies, dtype=np.float64, count=len(self.latencies))
        p50, p99 = (np.quantile(kept, [0.5, 0.99]) * 1000.0).tolist() if len(kept) else (None,) * 2
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_ms": {"p50": p50, "p99": p99, "rows": len(kept)},
        }


class ShadowStats:
    """The shadow version's answers next to production's, row by row."""

    def __init__(self, regressor: bool) -> None:
        self.regressor = regressor
        self.requests = 0
        self.errors = 0
        self.skipped = 0
        """Requests not shadowed because the shadow version's queue was full."""
        self.rows = 0
        self.equal = 0
        self.abs_diff = 0.0
        self.confusion: Counter[tuple[Any, Any]] = Counter()
        self._pending: list[tuple[npt.NDArray[Any], npt.NDArray[Any]]] = []

    def add(self, production: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> None:
        """Production's and the shadow's answers for the same rows."""
        self._pending.append((production, shadow))
        if len(self._pending) >= _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Count the pairs kept so far (one vectorised pass instead of work per request)."""
        if not self._pending:
            return
        pairs, self._pending = self._pending, []
        a = np.concatenate([p for p, _ in pairs])
        b = np.concatenate([s for _, s in pairs])
        self.rows += len(a)
        if self.regressor:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            self.abs_diff += float(diff.sum())
            self.equal += int((diff == 0).sum())
        else:
            self.equal += int((a == b).sum())
            self.confusion.update(zip(a.tolist(), b.tolist(), strict=True))

    def summary(self, production: int, shadow: int) -> dict[str, Any]:
        self.fold()
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors": self.errors,
            "skipped": self.skipped,
            "rows": self.rows,
            "equal_share": self.equal / self.rows if self.rows else None,
        }
        if self.regressor:
            out["mean_abs_difference"] = self.abs_diff / self.rows if self.rows else None
        else:
            out["confusion"] = [
                {f"v{production}": p, f"v{shadow}": s, "rows": n}
                for (p, s), n in sorted(self.confusion.items(), key=lambda i: -i[1])
            ]
        return out


class Route:
    """A model's policy prepared for the request path (built when the policy is applied)."""

    def __init__(
        self,
        name: str,
        policy: TrafficPolicy,
        manifest: Manifest,
        shadow_lookup: Lookup | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.shadow = policy.shadow
        self.sample = policy.sample
        self._salt = hashlib.blake2b(
            f"{name}\0{policy.started!r}".encode(), digest_size=16
        ).digest()
        self._versions = [v for v, share in policy.weights if share > 0]
        shares = [share for _, share in policy.weights if share > 0]
        self._bounds = list(np.cumsum(shares)[:-1]) if shares else []
        self.key_index = (
            None if policy.key_field is None else manifest.feature_names.index(policy.key_field)
        )
        self.stats = {v: VersionStats() for v in policy.versions}
        self.shadow_stats = ShadowStats(manifest.task == "regression")
        self.shadow_queue = ShadowQueue(self, shadow_lookup)

    def choose(self, headers: Sequence[tuple[bytes, bytes]], rows: FloatArray) -> int:
        """The version that answers this request (a shadow policy's: production)."""
        if len(self._versions) == 1:
            return self._versions[0]
        return self.pick(self.key_of(headers, rows))

    def pick(self, key: bytes | None) -> int:
        """The version that answers a request with this routing key (None: by chance)."""
        versions = self._versions
        if len(versions) == 1:
            return versions[0]
        if key is None:
            u = random.random()
        else:
            digest = hashlib.blake2b(key, digest_size=8, key=self._salt).digest()
            u = int.from_bytes(digest, "big") / 2.0**64
        return versions[bisect_right(self._bounds, u)]

    def key_of(self, headers: Sequence[tuple[bytes, bytes]], rows: FloatArray) -> bytes | None:
        """The request's routing key: its ``X-Routing-Key`` header, else the policy's key
        feature in its first row (as the encoded number: a category's position)."""
        for name, given in headers:
            if name == ROUTING_HEADER:
                return given
        if self.key_index is None or not len(rows):
            return None
        value = float(rows[0, self.key_index])
        if math.isnan(value):
            return None
        return (str(int(value)) if value.is_integer() else repr(value)).encode()

    def shadowed(self) -> bool:
        return self.shadow is not None and (self.sample >= 1.0 or random.random() < self.sample)

    def summary(self) -> dict[str, Any]:
        """The policy and this process's figures per version."""
        policy = self.policy
        versions = []
        for version, stats in self.stats.items():
            entry: dict[str, Any] = {
                "version": version,
                "role": _role(policy, version),
                "weight": dict(policy.weights).get(version, 0.0),
                **stats.summary(),
            }
            if version == policy.shadow:
                entry["shadow"] = self.shadow_stats.summary(policy.production, version)
            versions.append(entry)
        return {"versions": versions}


def _role(policy: TrafficPolicy, version: int) -> str:
    if version == policy.production:
        return "production"
    return "shadow" if policy.mode is TrafficMode.SHADOW else "candidate"
