"""Baselines on the service's routes (``POST /models/{name}/predict``, ``GET /health/ready``),
uvicorn factories reading ``SERVEWELL_STORE`` and ``BENCH_MODELS``. **bare**: FastAPI validates
the body with a pydantic model of the features and returns a constant, the ceiling of an
endpoint written the usual way; **naive**: the same calling ``predict`` inline per request;
**hello**: a raw ASGI app that reads the body and answers a constant on any path, the
ceiling of any Python server on uvicorn.
"""

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, create_model

from bench.servers import served_version
from serving.store import FeatureKind, Manifest, ModelStore

_TYPES = {
    FeatureKind.NUMERIC: float,
    FeatureKind.INTEGER: int,
    FeatureKind.BOOLEAN: bool,
    FeatureKind.CATEGORICAL: str,
}


def request_model(manifest: Manifest) -> type[BaseModel]:
    """``{"instances": [record, ...]}``; fields ``f0, f1, ...`` aliased to the feature names,
    which need not be Python identifiers."""
    fields: dict[str, Any] = {
        f"f{i}": (_TYPES[f.kind] | None if f.nullable else _TYPES[f.kind], Field(alias=f.name))
        for i, f in enumerate(manifest.features)
    }
    forbid = ConfigDict(extra="forbid")
    record = create_model(f"{manifest.name}_Record", __config__=forbid, **fields)
    instances = (list[record], Field(min_length=1))
    return create_model(f"{manifest.name}_Body", __config__=forbid, instances=instances)


def _endpoint(manifest: Manifest, model: Any) -> Callable[..., Any]:
    constant = {"model": manifest.name, "version": manifest.version, "predictions": [0]}
    n, frame = len(manifest.features), manifest.input_format == "dataframe"

    async def bare(body: Any) -> dict[str, Any]:
        return constant

    def naive(body: Any) -> dict[str, Any]:
        rows = [[getattr(r, f"f{i}") for i in range(n)] for r in body.instances]
        x = pd.DataFrame(rows, columns=manifest.feature_names) if frame else np.asarray(rows, float)
        return {**constant, "predictions": model.predict(x).tolist()}

    endpoint = bare if model is None else naive
    # FastAPI reads the annotation when the route is added; a model built at runtime cannot
    # be written in a static annotation.
    endpoint.__annotations__["body"] = request_model(manifest)
    return endpoint


def _app(load: bool) -> FastAPI:
    store = ModelStore(Path(os.environ.get("SERVEWELL_STORE", "models")))
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    for name in filter(None, os.environ.get("BENCH_MODELS", "").split(",")):
        version = served_version(store, name)
        manifest = store.manifest(name, version)
        model = store.load_model(name, version)[1] if load else None
        app.add_api_route(f"/models/{name}/predict", _endpoint(manifest, model), methods=["POST"])
    return app


bare_app = partial(_app, load=False)
naive_app = partial(_app, load=True)

_CONSTANT = b'{"predictions":[0]}'


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _CONSTANT})


def hello_app() -> Callable[..., Any]:
    return _hello
