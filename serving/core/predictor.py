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
from serving.core.batcher import MicroBatcher
from serving.core.context import RequestContext
from serving.core.errors import (
    ErrorDetail,
    InvalidInputError,
    NotExplainableError,
    NotReadyError,
    OverloadedError,
)
from serving.core.registry import ServedModel
from serving.core.shadow import Shadowed
from serving.execution.runtime import FloatArray, Prediction

if TYPE_CHECKING:
    from serving.core.dataplane import DataPlane
    from serving.core.routing import Route
    from serving.settings import Settings
    from serving.store import Manifest


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
    manifest: Manifest | None = None
    """The version that answered (what explanations are laid out by)."""


class Decoded(Protocol):
    """What a codec read from a request: the rows, whether probabilities are wanted, and
    whether (and where, for the error) explanations are."""

    @property
    def rows(self) -> FloatArray: ...

    @property
    def want_probabilities(self) -> bool: ...

    @property
    def explain(self) -> tuple[str | int, ...] | None:
        """Where the request asked for explanations (a path into it), or None."""
        ...


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
    routed: bool = False,
) -> tuple[bytes, Headers]:
    """Request body in, response body and content headers out: what every transport calls.

    ``routed``: the request named the model but no version, so the model's traffic policy
    (serving.core.routing), if it has one, chooses the version and the shadow."""
    if served.retired:
        # It was swapped out while this request was on its way (e.g. reading the body):
        # production answers, or a clean 404 when the model is gone.
        served = dataplane.resolve(served.key[0])
    decoded = codec.decode(served, body, headers)
    # Explanations are answered by production, outside any experiment: a candidate may explain
    # in another space or not at all, and its shadow would only double the costliest work.
    experiment = routed and decoded.explain is None
    route = dataplane.registry.routes.get(served.manifest.name) if experiment else None
    rows = decoded.rows
    if route is None:
        result = await predict(
            dataplane, served, rows, decoded.want_probabilities, ctx, decoded.explain
        )
        refuse_non_finite(result.prediction)
    else:
        # Every version in an experiment takes the same inputs (the store refuses a policy
        # otherwise), so production's codec decoded the body for whichever answers.
        served = _chosen(dataplane, route, served, headers, rows)
        result = await _counted(dataplane, route, served, decoded, ctx)
    payload, content_headers = codec.encode(decoded, result)
    # Which version answered, whatever the transport (also in the body: version, model_version).
    headers = [*content_headers, (b"x-model-version", str(result.version).encode())]
    capture = dataplane.capture
    # Drawn once: a shadowed request's two answers are captured together or not at all.
    keep = capture is not None and capture.wants(served.manifest.name)
    if keep:
        assert capture is not None
        latency = time.perf_counter() - ctx.started
        capture.put(
            served.manifest,
            ctx.request_id,
            latency,
            codec.transport,
            rows,
            result.prediction,
            served.class_keys,
        )
    if route is not None and route.shadowed():
        _shadow(route, rows, decoded.want_probabilities, result, ctx, codec, keep)
    return payload, headers


def _chosen(
    dataplane: DataPlane, route: Route, production: ServedModel, headers: Headers, rows: FloatArray
) -> ServedModel:
    """The version the model's experiment gives this request (production when the chosen
    one is not served at the moment, e.g. it failed a reload)."""
    version = route.choose(headers, rows)
    if version == production.manifest.version:
        return production
    candidate = dataplane.registry.models.get((production.manifest.name, version))
    if isinstance(candidate, ServedModel) and not candidate.retired:
        return candidate
    return production


async def _counted(
    dataplane: DataPlane, route: Route, served: ServedModel, decoded: Decoded, ctx: RequestContext
) -> PredictionResult:
    """:func:`predict` with the version's requests, errors and latency counted for the
    experiment's comparison."""
    stats = route.stats[served.manifest.version]  # production or a candidate: counted
    started = time.perf_counter()
    try:
        result = await predict(
            dataplane, served, decoded.rows, decoded.want_probabilities, ctx, decoded.explain
        )
        refuse_non_finite(result.prediction)
    except (InvalidInputError, OverloadedError):
        raise  # the request's fault, or shed: not the version's
    except Exception:
        stats.done(0.0, ok=False)
        raise
    stats.done(time.perf_counter() - started, ok=True)
    return result


def _shadow(
    route: Route,
    rows: FloatArray,
    want: bool,
    result: PredictionResult,
    ctx: RequestContext,
    codec: Codec[D],
    keep: bool,
) -> None:
    """Queue the request for the shadow version, after production answered: its answer is only
    compared and captured (serving.core.shadow); nothing there ever reaches the client."""
    item = Shadowed(
        rows, result.prediction, ctx.request_id, codec.transport, keep, time.perf_counter()
    )
    route.shadow_queue.offer(item, want)


async def predict(
    dataplane: DataPlane,
    served: ServedModel,
    rows: FloatArray,
    want: bool,
    ctx: RequestContext,
    explain: tuple[str | int, ...] | None = None,
) -> PredictionResult:
    """Run validated rows through the model's batcher (its explainer's, when the request asks
    for explanations at ``explain``), within the request's deadline."""
    if dataplane.executor is None:
        raise NotReadyError("the inference executor is not running")
    settings = dataplane.settings
    batcher = served.batcher if explain is None else explainer(served, len(rows), explain, settings)
    admit(batcher, len(rows), settings.max_queue_rows, settings.retry_after_s, ctx.ticket)
    manifest = served.manifest  # not served.key: no tuple per request
    ctx.model = manifest.name
    ctx.version = str(manifest.version)
    ctx.rows += len(rows)
    deadline = ctx.deadline or deadline_in(settings.request_timeout_s)
    prediction = await within(batcher.submit(rows, want), deadline)
    return PredictionResult(
        manifest.name,
        manifest.version,
        prediction,
        served.class_keys,
        want,
        prediction.warnings,
        manifest,
    )


def explainer(
    served: ServedModel, n_rows: int, where: tuple[str | int, ...], settings: Settings
) -> MicroBatcher:
    """The batcher of the version's explain requests; a clear refusal when it has none or the
    request has too many rows."""
    batcher = served.explainer
    manifest = served.manifest
    if batcher is None:
        raise NotExplainableError(
            f"{manifest.name} v{manifest.version} cannot explain its predictions",
            [ErrorDetail(where, served.unexplained or "no explanations", "not_explainable")],
        )
    if n_rows > settings.max_explain_rows:
        raise NotExplainableError(
            f"explanations are given for at most {settings.max_explain_rows} rows per request",
            [
                ErrorDetail(
                    where,
                    f"{n_rows} rows asked; send at most {settings.max_explain_rows} per "
                    "request (SERVEWELL_MAX_EXPLAIN_ROWS), or predict without explanations",
                    "too_many_rows",
                )
            ],
        )
    return batcher


def refuse_non_finite(prediction: Prediction) -> None:
    """Inputs far outside the training range can overflow the model (a scaler times 1e308):
    its output (or a feature's contribution to it) is then NaN or infinite, which JSON cannot
    carry. Say so, row by row."""
    values, probabilities = prediction.predictions, prediction.probabilities
    explained = prediction.contributions
    if (
        (values.dtype.kind != "f" or np.isfinite(values).all())
        and (probabilities is None or np.isfinite(probabilities).all())
        and (explained is None or np.isfinite(explained.values).all())
    ):
        return  # the usual case, checked with as few array operations as possible
    bad = np.zeros(len(prediction.predictions), dtype=bool)
    if prediction.predictions.dtype.kind == "f":
        bad |= ~np.isfinite(prediction.predictions)
    if prediction.probabilities is not None:
        bad |= ~np.isfinite(prediction.probabilities).all(axis=1)
    if explained is not None:  # a finite output can still be a sum of overflowed parts
        bad |= ~np.isfinite(explained.values).all(axis=(1, 2))
    if bad.any():
        bad_rows = np.flatnonzero(bad).tolist()
        raise InvalidInputError(
            "the model's output is not a finite number for some rows; their values are far "
            "outside the training ranges (see GET /models/{name})",
            [ErrorDetail((i,), "output is NaN or infinite for this row") for i in bad_rows[:50]],
        )
