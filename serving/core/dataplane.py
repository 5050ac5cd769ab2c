"""The transport-agnostic core: which models are served, and what serving each needs.

Requests go through :func:`serving.core.predictor.answer` (decode, predict, encode), with
the codec of their API.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import orjson

from serving.codecs.schemas import PredictRequestBase, build_request_model, schema_title
from serving.core.batcher import MicroBatcher, Slots
from serving.core.errors import (
    ArtifactRefusedError,
    ErrorDetail,
    ModelUnavailableError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool, ModelKey
from serving.execution.runtime import FloatArray, LoadedModel, Prediction, RuntimeName, load
from serving.settings import Settings
from serving.store import FeatureKind, Manifest, ModelStore, StoreError

log = logging.getLogger("servewell")


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Executor(Protocol):
    size: int

    @property
    def up(self) -> bool: ...

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool
    ) -> asyncio.Future[Prediction]: ...

    async def load_model(self, key: ModelKey) -> RuntimeName: ...

    async def unload_model(self, key: ModelKey) -> None: ...

    def close(self) -> None: ...


def serving_sklearn_version() -> str:
    """The scikit-learn version of this installation (read without importing sklearn)."""
    return importlib.metadata.version("scikit-learn")


class RowEncoder:
    """Validated records or positional rows -> one float64 array in feature order.

    Categorical values become their index in the manifest's categories, booleans 0/1 and
    nulls NaN (see serving.execution.runtime for the reverse).
    """

    def __init__(self, manifest: Manifest) -> None:
        names = manifest.feature_names
        self._width = len(names)
        getter = operator.itemgetter(*names)
        self._record: Callable[[dict[str, Any]], Sequence[Any]] = (
            getter if len(names) > 1 else lambda record: (getter(record),)
        )
        self._categorical = {
            i: {c: float(n) for n, c in enumerate(f.categories or [])}
            for i, f in enumerate(manifest.features)
            if f.kind == FeatureKind.CATEGORICAL
        }

    def records(self, records: list[dict[str, Any]]) -> FloatArray:
        return self.rows(list(map(self._record, records)))

    def rows(self, rows: Sequence[Sequence[Any]]) -> FloatArray:
        if not self._categorical:
            return np.array(rows, dtype=np.float64).reshape(len(rows), self._width)
        table = np.array(rows, dtype=object).reshape(len(rows), self._width)
        for i, index in self._categorical.items():
            table[:, i] = [np.nan if v is None else index[v] for v in table[:, i]]
        return table.astype(np.float64)


@dataclass
class ServedModel:
    """One model version the service knows about, and its state."""

    manifest: Manifest
    state: ModelState = ModelState.LOADING
    error: str | None = None
    request_model: type[PredictRequestBase] | None = None
    encoder: RowEncoder | None = None
    batcher: MicroBatcher | None = None
    class_keys: list[str] = field(default_factory=list)
    runtime: RuntimeName | None = None
    """Which runtime serves it (known once loaded)."""
    warnings: list[str] = field(default_factory=list)
    """Served, but worth a look: e.g. trained with another scikit-learn version."""
    title: str | None = None
    """Stem of its OpenAPI schema names (unique among served versions)."""
    retired: bool = False
    """Swapped out: no longer resolvable; requests that still hold it are re-resolved."""
    all_numeric: bool = False
    """Every feature is a float: large ``rows`` bodies may take the bulk lane."""

    @property
    def key(self) -> ModelKey:
        return (self.manifest.name, self.manifest.version)


def _class_key(label: object) -> str:
    """Probability keys: text labels as they are, other labels as JSON writes them
    (``1``, ``2.5``, ``true``), so a key reads like the matching prediction."""
    return label if isinstance(label, str) else orjson.dumps(label).decode()


class DataPlane:
    """Loads the served models into an executor and answers predictions through batchers."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.store, signing_key=settings.signing_key_bytes)
        self.models: dict[ModelKey, ServedModel] = {}
        self.default_version: dict[str, int] = {}
        self.executor: Executor | None = None
        self.store_error: str | None = None
        self.broken_names: dict[str, str] = {}
        """Models whose versions or production pointer could not be read."""
        self.store_problems: dict[str, str] = {}
        """Models whose store entries became unreadable while a version of theirs keeps
        serving (reported, but the service stays ready)."""
        self.unreadable: dict[ModelKey, str] = {}
        """Versions that should be served but whose manifest could not be read."""
        self.rejected: dict[ModelKey, str] = {}
        """Versions the store asks for that failed to load during a hot swap, while an older
        version keeps serving (reported, but the service stays ready)."""
        self.slots: Slots | None = None
        self.sklearn_version = serving_sklearn_version()
        self.refusal_observer: Callable[[ServedModel, list[ErrorDetail]], None] | None = None
        """Sees the problems of every request body that does not match its model's schema
        (e.g. to count categories unseen in training)."""

    # -- loading -------------------------------------------------------------------------------

    def _discover(self) -> None:
        """Pick the versions to serve: production (or the latest when none is promoted)."""
        for name in self.store.names():
            try:
                versions = self.store.versions(name)
                production = self.store.production(name)
            except (StoreError, OSError, ValueError) as exc:  # e.g. a corrupt production pointer
                self.broken_names[name] = f"{type(exc).__name__}: {exc}"
                log.error("not serving %s: %s", name, self.broken_names[name])
                continue
            default = production if production in versions else versions[-1]
            self.default_version[name] = default
            chosen = versions if self.settings.serve_all_versions else [default]
            for version in chosen:
                try:
                    manifest = self.store.manifest(name, version)
                except (StoreError, ValueError, OSError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    self.unreadable[(name, version)] = reason
                    log.error("not serving %s v%s: %s", name, version, reason)
                    continue
                self.models[(name, version)] = ServedModel(manifest)

    async def start(self) -> None:
        """Verify and load every served model, start the executor, build request models."""
        if not self.store.root.is_dir():
            log.error("the model store %s does not exist; train models into it", self.store.root)
        try:
            await asyncio.to_thread(self._discover)
        except (StoreError, OSError) as exc:
            self.store_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot read the model store %s: %s", self.settings.store, exc)
        inline = self.settings.inference == "inline"
        policy = self.settings.runtime_policy()
        loaded: dict[ModelKey, LoadedModel] = {}
        for key, served in self.models.items():
            try:
                self.check_environment(served)
                if inline:
                    loaded[key] = await asyncio.to_thread(load, self.store, *key, policy)
                    served.runtime = loaded[key].runtime
                else:  # workers load; fail fast here on a bad hash
                    await asyncio.to_thread(self.store.verify, *key)
            except Exception as exc:
                self._fail(served, f"{type(exc).__name__}: {exc}")
        good = [k for k, s in self.models.items() if s.state != ModelState.FAILED]
        if inline:
            store = self.store

            def loader(key: ModelKey) -> LoadedModel:
                return load(store, *key, policy)

            self.executor = InlineExecutor(loaded, loader)
        else:
            pool = InferencePool(
                self.store.root,
                good,
                self.settings.pool_size,
                self.settings.startup_timeout_s,
                signing_key=self.settings.signing_key_bytes,
                policy=policy,
                hang_timeout=self.settings.worker_hang_timeout_s,
            )
            self.executor = pool
            await pool.start()
            for key, reason in pool.failed.items():
                self._fail(self.models[key], reason)
            for key, runtime in pool.runtimes.items():
                self.models[key].runtime = runtime
        self.slots = Slots(self.executor.size)
        for served in self.models.values():
            if served.state == ModelState.FAILED:
                continue
            self.make_ready(served)
            log.info("serving %s v%s with %s", *served.key, served.runtime)

    def check_environment(self, served: ServedModel) -> None:
        """Flag a model trained with another scikit-learn; refuse it when that is strict."""
        trained = served.manifest.environment.sklearn
        if trained == self.sklearn_version:
            return
        message = f"trained with scikit-learn {trained}, serving with {self.sklearn_version}"
        if self.settings.strict_sklearn_version:
            raise ArtifactRefusedError(f"{message}; refused (strict_sklearn_version)")
        log.warning("%s v%s: %s", *served.key, message)
        served.warnings = [message]

    def _fail(self, served: ServedModel, reason: str) -> None:
        served.state = ModelState.FAILED
        served.error = reason
        log.error("not serving %s v%s: %s", *served.key, reason)

    def _unique_title(self, served: ServedModel) -> str:
        # Names like "a-b" and "a_b" share a title; OpenAPI schema names must not clash.
        taken = {s.title for s in self.models.values() if s is not served}
        title = schema_title(served.manifest)
        while title in taken:
            title += "_"
        return title

    def make_ready(self, served: ServedModel) -> None:
        """Build what serving a loaded model needs (request model, encoder, batcher)."""
        executor = self.executor
        slots = self.slots
        assert executor is not None
        assert slots is not None
        key = served.key
        title = served.title = self._unique_title(served)

        def run(rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
            return executor.submit(key, rows, want)

        served.request_model = build_request_model(
            served.manifest, self.settings.max_request_rows, title
        )
        served.encoder = RowEncoder(served.manifest)
        served.batcher = MicroBatcher(
            run, slots, self.settings.max_batch_rows, self.settings.max_batch_delay_ms / 1000
        )
        served.class_keys = [_class_key(c) for c in served.manifest.target.classes or []]
        served.all_numeric = all(f.kind == FeatureKind.NUMERIC for f in served.manifest.features)
        served.state = ModelState.READY

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()

    # -- queries -------------------------------------------------------------------------------

    def ready_models(self) -> list[ServedModel]:
        return [s for s in self.models.values() if s.state == ModelState.READY]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every model that should be served is loaded and the executor is up."""
        executor_up = self.executor is not None and self.executor.up
        states: dict[str, dict[str, Any]] = {}
        for (name, version), served in self.models.items():
            entry: dict[str, Any] = {"state": served.state.value}
            if served.error:
                entry["error"] = served.error
            if served.warnings:
                entry["warnings"] = served.warnings
            states.setdefault(name, {})[str(version)] = entry
        for (name, version), reason in self.rejected.items():
            states.setdefault(name, {})[str(version)] = {"state": "rejected", "error": reason}
        for (name, version), reason in self.unreadable.items():
            states.setdefault(name, {})[str(version)] = {"state": "failed", "error": reason}
        for name, reason in self.store_problems.items():
            states.setdefault(name, {})["production"] = {"state": "rejected", "error": reason}
        for name, reason in self.broken_names.items():
            states.setdefault(name, {})["production"] = {"state": "failed", "error": reason}
        # A typo in the store path must not pass for a healthy service that 404s everything.
        empty = not self.models and not self.unreadable and not self.broken_names
        ok = (
            executor_up
            and not empty
            and self.store_error is None
            and not self.unreadable
            and not self.broken_names
            and all(s.state == ModelState.READY for s in self.models.values())
        )
        detail: dict[str, Any] = {
            "ready": ok,
            "executor": {
                "kind": self.settings.inference,
                "up": executor_up,
                "size": self.executor.size if self.executor else 0,
                # While a dead or hung worker is replaced: fewer ready than size.
                "workers_ready": getattr(self.executor, "workers_ready", int(executor_up)),
                "replacing": getattr(self.executor, "replacing", 0),
                "restarts": getattr(self.executor, "restarts", 0),
            },
            "models": states,
        }
        if self.store_error:
            detail["store_error"] = self.store_error
        elif empty:
            detail["store_error"] = (
                f"no models to serve: the store {self.store.root} is empty or missing"
            )
        return ok, detail

    def resolve(self, name: str, version: int | None = None) -> ServedModel:
        """The served model for a name and optional version, or a domain error."""
        if name in self.broken_names:
            raise ModelUnavailableError(
                f"model {name!r} is not available: {self.broken_names[name]}"
            )
        if name not in self.default_version:
            raise UnknownModelError(f"no model named {name!r} is served")
        if version is None:
            version = self.default_version[name]
        served = self.models.get((name, version))
        if (name, version) in self.unreadable:
            raise ModelUnavailableError(
                f"model {name!r} v{version} is not available: {self.unreadable[(name, version)]}"
            )
        if served is None:
            served_versions = sorted(v for (n, v) in self.models if n == name)
            raise UnknownVersionError(
                f"model {name!r} has no served version {version};"
                f" served: {', '.join(map(str, served_versions)) or 'none'}"
            )
        if served.state != ModelState.READY:
            raise ModelUnavailableError(
                f"model {name!r} v{version} is not available: {served.error or served.state}"
            )
        return served
