"""Which model versions are served: one immutable record per served version, and the
registry that holds them with each model's production version.

A :class:`ServedModel` exists only once its version is ready (loaded into the executor, its
request model, encoder and batcher built), so none of its fields is optional. A version the
service knows but does not serve (still loading, or failed) is an :class:`Unserved` record.
Records never change: a hot swap replaces them in one synchronous step (:meth:`Registry.switch`)
and flags the swapped-out ones as retired, which the request path checks to re-resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from serving.codecs.schemas import PredictRequestBase, schema_title
from serving.core.batcher import MicroBatcher
from serving.core.errors import ModelUnavailableError, UnknownModelError, UnknownVersionError
from serving.execution.executor import ModelKey
from serving.store import Manifest

if TYPE_CHECKING:  # the encoder lives with the request path, which imports this module
    from serving.core.dataplane import RowEncoder
    from serving.core.routing import Route


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True)
class Retirement:
    """The one mutable bit of a served version: set when a swap takes it out of service.

    Shared between the frozen record and the registry, so requests already holding the
    record see it without the record changing."""

    retired: bool = False


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model version that is ready and served."""

    manifest: Manifest
    runtime: str
    """Which runtime serves it (a serving.execution.runtime.RuntimeName; typed as text so
    readers that default a missing one keep type-checking)."""
    request_model: type[PredictRequestBase]
    encoder: RowEncoder
    batcher: MicroBatcher
    class_keys: list[str]
    title: str
    """Stem of its OpenAPI schema names (unique among served versions)."""
    all_numeric: bool
    """Every feature is a float: large ``rows`` bodies may take the bulk lane."""
    warnings: list[str] = field(default_factory=list)
    """Served, but worth a look: e.g. trained with another scikit-learn version."""
    explainer: MicroBatcher | None = None
    """Batches the version's explain requests (apart from plain predictions, which they would
    slow down); None when it cannot explain, and ``unexplained`` says why."""
    unexplained: str | None = None
    retirement: Retirement = field(default_factory=Retirement, compare=False, repr=False)

    @property
    def key(self) -> ModelKey:
        return (self.manifest.name, self.manifest.version)

    @property
    def retired(self) -> bool:
        """Swapped out: no longer resolvable; requests that still hold it are re-resolved."""
        return self.retirement.retired

    @property
    def batchers(self) -> tuple[MicroBatcher, ...]:
        """Every batcher with work for this version (drained before it is unloaded)."""
        if self.explainer is None:
            return (self.batcher,)
        return (self.batcher, self.explainer)

    @property
    def state(self) -> ModelState:
        return ModelState.READY

    @property
    def error(self) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Unserved:
    """A version the service knows (its manifest was read) but does not serve, and why."""

    manifest: Manifest
    state: ModelState
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> ModelKey:
        return (self.manifest.name, self.manifest.version)

    @property
    def runtime(self) -> str | None:
        return None

    @property
    def retired(self) -> bool:
        return False


Known = ServedModel | Unserved
"""A version the service knows about: served or not."""


class Registry:
    """The known versions, the production version per name, and what could not be read."""

    def __init__(self) -> None:
        self.models: dict[ModelKey, Known] = {}
        self.default_version: dict[str, int] = {}
        """Per name, the version answering requests that give none (production)."""
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
        self.routes: dict[str, Route] = {}
        """Models in a traffic experiment (serving.core.routing): how their requests that name no
        version are shared among versions, and shadowed."""

    # -- queries -------------------------------------------------------------------------------

    def ready_models(self) -> list[ServedModel]:
        return [s for s in self.models.values() if isinstance(s, ServedModel)]

    def is_ready(self, key: ModelKey) -> bool:
        return isinstance(self.models.get(key), ServedModel)

    def versions_of(self, name: str) -> list[int]:
        return sorted(v for (n, v) in self.models if n == name)

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
            raise UnknownVersionError(
                f"model {name!r} has no served version {version};"
                f" served: {', '.join(map(str, self.versions_of(name))) or 'none'}"
            )
        if not isinstance(served, ServedModel):
            raise ModelUnavailableError(
                f"model {name!r} v{version} is not available: {served.error or served.state}"
            )
        return served

    def unique_title(self, manifest: Manifest) -> str:
        """Names like "a-b" and "a_b" share a title; OpenAPI schema names must not clash."""
        key = (manifest.name, manifest.version)
        taken = {s.title for k, s in self.models.items() if isinstance(s, ServedModel) and k != key}
        title = schema_title(manifest)
        while title in taken:
            title += "_"
        return title

    # -- changes -------------------------------------------------------------------------------

    def add(self, record: Known) -> None:
        self.models[record.key] = record

    def switch(
        self, name: str, default: int, loaded: dict[ModelKey, ServedModel], retired: list[Known]
    ) -> None:
        """Hot swap, in one synchronous step (no await) so no request sees it half done: the
        swapped-out records leave (flagged retired), the loaded ones join, production moves."""
        for record in retired:
            self.models.pop(record.key, None)
        self.retire(retired)
        self.models.update(loaded)
        self.default_version[name] = default

    def forget(self, name: str) -> list[Known]:
        """Drop a model entirely (gone from the store or unloaded); its records, retired."""
        records = [s for k, s in self.models.items() if k[0] == name]
        for record in records:
            del self.models[record.key]
        self.default_version.pop(name, None)
        self.routes.pop(name, None)
        self.broken_names.pop(name, None)
        self.store_problems.pop(name, None)
        self.forget_reports(name, keep=set())
        self.retire(records)
        return records

    def forget_reports(self, name: str, keep: set[int]) -> None:
        """Drop the load failures reported for a model's versions not in ``keep``."""
        for reports in (self.rejected, self.unreadable):
            for key in [k for k in reports if k[0] == name and k[1] not in keep]:
                del reports[key]

    def report_failures(
        self, default: ModelKey, current: dict[ModelKey, Known], failures: dict[ModelKey, str]
    ) -> None:
        """Record why versions of a model failed to load, by what it means for its readiness
        (``default``: the version it serves; ``current``: its records before the load)."""
        for key, reason in failures.items():
            if key in current:  # a model that failed before failed again
                failed = current[key]
                self.add(Unserved(failed.manifest, ModelState.FAILED, reason, failed.warnings))
            elif key == default:  # nothing else to serve: answer 503, not ready
                self.unreadable[key] = reason
            else:  # an older version keeps serving: reported, still ready
                self.rejected[key] = reason

    @staticmethod
    def retire(records: list[Known]) -> None:
        for record in records:
            if isinstance(record, ServedModel):
                record.retirement.retired = True
