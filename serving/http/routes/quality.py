"""``GET /models/{name}/quality``: live quality from feedback labels (serving.capture)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from serving.capture.monitor import QualityMonitor
from serving.codecs.schemas import error_responses
from serving.core.errors import CaptureOffError, CaptureUnavailableError
from serving.http.routes.deps import DataPlaneDep, InfoAccess

router = APIRouter(prefix="/models", tags=["feedback"], dependencies=[InfoAccess])
T = TypeVar("T")

_ERRORS = error_responses(
    {
        404: "No such model or version.",
        409: "Data capture is off.",
        503: "The capture database is unavailable (retry later).",
    }
)


def _monitor(request: Request) -> QualityMonitor:
    monitor: QualityMonitor | None = request.app.state.quality
    if monitor is None:
        raise CaptureOffError(
            "data capture is off (SERVEWELL_CAPTURE=none): there are no labelled predictions"
        )
    return monitor


async def _read(blocking: Callable[[], T]) -> T:
    """Run a read of the capture database in a thread; its failure is a retryable 503."""
    try:
        return await asyncio.to_thread(blocking)
    except Exception as exc:
        raise CaptureUnavailableError(
            f"the capture database is unavailable ({type(exc).__name__}); retry later",
            retry_after=5.0,
        ) from exc


@router.get(
    "/{name}/quality",
    summary="Live quality per served version: metrics over recent labelled rows vs holdout",
    responses=_ERRORS,
)
async def get_quality(
    name: Annotated[str, Path(description="Model name.")],
    request: Request,
    dataplane: DataPlaneDep,
    version: Annotated[int | None, Query(ge=1, description="One served version.")] = None,
) -> Response:
    monitor = _monitor(request)
    production = dataplane.resolve(name)
    if version is not None:
        manifests = [dataplane.resolve(name, version).manifest]
    else:  # production first, then every other served version
        others = [s for s in dataplane.ready_models() if s.manifest.name == name]
        manifests = [production.manifest] + [
            s.manifest for s in others if s.manifest.version != production.manifest.version
        ]
    reports = await _read(lambda: [monitor.report(m) for m in manifests])
    body = {
        "model": name,
        "production_version": production.manifest.version,
        "tolerance": monitor.tolerance,
        "min_rows": monitor.min_rows,
        "last_n": monitor.last_n,
        "versions": reports,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/{name}/quality/history",
    summary="Live quality over time: the primary metric of labelled traffic, slice by slice",
    responses=_ERRORS,
)
async def get_quality_history(
    name: Annotated[str, Path(description="Model name.")],
    request: Request,
    dataplane: DataPlaneDep,
    version: Annotated[int | None, Query(ge=1, description="A served version.")] = None,
    hours: Annotated[float, Query(gt=0, le=24 * 30, description="How far back.")] = 24.0,
    buckets: Annotated[int, Query(ge=1, le=500, description="Slices of that span.")] = 24,
) -> Response:
    """The primary metric of the version (production by default) over equal slices of the
    last ``hours``, by prediction time, from the labelled rows captured then; with the holdout
    value to compare. A slice without labelled rows has ``value`` null."""
    monitor = _monitor(request)
    manifest = dataplane.resolve(name, version).manifest
    points = await _read(lambda: monitor.history(manifest, hours * 3600.0, buckets))
    body = {
        "model": name,
        "version": manifest.version,
        "metric": manifest.primary_metric,
        "holdout": manifest.metrics.get(manifest.primary_metric),
        "higher_is_better": manifest.higher_is_better,
        "points": points,
    }
    return Response(orjson.dumps(body), media_type="application/json")
