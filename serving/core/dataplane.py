"""The transport-agnostic core: which models are served, request bytes to rows, rows to
predictions.

Routes stay thin: they hand the body bytes and the model name/version to :class:`DataPlane`
and turn its results (or its domain errors) into responses.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from pydantic import ValidationError

from serving.codecs.bulk_rows import parse_numeric_rows
from serving.core.admission import admit, current_deadline, deadline_in, within
from serving.core.errors import (
    ErrorDetail,
    InvalidInputError,
    MalformedRequestError,
    NotReadyError,
)
from serving.core.readiness import readiness
from serving.core.registry import Known, ModelState, Registry, ServedModel, Unserved
from serving.execution.executor import Executor, ModelKey
from serving.execution.runtime import FloatArray, Prediction
from serving.settings import Settings
from serving.store import FeatureKind, Manifest, ModelStore, Task

if TYPE_CHECKING:  # the loader builds records with this module's RowEncoder
    from serving.core.batcher import Slots
    from serving.core.loading import Loader

# Re-exported: the request path and its transports import them from here.
__all__ = [
    "DataPlane",
    "Executor",
    "Known",
    "ModelState",
    "PredictionResult",
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


@dataclass(frozen=True)
class PredictionResult:
    model: str
    version: int
    prediction: Prediction
    class_keys: list[str]
    with_probabilities: bool
    warnings: Sequence[str] = ()
    """Input features of this request outside their training range (from the batcher's
    observer: see serving.observe.observability)."""

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "predictions": self.prediction.predictions.tolist(),
        }
        probabilities = self.prediction.probabilities
        if self.with_probabilities and probabilities is not None:
            keys = self.class_keys
            body["probabilities"] = [
                dict(zip(keys, row, strict=True)) for row in probabilities.tolist()
            ]
        if self.warnings:
            body["warnings"] = list(self.warnings)
        return orjson.dumps(body)


def _class_key(label: object) -> str:
    """Probability keys: text labels as they are, other labels as JSON writes them
    (``1``, ``2.5``, ``true``), so a key reads like the matching prediction."""
    return label if isinstance(label, str) else orjson.dumps(label).decode()


def _refuse_non_finite(prediction: Prediction) -> None:
    """Inputs far outside the training range can overflow the model (a scaler times 1e308):
    its output is then NaN or infinite, which JSON cannot carry. Say so, row by row."""
    values, probabilities = prediction.predictions, prediction.probabilities
    if (values.dtype.kind != "f" or np.isfinite(values).all()) and (
        probabilities is None or np.isfinite(probabilities).all()
    ):
        return  # the usual case, checked with as few array operations as possible
    bad = np.zeros(len(prediction.predictions), dtype=bool)
    if prediction.predictions.dtype.kind == "f":
        bad |= ~np.isfinite(prediction.predictions)
    if prediction.probabilities is not None:
        bad |= ~np.isfinite(prediction.probabilities).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise InvalidInputError(
            "the model's output is not a finite number for some rows; their values are far "
            "outside the training ranges (see GET /models/{name})",
            [ErrorDetail((i,), "output is NaN or infinite for this row") for i in rows[:50]],
        )


def _details(error: ValidationError) -> list[ErrorDetail]:
    return [
        ErrorDetail(loc=tuple(e["loc"]), msg=e["msg"], type=e["type"])
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]


InputObserver = Callable[[ServedModel, FloatArray], None]
"""Sees the validated rows of every prediction before they are batched (which model and how
many rows, for the request's access line)."""


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
        self.input_observer: InputObserver | None = None
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
    def slots(self) -> Slots:
        return self.loader.slots

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

    # -- predicting ----------------------------------------------------------------------------

    def parse(self, served: ServedModel, body: bytes) -> tuple[FloatArray, bool]:
        """Validate a request body against the model's schema; return rows and the proba flag."""
        bulk = (
            parse_numeric_rows(body, len(served.manifest.features), self.settings.max_request_rows)
            if served.all_numeric
            else None
        )
        if bulk is not None:
            rows, want = bulk
        else:
            rows, want = self._parse_with_schema(served, body)
        if want and served.manifest.task != Task.CLASSIFICATION:
            raise InvalidInputError(
                "return_probabilities is only available for classifiers",
                [ErrorDetail(("return_probabilities",), f"{served.manifest.name} is a regressor")],
            )
        return rows, want

    def _parse_with_schema(self, served: ServedModel, body: bytes) -> tuple[FloatArray, bool]:
        assert served.request_model is not None
        assert served.encoder is not None
        try:
            request = served.request_model.model_validate_json(body)
        except ValidationError as exc:
            details = _details(exc)
            if any(d.type == "json_invalid" for d in details):
                raise MalformedRequestError("the request body is not valid JSON", details) from None
            if self.refusal_observer is not None:
                self.refusal_observer(served, details)
            raise InvalidInputError(
                "the request does not match the model's input schema", details
            ) from None
        want = request.return_probabilities
        instances = getattr(request, "instances", None)
        if instances is not None:
            return served.encoder.records(instances), want
        return served.encoder.rows(request.rows), want  # type: ignore[attr-defined]

    async def predict(self, served: ServedModel, rows: FloatArray, want: bool) -> PredictionResult:
        """Run validated rows through the model's batcher."""
        assert served.batcher is not None
        if self.executor is None:
            raise NotReadyError("the inference executor is not running")
        settings = self.settings
        admit(served.batcher, len(rows), settings.max_queue_rows, settings.retry_after_s)
        observer = self.input_observer
        if observer is not None:
            observer(served, rows)
        deadline = current_deadline.get() or deadline_in(settings.request_timeout_s)
        prediction = await within(served.batcher.submit(rows, want), deadline)
        return PredictionResult(
            served.key[0], served.key[1], prediction, served.class_keys, want, prediction.warnings
        )

    async def predict_json(self, served: ServedModel, body: bytes) -> bytes:
        """Request body in, response body out: what every predict transport calls."""
        if served.retired:
            # It was swapped out while this request was on its way (e.g. reading the body):
            # production answers, or a clean 404 when the model is gone.
            served = self.resolve(served.key[0])
        rows, want = self.parse(served, body)
        result = await self.predict(served, rows, want)
        _refuse_non_finite(result.prediction)
        return result.to_json()
