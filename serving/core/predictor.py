"""One request path for every transport: decode the request, predict, encode the answer.

A codec (the typed JSON API in :mod:`serving.codecs.typed`, the Open Inference Protocol in
:mod:`serving.codecs.oip.service`) turns request bytes into rows and a prediction into
response bytes; :func:`answer` runs the steps between, with the request's
:class:`~serving.core.context.RequestContext` passed down to admission and prediction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from serving.core.admission import admit, deadline_in, within
from serving.core.context import RequestContext
from serving.core.errors import ErrorDetail, InvalidInputError, NotReadyError
from serving.execution.runtime import FloatArray, Prediction

if TYPE_CHECKING:
    from serving.core.dataplane import DataPlane, ServedModel

Headers = Sequence[tuple[bytes, bytes]]
"""Request or response headers as raw name (lower case) and value pairs."""


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


class Decoded(Protocol):
    """What a codec read from a request: the rows, and whether probabilities are wanted."""

    @property
    def rows(self) -> FloatArray: ...

    @property
    def want_probabilities(self) -> bool: ...


D = TypeVar("D", bound=Decoded)


class Codec(Protocol[D]):
    """Request bytes to rows, and a prediction to response bytes, in one API's terms."""

    transport: str
    """Names the API in captured predictions (``rest``, ``v2``)."""

    def decode(self, served: ServedModel, body: bytes, headers: Headers) -> D:
        """Validate ``body`` against the model; domain errors for what does not fit."""
        ...

    def encode(self, decoded: D, result: PredictionResult) -> tuple[bytes, Headers]:
        """The response body and its content headers."""
        ...


async def answer(
    codec: Codec[D],
    dataplane: DataPlane,
    served: ServedModel,
    body: bytes,
    headers: Headers,
    ctx: RequestContext,
) -> tuple[bytes, Headers]:
    """Request body in, response body and content headers out: what every transport calls."""
    if served.retired:
        # It was swapped out while this request was on its way (e.g. reading the body):
        # production answers, or a clean 404 when the model is gone.
        served = dataplane.resolve(served.key[0])
    decoded = codec.decode(served, body, headers)
    result = await predict(dataplane, served, decoded.rows, decoded.want_probabilities, ctx)
    refuse_non_finite(result.prediction)
    payload, content_headers = codec.encode(decoded, result)
    # Which version answered, whatever the transport (also in the body: version, model_version).
    headers = [*content_headers, (b"x-model-version", str(result.version).encode())]
    capture = dataplane.capture
    if capture is not None:
        latency = time.perf_counter() - ctx.started
        capture.offer(
            served.manifest,
            ctx.request_id,
            latency,
            codec.transport,
            decoded.rows,
            result.prediction,
            served.class_keys,
        )
    return payload, headers


async def predict(
    dataplane: DataPlane, served: ServedModel, rows: FloatArray, want: bool, ctx: RequestContext
) -> PredictionResult:
    """Run validated rows through the model's batcher, within the request's deadline."""
    if dataplane.executor is None:
        raise NotReadyError("the inference executor is not running")
    settings = dataplane.settings
    admit(served.batcher, len(rows), settings.max_queue_rows, settings.retry_after_s, ctx.ticket)
    manifest = served.manifest  # not served.key: no tuple per request
    ctx.model = manifest.name
    ctx.version = str(manifest.version)
    ctx.rows += len(rows)
    deadline = ctx.deadline or deadline_in(settings.request_timeout_s)
    prediction = await within(served.batcher.submit(rows, want), deadline)
    return PredictionResult(
        manifest.name, manifest.version, prediction, served.class_keys, want, prediction.warnings
    )


def refuse_non_finite(prediction: Prediction) -> None:
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
        bad_rows = np.flatnonzero(bad).tolist()
        raise InvalidInputError(
            "the model's output is not a finite number for some rows; their values are far "
            "outside the training ranges (see GET /models/{name})",
            [ErrorDetail((i,), "output is NaN or infinite for this row") for i in bad_rows[:50]],
        )
