"""Model lifecycle in the running service: follow the store and hot-swap versions.

:meth:`Lifecycle.sync` compares what the store asks for (each model's production version, or
its latest when nothing is promoted; earlier production versions kept loaded; every version
with ``serve_all_versions``) with what is served, and changes it without dropping a request:

1. load each new version into the executor (every pool worker) and build its batcher;
2. switch in one step of the event loop: default version, served set and the listeners (the
   app's routes, fast-path table and OpenAPI schema) change together;
3. wait for batches already sent to a swapped-out version to finish, then unload it.

A version that fails (bad hash or signature, unpickling error, strict scikit-learn mismatch)
is logged and reported (``rejected`` in readiness) while the old version keeps serving, and is
not retried by polling until :meth:`reload`. The admin operations (promote, rollback, reload)
go through the store and then sync synchronously. No FastAPI here; domain errors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serving.core.dataplane import DataPlane
from serving.core.errors import (
    ArtifactRefusedError,
    InvalidModelNameError,
    LifecycleConflictError,
    ServingError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.core.registry import Known, ServedModel
from serving.core.routing import Route
from serving.core.shadow import Lookup
from serving.execution.executor import ModelKey
from serving.store import (
    IntegrityError,
    InvalidNameError,
    Manifest,
    ModelNotFoundError,
    StoreError,
    TrafficPolicy,
    validate_name,
)

if TYPE_CHECKING:
    from serving.capture.capture import Capture

log = logging.getLogger("servewell.lifecycle")

DRAIN_TIMEOUT_S = 60.0
"""Longest wait for a swapped-out version's in-flight batches before it is unloaded anyway."""


@dataclass(frozen=True)
class _Wanted:
    """What the store asks for one model (or why it cannot be read)."""

    default: int | None = None
    versions: frozenset[int] = frozenset()
    error: str | None = None
    policy: TrafficPolicy | None = None
    """The traffic experiment to apply (its versions are among ``versions``)."""


class Lifecycle:
    """Keeps the data plane in step with the store; see the module docstring."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self.loader = dataplane.loader
        self.store = dataplane.store
        self.settings = dataplane.settings
        self.listeners: list[Callable[[], None]] = []
        """Called (synchronously) right after the served set changed."""
        self.load_listeners: list[Callable[[ModelKey, float, str | None], None]] = []
        """Called after every load attempt: the version, seconds it took, and why it failed
        (None when it loaded)."""
        self._previous: dict[str, list[int]] = {}
        """Earlier production versions kept loaded, most recent first."""
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self.swaps = 0
        """Completed changes of the served set (for tests and metrics)."""
        self._traffic_problems: dict[str, str] = {}
        self.unloaded: set[str] = set()
        """Models unloaded on request (``unload``): not served, whatever the store says, until
        ``load`` (kept in memory only: a restart serves them again)."""

    # -- polling ------------------------------------------------------------------------------

    def start_polling(self) -> None:
        interval = self.settings.poll_interval_s
        if interval > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self, interval: float) -> None:
        reported: str | None = None
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception as exc:  # keep polling; the next round may succeed
                message = f"{type(exc).__name__}: {exc}"
                if message != reported:  # once per distinct problem, not every interval
                    log.error("polling the model store failed: %s", message)
                reported = message
            else:
                reported = None

    # -- syncing ------------------------------------------------------------------------------

    async def sync(self, name: str | None = None, *, retry: bool = False) -> bool:
        """Bring one model (or all) in line with the store; True when anything changed.

        ``retry`` also retries versions that failed before (admin reload, promote, rollback).
        """
        async with self._lock:
            wanted = await store_call(self._read_store, name)
            changed = False
            for model, target in sorted(wanted.items()):
                changed |= await self._apply(model, target, retry)
            return changed

    def _read_store(self, only: str | None) -> dict[str, _Wanted | None]:
        """Per model: what to serve, or None when it is gone from the store."""
        reg = self.registry
        if only is not None:
            try:
                published = bool(self.store.versions(only))
            except InvalidNameError:
                raise  # a name the store refuses outright, not a problem of this model
            except (StoreError, OSError):
                published = True  # reported below, as the model's own problem
            names = [only] if published else []
            known = {only} if only in reg.default_version or only in reg.broken_names else set()
        else:
            if not self.store.root.is_dir():  # unmounted or mistyped: not "every model deleted"
                raise StoreError(f"the store root {self.store.root} is not a directory")
            names = self.store.names()
            known = set(reg.default_version) | set(reg.broken_names)
        out: dict[str, _Wanted | None] = dict.fromkeys(known - set(names))
        for name in names:
            try:
                versions = self.store.versions(name)
                production = self.store.production(name)
            except (StoreError, OSError, ValueError) as exc:  # one model's problem, not all
                out[name] = _Wanted(error=f"{type(exc).__name__}: {exc}")
                continue
            if not versions:
                out[name] = None
                continue
            default = production if production in versions else versions[-1]
            chosen = set(versions) if self.settings.serve_all_versions else {default}
            kept = [v for v in self._previous.get(name, []) if v in versions]
            policy = self._policy(name, production)
            if policy is not None:
                chosen |= set(policy.versions) & set(versions)
            out[name] = _Wanted(default, frozenset(chosen | set(kept)), policy=policy)
        for name in self.unloaded & set(out):
            out[name] = None
        return out

    def _policy(self, name: str, production: int | None) -> TrafficPolicy | None:
        """The model's traffic experiment, if it has one that applies to its production."""
        try:
            policy = self.store.traffic(name)
        except (StoreError, OSError) as exc:  # logged once; the model serves without it
            self._traffic_problem(name, f"{type(exc).__name__}: {exc}")
            return None
        if policy is not None and policy.production != production:
            self._traffic_problem(
                name, f"its traffic policy was set against v{policy.production}, not production"
            )
            return None
        self._traffic_problems.pop(name, None)
        return policy

    def _traffic_problem(self, name: str, problem: str) -> None:
        if self._traffic_problems.get(name) != problem:
            log.error("model %s: no traffic experiment applied: %s", name, problem)
        self._traffic_problems[name] = problem

    async def _apply(self, name: str, wanted: _Wanted | None, retry: bool) -> bool:
        """Load, switch to and retire what the store asks for one model; True on a change."""
        reg = self.registry
        current = {k: s for k, s in reg.models.items() if k[0] == name}
        if wanted is None:
            return await self._gone(name, current)
        if wanted.error is not None:
            self._unreadable(name, wanted.error, bool(current))
            return False
        reg.broken_names.pop(name, None)
        reg.store_problems.pop(name, None)
        assert wanted.default is not None
        old_default = reg.default_version.get(name)
        old_ok = old_default is not None and reg.is_ready((name, old_default))
        loaded, failures = await self._load_new(name, wanted.versions, current, retry)
        default = wanted.default
        if not (reg.is_ready((name, default)) or (name, default) in loaded) and old_ok:
            assert old_default is not None
            default = old_default  # the new version was refused: the old one keeps serving
        if old_ok and old_default != default and self.settings.keep_previous_versions:
            assert old_default is not None
            previous = [old_default, *self._previous.get(name, [])]
            previous = [v for v in dict.fromkeys(previous) if v != default]
            self._previous[name] = previous[: self.settings.keep_previous_versions]
        keep = {default, *self._previous.get(name, []), *wanted.versions}
        retired = [s for k, s in current.items() if k[1] not in keep or k in loaded]
        reg.forget_reports(name, keep - {v for (_, v) in loaded})
        reg.report_failures((name, default), current, failures)
        routed = self._route(name, wanted.policy, default, loaded)
        if not loaded and not retired and old_default == default:
            return routed
        reg.switch(name, default, loaded, retired)
        if old_default != default:
            _log_default(name, default, old_default, old_ok)
        await self._switch(retired)
        return True

    def _route(
        self,
        name: str,
        policy: TrafficPolicy | None,
        default: int,
        loaded: dict[ModelKey, ServedModel],
    ) -> bool:
        """Apply (or end) the model's experiment; True when that changed anything. An
        unchanged policy keeps its route, and so the figures counted since it began."""
        routes = self.registry.routes
        current = routes.get(name)
        if policy is None or policy.production != default:
            if current is None:
                return False
            del routes[name]
            log.info("model %s: traffic experiment ended; production answers alone", name)
            return True
        if current is not None and current.policy == policy:
            return False
        production = loaded.get((name, default)) or self.registry.models.get((name, default))
        if production is None:
            return False
        routes[name] = Route(name, policy, production.manifest, self._shadow_lookup(name, policy))
        log.info("model %s: traffic experiment %s", name, policy.describe())
        return True

    def _shadow_lookup(self, name: str, policy: TrafficPolicy) -> Lookup | None:
        """How the experiment's shadow queue finds its version when it flushes: as served
        then (a swap may have replaced or retired it), with its queue bound and capture."""
        if policy.shadow is None:
            return None
        key, dataplane = (name, policy.shadow), self.dataplane

        def lookup() -> tuple[ServedModel | None, int, Capture | None]:
            shadow = self.registry.models.get(key)
            served = shadow if isinstance(shadow, ServedModel) else None
            return served, self.settings.shadow_queue_rows, dataplane.capture

        return lookup

    async def _gone(self, name: str, current: dict[ModelKey, Known]) -> bool:
        """Stop serving a model gone from the store (or unloaded); True when it was known."""
        if not current and name not in self.registry.broken_names:
            return False
        log.info("model %s is gone from the store; no longer serving it", name)
        self._previous.pop(name, None)
        await self._switch(self.registry.forget(name))
        return True

    def _unreadable(self, name: str, error: str, serving: bool) -> None:
        """Report a store that cannot be read for one model, logged once per distinct problem
        (``serving``: a version of it keeps serving, so it is a store problem, not broken)."""
        reports = self.registry.store_problems if serving else self.registry.broken_names
        if reports.get(name) != error:
            message = "model %s: cannot read the store (%s)" if serving else "not serving %s: %s"
            log.error(message, name, error)
        reports[name] = error

    async def _load_new(
        self, name: str, versions: Iterable[int], current: dict[ModelKey, Known], retry: bool
    ) -> tuple[dict[ModelKey, ServedModel], dict[ModelKey, str]]:
        """Load the wanted versions not ready yet: those loaded, and why the others failed.
        Versions that failed before are left alone unless ``retry``."""
        loaded: dict[ModelKey, ServedModel] = {}
        failures: dict[ModelKey, str] = {}
        reg = self.registry
        for version in sorted(versions):
            key = (name, version)
            if reg.is_ready(key):
                continue
            failed_before = key in reg.rejected or key in reg.unreadable or key in current
            if failed_before and not retry:
                continue  # reported already; an admin reload retries it
            result = await self._load(key)
            if isinstance(result, str):
                failures[key] = result
            else:
                loaded[key] = result
        return loaded, failures

    async def _switch(self, retired: Iterable[Known]) -> None:
        """Tell the listeners (the registry has switched already), then drain and unload the
        swapped-out versions."""
        self.swaps += 1
        for listener in self.listeners:
            listener()
        for record in retired:
            if isinstance(record, ServedModel):
                try:
                    async with asyncio.timeout(DRAIN_TIMEOUT_S):
                        for batcher in record.batchers:
                            await batcher.drain()
                except TimeoutError:
                    log.warning("%s v%s: in-flight batches did not finish; unloading", *record.key)
                try:
                    await self.loader.executor.unload_model(record.key)
                except ServingError as exc:
                    log.warning("unloading %s v%s: %s", *record.key, exc)
            log.info("unloaded %s v%s", *record.key)

    async def _load(self, key: ModelKey) -> ServedModel | str:
        """Verify and load one version into the executor: the ready model, or why not."""
        started = time.monotonic()
        try:
            served = await self.loader.load(key)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            log.error("not serving %s v%s: %s", *key, reason)
            self._loaded(key, started, reason)
            return reason
        self._loaded(key, started, None)
        log.info("loaded %s v%s with %s", *key, served.runtime)
        return served

    def _loaded(self, key: ModelKey, started: float, error: str | None) -> None:
        for listener in self.load_listeners:
            listener(key, time.monotonic() - started, error)

    # -- admin operations ---------------------------------------------------------------------

    async def reload(self, name: str) -> dict[str, Any]:
        """Re-read the store for one model and retry versions that failed before."""
        check_name(name)
        await self.sync(name, retry=True)
        return self._require(name)

    async def promote(self, name: str, version: int) -> dict[str, Any]:
        """Make ``version`` production in the store, then swap to it."""
        check_name(name)
        await store_call(self.store.promote, name, version)
        await self.sync(name, retry=True)
        return self._require(name, expect=version)

    async def rollback(self, name: str) -> dict[str, Any]:
        """Return production to the previous version in the store, then swap to it."""
        check_name(name)
        _, target = await store_call(self.store.rollback, name)
        await self.sync(name, retry=True)
        return self._require(name, expect=target)

    async def unload(self, name: str) -> dict[str, Any]:
        """Stop serving a model (every version) until :meth:`load`; the store is unchanged."""
        check_name(name)
        if name not in self.registry.default_version and name not in self.registry.broken_names:
            raise UnknownModelError(f"no model named {name!r} is served")
        self.unloaded.add(name)
        await self.sync(name)
        return self.state(name)

    async def load(self, name: str) -> dict[str, Any]:
        """Serve a model again after :meth:`unload` (or load it anew): like :meth:`reload`."""
        check_name(name)
        self.unloaded.discard(name)
        return await self.reload(name)

    async def versions(self, name: str) -> dict[str, Any]:
        """Every published version: production or not, served or not, and why not."""
        check_name(name)
        published, production = await store_call(self._published, name)
        if not published:
            raise UnknownModelError(f"no model named {name!r} in the store")
        out = []
        for version, manifest in published:
            key = (name, version)
            served = self.registry.models.get(key)
            entry: dict[str, Any] = {
                "version": version,
                "production": version == production,
                "served": isinstance(served, ServedModel),
            }
            if isinstance(manifest, str):  # unreadable or forged: say so, list the rest
                entry["error"] = manifest
            else:
                entry["created"] = manifest.created.isoformat()
                entry["metrics"] = manifest.metrics
                entry["sklearn"] = manifest.environment.sklearn
            error = self.registry.rejected.get(key) or (served.error if served else None)
            if error:
                entry["error"] = error
            out.append(entry)
        return {**self.state(name), "production": production, "versions": out}

    def _published(self, name: str) -> tuple[list[tuple[int, Manifest | str]], int | None]:
        out: list[tuple[int, Manifest | str]] = []
        for version in self.store.versions(name):
            try:
                out.append((version, self.store.manifest(name, version)))
            except (StoreError, ValueError) as exc:
                out.append((version, f"{type(exc).__name__}: {exc}"))
        return out, self.store.production(name)

    def state(self, name: str) -> dict[str, Any]:
        """What the service serves for a model right now."""
        reg = self.registry
        return {
            "name": name,
            "default_version": reg.default_version.get(name),
            "served_versions": reg.versions_of(name),
            "rejected": {str(v): r for (n, v), r in sorted(reg.rejected.items()) if n == name},
        }

    def _require(self, name: str, expect: int | None = None) -> dict[str, Any]:
        state = self.state(name)
        if state["default_version"] is None:
            raise UnknownModelError(f"no model named {name!r} in the store")
        if expect is not None and state["default_version"] != expect:
            reason = self.registry.rejected.get((name, expect), "it could not be loaded")
            raise ArtifactRefusedError(
                f"{name} v{expect} is production in the store but the service refused it "
                f"({reason}); v{state['default_version']} keeps serving"
            )
        return state


def _log_default(name: str, default: int, old_default: int | None, old_ok: bool) -> None:
    if old_default is None:  # a first load: nothing was served before
        log.info("model %s: serving v%s", name, default)
    elif not old_ok:
        log.info("model %s: serving v%s (v%s was not served)", name, default, old_default)
    else:
        log.info("model %s: now serving v%s (was v%s)", name, default, old_default)


def check_name(name: str) -> None:
    try:
        validate_name(name)
    except InvalidNameError as exc:
        raise InvalidModelNameError(str(exc)) from None


async def store_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a store operation in a thread; its errors become domain errors of the service."""
    try:
        return await asyncio.to_thread(fn, *args)
    except InvalidNameError as exc:
        raise InvalidModelNameError(str(exc)) from None
    except ModelNotFoundError as exc:
        raise UnknownVersionError(str(exc)) from None
    except IntegrityError as exc:
        raise ArtifactRefusedError(str(exc)) from None
    except StoreError as exc:
        raise LifecycleConflictError(str(exc)) from None
