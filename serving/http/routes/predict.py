"""The documented predict operations: one typed operation per served model version.

serving.http.edge answers every predict path (served models through their codec, unknown
names and versions with clean errors); no route of the app answers them. The operations
here only describe them in the OpenAPI document, rebuilt from the served models.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response
from starlette.routing import BaseRoute

from serving.codecs.schemas import PredictResponse, error_responses, task_label
from serving.core.dataplane import DataPlane, ServedModel

_ERRORS = error_responses(
    {
        400: "The body is not valid JSON.",
        404: "Unknown model or version.",
        413: "The body is over the size limit.",
        422: "The rows do not match the input schema.",
        503: "The model or the service is not ready.",
    }
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictResponse, "description": "Predictions, one per row, in order."},
    **_ERRORS,
}


def request_body_ref(served: ServedModel) -> dict[str, Any]:
    ref = f"#/components/schemas/{served.request_model.__name__}"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref}}},
        }
    }


def operations(dataplane: DataPlane) -> list[BaseRoute]:
    """One documented operation per served path, built from the loaded manifests."""
    router = APIRouter(tags=["predict"])
    for served in dataplane.ready_models():
        name, version = served.key
        paths = [f"/models/{name}/versions/{version}/predict"]
        if dataplane.default_version.get(name) == version:
            paths.insert(0, f"/models/{name}/predict")
        for path in paths:
            _add(router, served, path)
    return router.routes


async def _answered_by_the_edge() -> Response:
    """Never called: the operation exists for its documentation (serving.http.edge answers)."""
    raise NotImplementedError


def _add(router: APIRouter, served: ServedModel, path: str) -> None:
    manifest = served.manifest
    versioned = "/versions/" in path
    metric = f"{manifest.primary_metric} {manifest.metrics.get(manifest.primary_metric, 0):.4g}"
    router.add_api_route(
        path,
        _answered_by_the_edge,
        methods=["POST"],
        name=f"predict_{manifest.name}{f'_v{manifest.version}' if versioned else ''}",
        operation_id=f"predict_{manifest.name}{f'_v{manifest.version}' if versioned else ''}",
        summary=f"Predict with {manifest.name}"
        + (f" v{manifest.version}" if versioned else " (production)"),
        description=(
            f"{manifest.name} v{manifest.version}: a {task_label(manifest)} "
            f"({manifest.estimator}, {metric}). Send `instances` (records) or `rows` "
            f"(values in feature order: {', '.join(manifest.feature_names)})."
            + (
                ""
                if versioned
                else " While the model runs a canary or A/B experiment, it chooses the version "
                "(an `X-Routing-Key` header keeps a user on one); `X-Model-Version` and `version` "
                "say which answered."
            )
        ),
        responses=RESPONSES,
        openapi_extra=request_body_ref(served),
    )
