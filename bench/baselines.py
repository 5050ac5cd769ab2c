"""Baseline apps the service is measured against, on the same box in the same run.

All expose the service's route shape (``POST /models/{name}/predict`` with
``{"instances": [...]}``, and ``GET /health/ready``) so the same wrk bodies hit every server.

- **bare**: FastAPI validates the body with a pydantic model that has the model's fields (the
  idiomatic body parameter) and returns a constant dict: the ceiling for a FastAPI + pydantic
  endpoint written the usual way. The issue's 85 % target is measured against this one.
- **bare_raw** (opt-in): the same validation on the fastest path FastAPI allows -- raw body,
  ``model_validate_json``, constant bytes back. The service takes a path like this one, so
  this is the stricter yardstick for what batching and the worker pool cost.
- **naive**: like bare, but calls the sklearn model inline per request, in a plain ``def``
  endpoint (FastAPI runs it in its threadpool) -- what a first implementation looks like.

Run with uvicorn's ``--factory`` on :func:`bare_app` / :func:`bare_raw_app` /
:func:`naive_app`, which read ``SERVEWELL_STORE`` and ``BENCH_MODELS`` (comma-separated names)
from the environment.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from bench.workload import model_input, served_version
from serving.store import Feature, FeatureKind, Manifest, ModelStore

MODELS_ENV = "BENCH_MODELS"
STORE_ENV = "SERVEWELL_STORE"

_KIND_TYPES: dict[FeatureKind, type] = {
    FeatureKind.NUMERIC: float,
    FeatureKind.INTEGER: int,
    FeatureKind.BOOLEAN: bool,
    FeatureKind.CATEGORICAL: str,
}


def _field_type(feature: Feature) -> Any:
    kind = _KIND_TYPES[feature.kind]
    return kind | None if feature.nullable else kind


def request_model(manifest: Manifest) -> type[BaseModel]:
    """``{"instances": [record, ...]}`` where a record has exactly the manifest's features.

    Field names are positional (``f0``, ``f1``, ...) with the feature name as alias, because
    feature names need not be Python identifiers.
    """
    fields: dict[str, Any] = {
        f"f{i}": (_field_type(feature), Field(alias=feature.name))
        for i, feature in enumerate(manifest.features)
    }
    instance = create_model(
        f"{manifest.name}_Instance", __config__=ConfigDict(extra="forbid"), **fields
    )
    request: type[BaseModel] = create_model(
        f"{manifest.name}_Request",
        __config__=ConfigDict(extra="forbid"),
        instances=(list[instance], Field(min_length=1)),
    )
    return request


def _with_body_model(endpoint: Callable[..., Any], body_model: type[BaseModel]) -> None:
    """Make FastAPI validate the ``body`` parameter with a model built at runtime.

    FastAPI reads the endpoint's annotations when the route is added; a model created in a
    function cannot be written in a static annotation that mypy accepts.
    """
    endpoint.__annotations__["body"] = body_model


def _records_to_rows(instances: list[BaseModel], n_features: int) -> list[list[Any]]:
    return [[getattr(inst, f"f{i}") for i in range(n_features)] for inst in instances]


def _bare_endpoint(manifest: Manifest) -> Callable[..., Any]:
    constant = {"model": manifest.name, "version": manifest.version, "predictions": [0]}

    async def predict(body: Any) -> dict[str, Any]:
        return constant

    _with_body_model(predict, request_model(manifest))
    return predict


def _bare_raw_endpoint(manifest: Manifest) -> Callable[..., Any]:
    body_model = request_model(manifest)
    constant = json.dumps(
        {"model": manifest.name, "version": manifest.version, "predictions": [0]}
    ).encode()

    async def predict(request: Request) -> Response:
        try:
            body_model.model_validate_json(await request.body())
        except ValidationError as exc:
            return Response(exc.json(), status_code=422, media_type="application/json")
        return Response(constant, media_type="application/json")

    return predict


def _naive_endpoint(manifest: Manifest, model: Any) -> Callable[..., Any]:
    n_features = len(manifest.features)

    def predict(body: Any) -> dict[str, Any]:
        rows = _records_to_rows(body.instances, n_features)
        predictions = model.predict(model_input(manifest, rows))
        return {
            "model": manifest.name,
            "version": manifest.version,
            "predictions": predictions.tolist(),
        }

    _with_body_model(predict, request_model(manifest))
    return predict


def _app(title: str, endpoints: dict[str, Callable[..., Any]]) -> FastAPI:
    app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    for name, endpoint in endpoints.items():
        app.add_api_route(f"/models/{name}/predict", endpoint, methods=["POST"])
    return app


def create_bare_app(store: ModelStore, models: list[str]) -> FastAPI:
    """Validate-and-return-a-constant endpoints for ``models`` (no model is loaded)."""
    endpoints = {
        name: _bare_endpoint(store.manifest(name, served_version(store, name))) for name in models
    }
    return _app("bench bare POST baseline", endpoints)


def create_bare_raw_app(store: ModelStore, models: list[str]) -> FastAPI:
    """Like :func:`create_bare_app`, validating the raw body and answering with bytes."""
    endpoints = {
        name: _bare_raw_endpoint(store.manifest(name, served_version(store, name)))
        for name in models
    }
    return _app("bench bare POST baseline, raw body", endpoints)


def create_naive_app(store: ModelStore, models: list[str]) -> FastAPI:
    """Endpoints that call each model's ``predict`` inline, one request at a time."""
    endpoints = {}
    for name in models:
        manifest, model = store.load_model(name, served_version(store, name))
        endpoints[name] = _naive_endpoint(manifest, model)
    return _app("bench naive inline-predict baseline", endpoints)


def _from_env() -> tuple[ModelStore, list[str]]:
    store = ModelStore(Path(os.environ.get(STORE_ENV, "models")))
    models = [m for m in os.environ.get(MODELS_ENV, "").split(",") if m]
    if not models:
        raise RuntimeError(f"set {MODELS_ENV} to a comma-separated list of model names")
    return store, models


def bare_app() -> FastAPI:
    """uvicorn factory for the bare-POST baseline (configured by the environment)."""
    return create_bare_app(*_from_env())


def bare_raw_app() -> FastAPI:
    """uvicorn factory for the raw-body bare-POST baseline (configured by the environment)."""
    return create_bare_raw_app(*_from_env())


def naive_app() -> FastAPI:
    """uvicorn factory for the naive inline-predict baseline (configured by the environment)."""
    return create_naive_app(*_from_env())
