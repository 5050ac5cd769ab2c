"""Read-only views of the served models."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from serving.codecs.schemas import error_responses
from serving.core.dataplane import DataPlane, Known, ServedModel
from serving.core.errors import (
    ModelUnavailableError,
    NotReadyError,
    ServingError,
    UnknownModelError,
)
from serving.core.lifecycle import Lifecycle, check_name, store_call
from serving.http.routes.deps import DataPlaneDep, InfoAccess, without_store_root

router = APIRouter(prefix="/models", tags=["models"], dependencies=[InfoAccess])


def _summary(served: Known, default: bool) -> dict[str, Any]:
    m = served.manifest
    entry: dict[str, Any] = {
        "version": m.version,
        "default": default,
        "state": served.state.value,
        "runtime": served.runtime,
        "task": m.task.value,
        "estimator": m.estimator,
        "metrics": m.metrics,
        "primary_metric": m.primary_metric,
        "features": [{"name": f.name, "kind": f.kind.value} for f in m.features],
    }
    if m.target.classes is not None:
        entry["classes"] = m.target.classes
    if served.error:
        entry["error"] = served.error
    if served.warnings:
        entry["warnings"] = served.warnings
    return entry


@router.get("", summary="Served models: versions, task, metrics, feature schema summary")
async def list_models(dataplane: DataPlaneDep) -> Response:
    models: dict[str, dict[str, Any]] = {}
    for (name, version), served in sorted(dataplane.models.items()):
        default = dataplane.default_version.get(name)
        item = models.setdefault(name, {"name": name, "default_version": default, "versions": []})
        item["versions"].append(_summary(served, version == default))
    for (name, version), reason in sorted(dataplane.unreadable.items()):
        default = dataplane.default_version.get(name)
        item = models.setdefault(name, {"name": name, "default_version": default, "versions": []})
        entry = {"version": version, "default": version == default, "state": "failed"}
        item["versions"].append({**entry, "error": reason})
    for name, reason in sorted(dataplane.broken_names.items()):
        models[name] = {"name": name, "default_version": None, "versions": [], "error": reason}
    body = without_store_root({"models": list(models.values())}, dataplane.store.root)
    return Response(orjson.dumps(body), media_type="application/json")


def _explain(served: Known) -> dict[str, Any]:
    """Whether ``"explain"`` works for this version: the method and space, or why not."""
    explain = served.manifest.explain
    if isinstance(served, ServedModel) and served.unexplained is None and explain is not None:
        return {"available": True, "method": explain.method, "space": explain.space}
    reason = served.unexplained if isinstance(served, ServedModel) else None
    return {"available": False, "reason": reason or "the version is not served"}


@router.get(
    "/{name}",
    summary="One model's production version: input schema, metrics, provenance",
    responses={404: {"description": "Unknown model."}},
)
async def get_model(name: str, dataplane: DataPlaneDep) -> Response:
    body = without_store_root(model_detail(dataplane, name), dataplane.store.root)
    return Response(orjson.dumps(body), media_type="application/json")


def model_detail(dataplane: DataPlane, name: str) -> dict[str, Any]:
    """The production version of a model as ``GET /models/{name}`` describes it."""
    if name in dataplane.broken_names:
        raise ModelUnavailableError(
            f"model {name!r} is not available: {dataplane.broken_names[name]}"
        )
    if name not in dataplane.default_version:
        raise UnknownModelError(f"no model named {name!r} is served")
    version = dataplane.default_version[name]
    if (name, version) in dataplane.unreadable:
        raise ModelUnavailableError(
            f"model {name!r} v{version} is not available: {dataplane.unreadable[(name, version)]}"
        )
    served = dataplane.models[(name, version)]
    m = served.manifest
    return {
        "name": name,
        "version": version,
        "served_versions": sorted(v for (n, v) in dataplane.models if n == name),
        "state": served.state.value,
        "task": m.task.value,
        "estimator": m.estimator,
        "input_format": m.input_format,
        "runtime": served.runtime,
        "onnx": m.onnx.model_dump(mode="json", exclude_none=True) if m.onnx else None,
        "explain": _explain(served),
        "features": [f.model_dump(mode="json", exclude_none=True) for f in m.features],
        "target": m.target.model_dump(mode="json", exclude_none=True),
        "metrics": m.metrics,
        "primary_metric": m.primary_metric,
        "created": m.created.isoformat(),
        "data_fingerprint": m.data_fingerprint,
        "n_train_rows": m.n_train_rows,
        "sklearn": m.environment.sklearn,
        "warnings": served.warnings,
    }


_MEDIA = {
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
}


@router.get(
    "/{name}/versions",
    summary="Every published version: metrics, creation time, production, served or why not",
    responses=error_responses(
        {400: "Invalid model name.", 404: "Unknown model.", 503: "The service is starting."}
    ),
)
async def list_versions(name: str, request: Request, dataplane: DataPlaneDep) -> Response:
    lifecycle: Lifecycle | None = request.app.state.lifecycle
    if lifecycle is None:
        raise NotReadyError("the service is starting")
    body = await lifecycle.versions(name)
    return Response(
        orjson.dumps(without_store_root(body, dataplane.store.root)), media_type="application/json"
    )


@router.get(
    "/{name}/versions/{version}/report/{file}",
    summary="A file of a version's training report: the model card (model_card.md), a plot "
    "(*.png), metrics.json, evaluation.json, importance.json",
    responses=error_responses(
        {
            400: "Invalid model name.",
            404: "Unknown model, version or report file.",
            409: "The file does not match the manifest's sha256 (changed after training).",
            503: "The file cannot be read.",
        }
    ),
)
async def report_file(
    name: str,
    version: Annotated[int, Path(ge=1, le=2**31)],
    file: str,
    dataplane: DataPlaneDep,
) -> Response:
    """The file's bytes as training wrote them, checked against the manifest's sha256."""
    check_name(name)
    try:
        data = await store_call(dataplane.store.report_file, name, version, file)
    except ServingError as exc:  # unknown, or refused: the message names no store path
        raise type(exc)(without_store_root(str(exc), dataplane.store.root)) from None
    except OSError as exc:  # the disk failed us: the client did nothing wrong
        raise ModelUnavailableError(
            f"{name} v{version}: its report file cannot be read ({exc.strerror or exc})"
        ) from None
    media = _MEDIA.get(PurePosixPath(file).suffix, "application/octet-stream")
    # Versions never change once published: a browser may keep the file.
    headers = {"cache-control": "private, max-age=3600"}
    return Response(data, media_type=media, headers=headers)
