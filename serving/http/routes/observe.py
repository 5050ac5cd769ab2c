"""``GET /metrics`` (Prometheus text format) and ``GET /models/{name}/drift``."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, HTTPException, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import Response

from serving.codecs.schemas import error_responses
from serving.core.errors import ModelUnavailableError, UnknownModelError
from serving.http.routes.deps import DataPlaneDep, InfoAccess
from serving.observe.drift_history import INTERVAL_S as DRIFT_INTERVAL_S
from serving.observe.observability import Observability

router = APIRouter()


def _observability(request: Request) -> Observability:
    observability: Observability = request.app.state.observability
    if observability.metrics is None:
        raise HTTPException(404, "metrics and drift tracking are off (SERVEWELL_METRICS=false)")
    return observability


@router.get(
    "/metrics",
    tags=["observability"],
    summary="Prometheus metrics of every server process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format."}},
    dependencies=[InfoAccess],
)
async def metrics(request: Request) -> Response:
    observability = _observability(request)
    registry = CollectorRegistry(auto_describe=False)
    assert observability.collector is not None
    registry.register(observability.collector)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/models/{name}/drift",
    tags=["models"],
    summary="Recent inputs vs training: share out of range and PSI per feature",
    responses={404: {"description": "Unknown model, or drift tracking is off."}},
    dependencies=[InfoAccess],
)
async def drift(name: str, request: Request, dataplane: DataPlaneDep) -> Response:
    """Over a sliding window of the most recent input rows of the model's production version
    (in this server process): per feature, the share of values outside the training range
    and the population stability index against the training deciles (PSI < 0.1: no
    significant change; 0.1-0.25: moderate; > 0.25: significant)."""
    observability = _observability(request)
    if name not in dataplane.default_version:
        raise UnknownModelError(f"no model named {name!r} is served")
    key = (name, dataplane.default_version[name])
    served = dataplane.models.get(key)
    if served is None or served.state.value != "ready":
        raise ModelUnavailableError(f"model {name!r} v{key[1]} is not available")
    observability.process_drift()  # include rows queued since the last background pass
    assert observability.drift is not None
    compute = observability.drift.report(key)
    if compute is None:
        observability.drift.track(served.manifest)
        compute = observability.drift.report(key)
        assert compute is not None
    body = await asyncio.to_thread(compute)
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/models/{name}/drift/history",
    tags=["models"],
    summary="Input drift over the last hour: per feature, PSI and out-of-range share over time",
    responses=error_responses({404: "Unknown model, or drift tracking is off."}),
    dependencies=[InfoAccess],
)
async def drift_history(name: str, request: Request, dataplane: DataPlaneDep) -> Response:
    """The drift window of the production version (this server process), taken every
    10 seconds: ``points`` of ``t`` (UTC seconds), ``rows`` in the window, and per feature its
    ``psi`` and ``out_of_range_share``, oldest first."""
    observability = _observability(request)
    if name not in dataplane.default_version:
        raise UnknownModelError(f"no model named {name!r} is served")
    version = dataplane.default_version[name]
    history = observability.drift_history
    assert history is not None  # made with the metrics, which _observability checked
    body = {"model": name, "version": version, "interval_s": DRIFT_INTERVAL_S}
    body["points"] = history.of(name, version)
    return Response(orjson.dumps(body), media_type="application/json")
