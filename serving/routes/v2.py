"""The Open Inference Protocol (KServe v2 / Triton HTTP) over the same data plane as the
typed endpoints: server and model metadata, health, inference (JSON or Triton's binary
tensor data extension) and the model repository extension (behind the admin token).

Inference on the exact paths of served models is normally answered by serving.v2_fastpath
before the router; these routes answer otherwise (e.g. unknown models: a clean 404). Every
error under ``/v2`` has the protocol's shape ``{"error": "..."}`` (serving.exception_handlers).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from serving.errors import InvalidInputError, MalformedRequestError, NotReadyError
from serving.lifecycle import Lifecycle
from serving.oip.service import InferenceService
from serving.routes.admin import require_admin
from serving.v2_fastpath import infer_headers, response_headers

SERVER_NAME = "servewell"
EXTENSIONS = ["binary_tensor_data"]
REPOSITORY_EXTENSION = "model_repository"


def get_service(request: Request) -> InferenceService:
    service: InferenceService | None = getattr(request.app.state, "inference_service", None)
    if service is None:
        raise NotReadyError("the service is starting")
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]
AdminDep = Annotated[Lifecycle, Depends(require_admin)]
# Versions are written one way only, as on the typed endpoints.
VersionPath = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$")]

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])


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


@router.get("/models/{name}", summary="Model metadata (production version)")
async def model_metadata(name: str, service: ServiceDep) -> Response:
    return _json(service.metadata(service.dataplane.resolve(name)))


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
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


async def _infer(service: InferenceService, request: Request, version: int | None) -> Response:
    name = request.path_params["name"]
    served = service.dataplane.resolve(name, version)
    header_length = infer_headers(request.headers.raw)
    body, json_length = await service.infer(served, await request.body(), header_length)
    return Response(
        body, headers={k.decode(): v.decode() for k, v in response_headers(len(body), json_length)}
    )


@router.post("/models/{name}/infer", summary="Inference (production version)")
async def infer(name: str, request: Request, service: ServiceDep) -> Response:
    return await _infer(service, request, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)")
async def infer_version(
    name: str, version: VersionPath, request: Request, service: ServiceDep
) -> Response:
    return await _infer(service, request, int(version))


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
