"""Getting model versions served: discovery in the store, environment checks, loading into
the executor, and building the ready record (request model, encoder, batcher).

:meth:`Loader.start` does it for every version at startup; :meth:`Loader.load` for one
version during a hot swap (serving.core.lifecycle). Neither decides what production is
beyond discovery's first pick: the registry holds that.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging

import orjson

from serving.codecs.schemas import build_request_model
from serving.core.batcher import MicroBatcher, Slots
from serving.core.dataplane import DataPlane, RowEncoder
from serving.core.errors import ArtifactRefusedError
from serving.core.registry import ModelState, Registry, ServedModel, Unserved
from serving.execution.executor import Executor, ModelKey
from serving.execution.factory import build_executor, resolve_inference
from serving.execution.runtime import FloatArray, Prediction, RuntimeName
from serving.settings import Settings
from serving.store import FeatureKind, Manifest, ModelStore, StoreError

log = logging.getLogger("servewell")


def _class_key(label: object) -> str:
    """Probability keys: text labels as they are, other labels as JSON writes them
    (``1``, ``2.5``, ``true``), so a key reads like the matching prediction."""
    return label if isinstance(label, str) else orjson.dumps(label).decode()


def serving_sklearn_version() -> str:
    """The scikit-learn version of this installation (read without importing sklearn)."""
    return importlib.metadata.version("scikit-learn")


class Loader:
    """Loads versions into one executor and registers them; see the module docstring."""

    def __init__(
        self, settings: Settings, store: ModelStore, executor: Executor, registry: Registry
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.registry = registry
        self.slots = Slots(executor.size)
        """Predicted batches in flight across every model: the executor's capacity."""
        self.explain_slots = Slots(executor.size)
        """Explained batches in flight, counted apart: a prediction never waits for a slot an
        explanation holds (about a millisecond a row, and 2 to 3 s for a process's first, which
        imports scikit-learn and shap). They run in a thread of their own: inline, in the server
        process; in a pool, in each worker."""
        self.sklearn_version = serving_sklearn_version()
        self.store_error: str | None = None
        """Why the store could not be read at startup."""

    def discover(self) -> None:
        """Pick the versions to serve: production (or the latest when none is promoted)."""
        registry = self.registry
        for name in self.store.names():
            try:
                versions = self.store.versions(name)
                production = self.store.production(name)
            except (StoreError, OSError, ValueError) as exc:  # e.g. a corrupt production pointer
                registry.broken_names[name] = f"{type(exc).__name__}: {exc}"
                log.error("not serving %s: %s", name, registry.broken_names[name])
                continue
            default = production if production in versions else versions[-1]
            registry.default_version[name] = default
            chosen = versions if self.settings.serve_all_versions else [default]
            for version in chosen:
                try:
                    manifest = self.store.manifest(name, version)
                except (StoreError, ValueError, OSError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    registry.unreadable[(name, version)] = reason
                    log.error("not serving %s v%s: %s", name, version, reason)
                    continue
                registry.add(Unserved(manifest, ModelState.LOADING))

    async def start(self) -> None:
        """Verify and load every discovered version, start the executor, build the records."""
        if not self.store.root.is_dir():
            log.error("the model store %s does not exist; train models into it", self.store.root)
        try:
            await asyncio.to_thread(self.discover)
        except (StoreError, OSError) as exc:
            self.store_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot read the model store %s: %s", self.settings.store, exc)
        # Worker processes load on their own: fail fast here on a bad hash. Inline, loading
        # in this process verifies anyway.
        verify = self.settings.inference != "inline"
        pending: list[Unserved] = []
        for record in list(self.registry.models.values()):
            assert isinstance(record, Unserved)  # nothing is served before startup
            try:
                record = Unserved(
                    record.manifest, record.state, warnings=self.check_environment(record.manifest)
                )
                self.registry.add(record)
                if verify:
                    await asyncio.to_thread(self.store.verify, *record.key)
            except Exception as exc:
                self._fail(record, f"{type(exc).__name__}: {exc}")
            else:
                pending.append(record)
        opened = await self.executor.open([r.key for r in pending])
        for record in pending:
            if record.key in opened.failed:
                self._fail(record, opened.failed[record.key])
                continue
            runtime = opened.runtimes.get(record.key, "sklearn")
            self.registry.add(self.make_ready(record.manifest, runtime, record.warnings))
            log.info("serving %s v%s with %s", *record.key, runtime)

    async def load(self, key: ModelKey) -> ServedModel:
        """Verify and load one version into the executor: its ready record (not registered:
        the caller switches it in). Errors propagate with their reason."""
        manifest = await asyncio.to_thread(self.store.verify, *key)
        warnings = self.check_environment(manifest)
        runtime = await self.executor.load_model(key)
        return self.make_ready(manifest, runtime, warnings)

    def check_environment(self, manifest: Manifest) -> list[str]:
        """Flag a model trained with another scikit-learn (its warnings); refuse it when that
        is strict."""
        trained = manifest.environment.sklearn
        if trained == self.sklearn_version:
            return []
        message = f"trained with scikit-learn {trained}, serving with {self.sklearn_version}"
        if self.settings.strict_sklearn_version:
            raise ArtifactRefusedError(f"{message}; refused (strict_sklearn_version)")
        log.warning("%s v%s: %s", manifest.name, manifest.version, message)
        return [message]

    def _fail(self, record: Unserved, reason: str) -> None:
        self.registry.add(Unserved(record.manifest, ModelState.FAILED, reason, record.warnings))
        log.error("not serving %s v%s: %s", *record.key, reason)

    def make_ready(
        self, manifest: Manifest, runtime: RuntimeName, warnings: list[str]
    ) -> ServedModel:
        """Build what serving a loaded version needs (request model, encoder, batcher)."""
        executor = self.executor
        key = (manifest.name, manifest.version)

        def run(rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
            return executor.submit(key, rows, want)

        def explain(rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
            return executor.submit(key, rows, want, explain=True)

        settings = self.settings
        unexplained = unexplained_reason(manifest)
        delay = settings.max_batch_delay_ms / 1000
        title = self.registry.unique_title(manifest)
        return ServedModel(
            manifest=manifest,
            runtime=runtime,
            request_model=build_request_model(manifest, settings.max_request_rows, title),
            encoder=RowEncoder(manifest),
            batcher=MicroBatcher(run, self.slots, settings.max_batch_rows, delay),
            class_keys=[_class_key(c) for c in manifest.target.classes or []],
            title=title,
            all_numeric=all(f.kind == FeatureKind.NUMERIC for f in manifest.features),
            warnings=warnings,
            explainer=(
                MicroBatcher(explain, self.explain_slots, settings.max_explain_rows, delay)
                if unexplained is None
                else None
            ),
            unexplained=unexplained,
        )


def unexplained_reason(manifest: Manifest) -> str | None:
    """Why the version's predictions cannot be explained here, or None when they can."""
    explain = manifest.explain
    if explain is None:
        return (
            "this version was trained before explanations existed; retrain it "
            "(make train MODEL=" + manifest.name + ")"
        )
    if explain.status != "ok":
        return explain.reason or f"{manifest.estimator} has no exact explanation method"
    if not manifest.explainable:
        return "the manifest does not list the explanation background"
    if explain.method == "tree" and importlib.util.find_spec("shap") is None:
        return (
            "tree models are explained with shap, which is not installed: "
            "pip install 'servewell[explain]'"
        )
    return None


def build_dataplane(
    settings: Settings, store: ModelStore | None = None, executor: Executor | None = None
) -> DataPlane:
    """A data plane not started yet, with the executor the settings ask for (or ``executor``,
    then the one they name)."""
    store = store or ModelStore(settings.store, signing_key=settings.signing_key_bytes)
    if executor is None:
        settings = resolve_inference(settings, store)
        executor = build_executor(settings, store)
    return DataPlane(settings, Loader(settings, store, executor, Registry()))
