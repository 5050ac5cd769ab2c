"""The Open Inference Protocol (KServe v2 / Triton HTTP) over the same data plane as the
typed endpoints: server and model metadata, health, inference (JSON or Triton's binary
tensor data extension) and the model repository extension (behind the admin token).

Inference is answered by serving.http.edge, served models or not (unknown models: a clean
404); :data:`infer_operations` only documents it. Every error under ``/v2`` has the
protocol's shape ``{"error": "..."}`` (serving.http.exception_handlers).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from serving.codecs.oip.service import REPOSITORY_EXTENSION, SERVER_NAME, InferenceService
from serving.codecs.schemas import error_responses, inline_schema
from serving.core.errors import InvalidInputError, MalformedRequestError, NotReadyError
from serving.core.lifecycle import Lifecycle
from serving.http.routes.admin import require_admin
from serving.http.routes.deps import InfoAccess

EXTENSIONS = ["binary_tensor_data"]


def get_service(request: Request) -> InferenceService:
    service: InferenceService | None = getattr(request.app.state, "inference_service", None)
    if service is None:
        raise NotReadyError("the service is starting")
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]
AdminDep = Annotated[Lifecycle, Depends(require_admin)]
# Versions are written one way only, as on the typed endpoints.
VersionPath = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$")]


class V2Error(BaseModel):
    """The protocol's error body."""

    error: str


_ERRORS = error_responses(
    {
        400: "Malformed request, or inputs that do not fit the model.",
        404: "Unknown model or version.",
        503: "Not ready, or overloaded (see Retry-After).",
    },
    V2Error,
)

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=_ERRORS)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


@router.get("", summary="Server metadata: name, version, protocol extensions")
async def server_metadata(request: Request) -> Response:
    extensions = list(EXTENSIONS)
    if request.app.state.settings.admin_enabled:
        extensions.append(REPOSITORY_EXTENSION)
    return _json({"name": SERVER_NAME, "version": request.app.version, "extensions": extensions})


@router.get("/health/live", summary="The server is live")
async def live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Every model that should be served is ready")
async def ready(request: Request) -> Response:
    dataplane = getattr(request.app.state, "dataplane", None)
    ok = dataplane is not None and dataplane.readiness()[0]
    return _json({"ready": True}) if ok else _json({"error": "the server is not ready"}, 503)


@router.get(
    "/models/{name}", summary="Model metadata (production version)", dependencies=[InfoAccess]
)
async def model_metadata(name: str, service: ServiceDep) -> Response:
    return _json(service.metadata(service.dataplane.resolve(name)))


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata (one version)",
    dependencies=[InfoAccess],
)
async def version_metadata(name: str, version: VersionPath, service: ServiceDep) -> Response:
    return _json(service.metadata(service.dataplane.resolve(name, int(version))))


@router.get("/models/{name}/ready", summary="The model's production version is ready")
async def model_ready(name: str, service: ServiceDep) -> Response:
    service.dataplane.resolve(name)  # unknown or unavailable: 404 or 503
    return _json({"name": name, "ready": True})


@router.get("/models/{name}/versions/{version}/ready", summary="A model version is ready")
async def version_ready(name: str, version: VersionPath, service: ServiceDep) -> Response:
    service.dataplane.resolve(name, int(version))
    return _json({"name": name, "version": version, "ready": True})


class RequestInput(BaseModel):
    name: str = Field(description="A feature name, or `input` for one 2-D tensor of all features.")
    shape: list[int] = Field(description="`[rows]` per feature, or `[rows, n_features]`.")
    datatype: Literal[
        "BOOL",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    ]
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` when the data follows the JSON header."
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flat or nested.")


class RequestOutput(BaseModel):
    name: Literal["predict", "predict_proba"]
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data: true` for binary tensor data in the response."
    )


class InferenceRequest(BaseModel):
    """An Open Inference Protocol inference request (JSON part)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output: true` for every output in binary."
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Outputs to return (default: all)."
    )


# The routes read the raw body (JSON, or JSON + binary tensors); the schema documents it.
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor data extension: the JSON request, then the "
                    "tensors; the `Inference-Header-Content-Length` header gives the JSON length.",
                }
            },
        },
    }
}


# Described, never routed: serving.http.edge answers these paths before any router.
_infer_docs = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=_ERRORS)


@_infer_docs.post(
    "/models/{name}/infer", summary="Inference (production version)", openapi_extra=_INFER_BODY
)
async def infer(name: str) -> Response:
    raise NotImplementedError


@_infer_docs.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    openapi_extra=_INFER_BODY,
)
async def infer_version(name: str, version: VersionPath) -> Response:
    raise NotImplementedError


infer_operations = _infer_docs.routes
"""The inference operations, for the OpenAPI document."""


# -- repository extension (admin token) -----------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return body


@router.post("/repository/index", summary="Every model in the store, and its state")
async def repository_index(request: Request, lifecycle: AdminDep, service: ServiceDep) -> Response:
    body = await _body(request)
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInputError("ready must be true or false")
    names = await asyncio.to_thread(lifecycle.store.names)
    return _json(service.repository_index(names, ready_only))


@router.post("/repository/models/{name}/load", summary="Load (or reload) a model from the store")
async def repository_load(name: str, request: Request, lifecycle: AdminDep) -> Response:
    parameters = (await _body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("parameters must be an object")
    if parameters:
        raise InvalidInputError(
            f"load parameters are not supported ({', '.join(sorted(parameters))}): models "
            "come from the store as trained"
        )
    await lifecycle.load(name)
    return _json({})


@router.post("/repository/models/{name}/unload", summary="Stop serving a model until loaded")
async def repository_unload(name: str, request: Request, lifecycle: AdminDep) -> Response:
    parameters = (await _body(request)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("parameters must be an object")
    unknown = set(parameters) - {"unload_dependents"}
    if unknown:
        raise InvalidInputError(f"unknown unload parameters: {', '.join(sorted(unknown))}")
    await lifecycle.unload(name)
    return _json({})
