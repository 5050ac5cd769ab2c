"""Traffic experiments as operators run them: set, read and end a model's policy, compare its
versions, and the canary guard that ends a canary doing worse than production.

A policy goes through the store (verified there, so every process and replica reads the same
one) and is applied by the lifecycle's sync, as a promotion is; the candidates load then. A
candidate the service cannot load gets the policy refused (409) and the previous one back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from serving.capture.capture import Capture
from serving.capture.records import CapturedRow
from serving.core.errors import (
    ArtifactRefusedError,
    CaptureUnavailableError,
    LifecycleConflictError,
    NoExperimentError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.core.lifecycle import Lifecycle, check_name, store_call
from serving.core.routing import Route
from serving.rollout.compare import significance, version_quality
from serving.rollout.policy import TrafficRequest, build
from serving.settings import Settings
from serving.store import Manifest, TrafficMode, TrafficPolicy

log = logging.getLogger("servewell.rollout")

QUALITY_ROWS = 100_000
"""Most labelled rows per version read for an experiment's live quality (the newest)."""


class Rollout:
    def __init__(self, lifecycle: Lifecycle, capture: Capture | None, settings: Settings) -> None:
        self.lifecycle = lifecycle
        self.registry = lifecycle.registry
        self.store = lifecycle.store
        self.capture = capture
        self.settings = settings
        self.ended: dict[str, dict[str, Any]] = {}
        """Per model, the last experiment the guard ended and why (this process)."""
        self._guard: asyncio.Task[None] | None = None
        self._quality_read: dict[str, float] = {}
        """Per model, when the guard last read live quality (``time.monotonic()``)."""

    async def resume(self) -> None:
        """At start-up: apply the experiments the store holds (their candidates load now, so
        a restarted service answers as the one before did)."""
        names = await asyncio.to_thread(self._with_policies)
        for name in names:
            try:
                await self.lifecycle.sync(name)
            except Exception as exc:  # polling retries; production serves meanwhile
                log.error("model %s: traffic experiment not applied: %s", name, exc)

    def _with_policies(self) -> list[str]:
        found = []
        for name in self.registry.default_version:
            try:
                if self.store.traffic(name) is not None:
                    found.append(name)
            except Exception:  # a corrupt policy: the sync reports it
                found.append(name)
        return found

    # -- admin operations ---------------------------------------------------------------------

    async def set(self, name: str, request: TrafficRequest) -> dict[str, Any]:
        """Start (or replace) the model's experiment; see the module docstring."""
        check_name(name)
        versions, production = await store_call(self._versions, name)
        if production is None:
            raise LifecycleConflictError(
                f"model {name!r} has no production version; promote one before an experiment"
            )
        policy = build(request, production, time.time())
        for version in policy.versions:
            if version not in versions:
                raise UnknownVersionError(
                    f"model {name!r} has no version {version}; "
                    f"published: {', '.join(map(str, versions))}"
                )
        before = await store_call(self._current, name)
        await store_call(self.store.set_traffic, name, policy)
        await self.lifecycle.sync(name, retry=True)
        refused = [v for v in policy.versions if not self.registry.is_ready((name, v))]
        if refused:
            await store_call(self._restore, name, before)
            await self.lifecycle.sync(name)
            version = refused[0]
            reason = self.registry.rejected.get((name, version), "it could not be loaded")
            raise ArtifactRefusedError(
                f"{name} v{version} was refused ({reason}); the previous traffic policy stays"
            )
        return await self.get(name)

    async def get(self, name: str) -> dict[str, Any]:
        """The model's policy as the store holds it, and whether this process applies it."""
        check_name(name)
        _versions, production = await store_call(self._versions, name)
        policy = await store_call(self.store.traffic, name)
        route = self.registry.routes.get(name)
        out: dict[str, Any] = {
            "name": name,
            "production": production,
            "policy": None if policy is None else _policy_json(policy),
            "applied": route is not None and route.policy == policy,
        }
        if name in self.ended:
            out["ended_by_guard"] = self.ended[name]
        return out

    async def end(self, name: str) -> dict[str, Any]:
        """End the model's experiment: production answers alone again."""
        check_name(name)
        await store_call(self._versions, name)
        ended = await store_call(self.store.end_traffic, name)
        if ended is None:
            raise NoExperimentError(f"model {name!r} runs no traffic experiment")
        await self.lifecycle.sync(name)
        return {**(await self.get(name)), "ended": _policy_json(ended)}

    def _versions(self, name: str) -> tuple[list[int], int | None]:
        versions = self.store.versions(name)
        if not versions:
            raise UnknownModelError(f"no model named {name!r} in the store")
        return versions, self.store.production(name)

    def _current(self, name: str) -> TrafficPolicy | None:
        try:
            return self.store.traffic(name)
        except Exception:  # a corrupt policy is simply replaced
            return None

    def _restore(self, name: str, before: TrafficPolicy | None) -> None:
        if before is None:
            self.store.end_traffic(name)
            return
        try:
            self.store.set_traffic(name, before)
        except Exception as exc:  # e.g. a version of it was removed since
            log.warning("model %s: the previous traffic policy cannot return (%s)", name, exc)
            self.store.end_traffic(name)

    # -- comparison ---------------------------------------------------------------------------

    async def compare(self, name: str) -> dict[str, Any]:
        """Per version in the experiment: requests, errors, latency, live quality, and for a
        shadow its agreement with production; see docs/operations.md."""
        check_name(name)
        route = self.registry.routes.get(name)
        if route is None:
            if name not in self.registry.default_version:
                raise UnknownModelError(f"no model named {name!r} is served")
            raise NoExperimentError(
                f"model {name!r} runs no traffic experiment; start one with "
                f"PUT /admin/models/{name}/traffic"
            )
        out: dict[str, Any] = {
            "name": name,
            "policy": _policy_json(route.policy),
            "counted_by": "this server process, since the experiment began (requests, "
            "errors, latency, shadow agreement); live quality: every process, from the capture "
            "database",
            **route.summary(),
        }
        manifests = self._manifests(route)
        if self.capture is None:
            out["quality"] = None
            out["quality_reason"] = "data capture is off (SERVEWELL_CAPTURE), so no labels"
            return out
        try:
            quality = await asyncio.to_thread(self._quality, route, manifests)
        except Exception as exc:
            raise CaptureUnavailableError(
                f"the capture database is unavailable ({type(exc).__name__}); retry later",
                retry_after=5.0,
            ) from exc
        for entry in out["versions"]:
            entry["live_quality"] = quality["versions"].get(entry["version"])
        out["comparisons"] = quality["comparisons"]
        return out

    def _manifests(self, route: Route) -> dict[int, Manifest]:
        found: dict[int, Manifest] = {}
        for version in route.policy.versions:
            record = self.registry.models.get((route.name, version))
            if record is not None:
                found[version] = record.manifest
        return found

    def _quality(self, route: Route, manifests: dict[int, Manifest]) -> dict[str, Any]:
        """Blocking: reads the capture database."""
        assert self.capture is not None
        policy = route.policy
        now = time.time()
        rows: dict[int, list[CapturedRow]] = {}
        versions: dict[int, Any] = {}
        for version, manifest in manifests.items():
            rows[version] = self.capture.read(
                route.name,
                limit=QUALITY_ROWS,
                since=policy.started,
                labelled_only=True,
                version=version,
            )
            versions[version] = version_quality(
                manifest,
                rows[version],
                now,
                self.settings.quality_tolerance,
                self.settings.quality_min_rows,
            )
        comparisons = []
        base = manifests.get(policy.production)
        for version in policy.candidates:
            if base is None or version not in manifests:
                continue
            test = significance(
                base,
                manifests[version],
                rows[policy.production],
                rows[version],
                paired=policy.mode is TrafficMode.SHADOW,
            )
            comparisons.append({"version": version, "against": policy.production, **test})
        return {"versions": versions, "comparisons": comparisons}

    # -- the canary guard ---------------------------------------------------------------------

    def start_guard(self) -> None:
        if self.settings.guard_interval_s > 0 and self._guard is None:
            self._guard = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard
            self._guard = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.guard_interval_s)
            for name, route in list(self.registry.routes.items()):
                try:
                    await self.check_guard(name, route)
                except Exception as exc:  # the next round tries again
                    log.error("canary guard of %s: %s: %s", name, type(exc).__name__, exc)

    def _quality_due(self, name: str) -> bool:
        """Live quality reads the capture database (up to QUALITY_ROWS rows per version): the
        guard reads it at the live quality's own cadence (``quality_interval_s``), not at every
        check of error rates."""
        if self.capture is None:
            return False
        every = self.settings.quality_interval_s or self.settings.guard_interval_s
        now = time.monotonic()
        if now - self._quality_read.get(name, -math.inf) < every:
            return False
        self._quality_read[name] = now
        return True

    async def check_guard(self, name: str, route: Route) -> str | None:
        """End the experiment when a candidate does worse than production by more than the
        guard's margins; returns why it did (None when it did not)."""
        guard = route.policy.guard
        if guard is None or route.policy.mode is TrafficMode.SHADOW:
            return None
        reason = _error_breach(route)
        if reason is None and guard.max_quality_drop is not None and self._quality_due(name):
            manifests = self._manifests(route)
            quality = await asyncio.to_thread(self._quality, route, manifests)
            reason = _quality_breach(route, quality["versions"], manifests)
        if reason is None:
            return None
        if self.registry.routes.get(name) is not route:
            return None  # replaced or ended meanwhile
        await store_call(self.store.end_traffic, name)
        self.ended[name] = {
            "at": datetime.now(UTC).isoformat(),
            "reason": reason,
            "policy": _policy_json(route.policy),
        }
        log.warning("model %s: canary guard returned traffic to production: %s", name, reason)
        await self.lifecycle.sync(name)
        return reason


def _error_breach(route: Route) -> str | None:
    guard = route.policy.guard
    assert guard is not None
    base = route.stats[route.policy.production]
    if base.requests < guard.min_requests:
        return None
    base_rate = base.errors / base.requests
    for version in route.policy.candidates:
        stats = route.stats[version]
        if stats.requests < guard.min_requests:
            continue
        rate = stats.errors / stats.requests
        if rate - base_rate > guard.max_error_rate_increase:
            return (
                f"v{version} failed {rate:.1%} of {stats.requests} requests against "
                f"{base_rate:.1%} for production v{route.policy.production} (margin "
                f"{guard.max_error_rate_increase:.1%})"
            )
    return None


def _quality_breach(
    route: Route, quality: dict[int, Any], manifests: dict[int, Manifest]
) -> str | None:
    guard = route.policy.guard
    assert guard is not None
    assert guard.max_quality_drop is not None
    production = route.policy.production
    base = quality.get(production)
    if base is None or base["live"] is None or base["rows"] < guard.min_requests:
        return None
    higher_is_better = manifests[production].higher_is_better
    for version in route.policy.candidates:
        found = quality.get(version)
        if found is None or found["live"] is None or found["rows"] < guard.min_requests:
            continue
        drop = base["live"] - found["live"] if higher_is_better else found["live"] - base["live"]
        if drop > guard.max_quality_drop:
            return (
                f"v{version}'s live {found['metric']} is {found['live']:.4g} over "
                f"{found['rows']} labelled rows against {base['live']:.4g} for production "
                f"v{production} (margin {guard.max_quality_drop:g})"
            )
    return None


def _policy_json(policy: TrafficPolicy) -> dict[str, Any]:
    out = policy.to_json()
    out["started"] = datetime.fromtimestamp(policy.started, UTC).isoformat()
    out["description"] = policy.describe()
    return out
