"""Predict endpoints: one typed operation per served model version, plus generic fallbacks
(registered last) that give clean errors for unknown models and versions.

Requests to the exact per-model paths are normally answered by serving.http.edge before they
reach the router (same data-plane call, less overhead); these routes define the documented
operations and answer whenever the fast path does not.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from serving.codecs.schemas import ErrorResponse, PredictResponse, task_label
from serving.core.dataplane import DataPlane, ServedModel

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    404: {"model": ErrorResponse, "description": "Unknown model or version."},
    413: {"model": ErrorResponse, "description": "The body is over the size limit."},
    422: {"model": ErrorResponse, "description": "The rows do not match the input schema."},
    503: {"model": ErrorResponse, "description": "The model or the service is not ready."},
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictResponse, "description": "Predictions, one per row, in order."},
    **_ERRORS,
}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def request_body_ref(served: ServedModel) -> dict[str, Any]:
    assert served.request_model is not None
    ref = f"#/components/schemas/{served.request_model.__name__}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref}}},
        }
    }


def model_router(dataplane: DataPlane) -> APIRouter:
    """Routes for every served model version, built from the loaded manifests."""
    router = APIRouter(tags=["predict"])
    for served in dataplane.ready_models():
        name, version = served.key
        paths = [f"/models/{name}/versions/{version}/predict"]
        if dataplane.default_version.get(name) == version:
            paths.insert(0, f"/models/{name}/predict")
        for path in paths:
            _add(router, dataplane, served, path)
    router.add_api_route(
        "/models/{name}/predict",
        _generic(dataplane, versioned=False),
        methods=["POST"],
        include_in_schema=False,
    )
    router.add_api_route(
        "/models/{name}/versions/{version}/predict",
        _generic(dataplane, versioned=True),
        methods=["POST"],
        include_in_schema=False,
    )
    return router


def _add(router: APIRouter, dataplane: DataPlane, served: ServedModel, path: str) -> None:
    manifest = served.manifest

    async def predict(request: Request) -> Response:
        return _json(await dataplane.predict_json(served, await request.body()))

    versioned = "/versions/" in path
    metric = f"{manifest.primary_metric} {manifest.metrics.get(manifest.primary_metric, 0):.4g}"
    router.add_api_route(
        path,
        predict,
        methods=["POST"],
        name=f"predict_{manifest.name}{f'_v{manifest.version}' if versioned else ''}",
        operation_id=f"predict_{manifest.name}{f'_v{manifest.version}' if versioned else ''}",
        summary=f"Predict with {manifest.name}"
        + (f" v{manifest.version}" if versioned else " (production)"),
        description=(
            f"{manifest.name} v{manifest.version}: a {task_label(manifest)} "
            f"({manifest.estimator}, {metric}). Send `instances` (records) or `rows` "
            f"(values in feature order: {', '.join(manifest.feature_names)})."
        ),
        responses=RESPONSES,
        openapi_extra=request_body_ref(served),
    )


# Versions are written one way only: "01", "+1" or "1.0" are not version 1.
VersionPath = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$")]


def _generic(dataplane: DataPlane, versioned: bool) -> Any:
    if versioned:

        async def predict_version(name: str, version: VersionPath, request: Request) -> Response:
            served = dataplane.resolve(name, int(version))
            return _json(await dataplane.predict_json(served, await request.body()))

        return predict_version

    async def predict(name: str, request: Request) -> Response:
        served = dataplane.resolve(name)
        return _json(await dataplane.predict_json(served, await request.body()))

    return predict
