"""The transport-agnostic core: which models are served, and what serving each needs.

Requests go through :func:`serving.core.predictor.answer` (decode, predict, encode), with
the codec of their API.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.core.errors import (
    ErrorDetail,
)
from serving.core.readiness import readiness
from serving.core.registry import Known, ModelState, Registry, ServedModel, Unserved
from serving.execution.executor import Executor, ModelKey
from serving.execution.runtime import FloatArray
from serving.settings import Settings
from serving.store import FeatureKind, Manifest, ModelStore

if TYPE_CHECKING:  # the loader builds records with this module's RowEncoder
    from serving.capture.capture import Capture
    from serving.core.loading import Loader

# Re-exported: the request path and its transports import them from here.
__all__ = [
    "DataPlane",
    "Executor",
    "Known",
    "ModelState",
    "RowEncoder",
    "ServedModel",
    "Unserved",
]

log = logging.getLogger("servewell")


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


class DataPlane:
    """Answers predictions for the served models (serving.core.registry) through their
    batchers; serving.core.loading loads them (build one with
    :func:`serving.core.loading.build_dataplane`)."""

    def __init__(self, settings: Settings, loader: Loader) -> None:
        self.settings = settings
        self.loader = loader
        self.store: ModelStore = loader.store
        self.registry: Registry = loader.registry
        # Optional for the request path's check, though a data plane always has one.
        self.executor: Executor | None = loader.executor
        self.capture: Capture | None = None
        """Keeps answered requests (serving.capture), when capture is on."""
        self.refusal_observer: Callable[[ServedModel, list[ErrorDetail]], None] | None = None
        """Sees the problems of every request body that does not match its model's schema
        (e.g. to count categories unseen in training)."""

    async def start(self) -> None:
        """Verify and load every served model, start the executor, build request models."""
        await self.loader.start()

    def close(self) -> None:
        self.loader.executor.close()

    # -- the registry's state, for the routes, codecs and observability -------------------------

    @property
    def models(self) -> dict[ModelKey, Known]:
        return self.registry.models

    @property
    def default_version(self) -> dict[str, int]:
        return self.registry.default_version

    @property
    def broken_names(self) -> dict[str, str]:
        return self.registry.broken_names

    @property
    def store_problems(self) -> dict[str, str]:
        return self.registry.store_problems

    @property
    def unreadable(self) -> dict[ModelKey, str]:
        return self.registry.unreadable

    @property
    def rejected(self) -> dict[ModelKey, str]:
        return self.registry.rejected

    @property
    def store_error(self) -> str | None:
        return self.loader.store_error

    @property
    def sklearn_version(self) -> str:
        return self.loader.sklearn_version

    # -- queries -------------------------------------------------------------------------------

    def ready_models(self) -> list[ServedModel]:
        return self.registry.ready_models()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every model that should be served is loaded and the executor is up."""
        return readiness(
            self.registry, self.executor, self.settings.inference, self.store.root, self.store_error
        )

    def resolve(self, name: str, version: int | None = None) -> ServedModel:
        """The served model for a name and optional version, or a domain error."""
        return self.registry.resolve(name, version)
