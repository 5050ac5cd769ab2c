"""The typed JSON API's codec: a body of ``instances`` (records) or ``rows`` validated against
the model's own request model, and ``{"model", "version", "predictions", ...}`` back.

All-numeric models take a bulk lane for large ``rows`` bodies
(:func:`serving.codecs.bulk_rows.parse_numeric_rows`), which skips per-value validation
objects and answers identically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from pydantic import ValidationError

from serving.codecs.bulk_rows import parse_numeric_rows
from serving.codecs.explanations import json_rows
from serving.core.errors import ErrorDetail, InvalidInputError, MalformedRequestError
from serving.core.predictor import Headers, PredictionResult
from serving.execution.runtime import FloatArray
from serving.store import Task

if TYPE_CHECKING:
    from serving.core.dataplane import DataPlane, ServedModel

_JSON = (b"content-type", b"application/json")


class TypedRequest(NamedTuple):
    rows: FloatArray
    want_probabilities: bool
    explain: tuple[str | int, ...] | None = None
    every_class: bool = False


_EXPLAIN_AT = ("explain",)


def details(error: ValidationError) -> list[ErrorDetail]:
    return [
        ErrorDetail(loc=tuple(e["loc"]), msg=e["msg"], type=e["type"])
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]


class TypedCodec:
    """The typed API over one data plane (its request limit and the observer of refused
    bodies)."""

    transport = "rest"

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def decode(self, served: ServedModel, body: bytes, headers: Headers = ()) -> TypedRequest:
        """Validate a request body against the model's schema: rows and the proba flag."""
        bulk = (
            parse_numeric_rows(
                body, len(served.manifest.features), self.dataplane.settings.max_request_rows
            )
            if served.all_numeric
            else None
        )
        request = TypedRequest(*bulk) if bulk is not None else self._with_schema(served, body)
        if request.want_probabilities and served.manifest.task != Task.CLASSIFICATION:
            raise InvalidInputError(
                "return_probabilities is only available for classifiers",
                [ErrorDetail(("return_probabilities",), f"{served.manifest.name} is a regressor")],
            )
        return request

    def _with_schema(self, served: ServedModel, body: bytes) -> TypedRequest:
        try:
            request = served.request_model.model_validate_json(body)
        except ValidationError as exc:
            problems = details(exc)
            if any(d.type == "json_invalid" for d in problems):
                raise MalformedRequestError(
                    "the request body is not valid JSON", problems
                ) from None
            observer = self.dataplane.refusal_observer
            if observer is not None:
                observer(served, problems)
            raise InvalidInputError(
                "the request does not match the model's input schema", problems
            ) from None
        want = request.return_probabilities
        explain = _EXPLAIN_AT if request.explain else None
        every = request.explain == "all"
        instances = getattr(request, "instances", None)
        if instances is not None:
            return TypedRequest(served.encoder.records(instances), want, explain, every)
        rows = served.encoder.rows(request.rows)  # type: ignore[attr-defined]
        return TypedRequest(rows, want, explain, every)

    def encode(self, decoded: TypedRequest, result: PredictionResult) -> tuple[bytes, Headers]:
        payload = to_json(result, decoded.explain is not None, decoded.every_class)
        return payload, [_JSON, (b"content-length", str(len(payload)).encode())]


def to_json(result: PredictionResult, explain: bool = False, every_class: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "predictions": result.prediction.predictions.tolist(),
    }
    probabilities = result.prediction.probabilities
    if result.with_probabilities and probabilities is not None:
        keys = result.class_keys
        body["probabilities"] = [
            dict(zip(keys, row, strict=True)) for row in probabilities.tolist()
        ]
    if result.warnings:
        body["warnings"] = list(result.warnings)
    if explain and result.manifest is not None:
        body["explanations"] = json_rows(result.manifest, result.prediction, every_class)
    return orjson.dumps(body)
