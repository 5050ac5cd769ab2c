import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI

from bench import baselines, workload
from serving.store import Manifest, ModelStore


def _post(app: FastAPI, path: str, body: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            resp = await client.post(
                path, content=body, headers={"Content-Type": "application/json"}
            )
            return resp.status_code, resp.json()

    return asyncio.run(go())


def test_bare_app_validates_and_returns_a_constant(store: ModelStore, iris: Manifest) -> None:
    app = baselines.create_bare_app(store, ["iris"])
    body = workload.instances_body(iris, workload.sample_rows(iris, 1, seed=0))
    status, payload = _post(app, "/models/iris/predict", body)
    assert status == 200
    assert payload == {"model": "iris", "version": iris.version, "predictions": [0]}


def test_bare_app_rejects_what_the_service_rejects(store: ModelStore, iris: Manifest) -> None:
    app = baselines.create_bare_app(store, ["iris"])
    record = dict.fromkeys(iris.feature_names, 1.0)
    extra = json.dumps({"instances": [{**record, "unknown": 1.0}]})
    missing = json.dumps({"instances": [{iris.feature_names[0]: 1.0}]})
    assert _post(app, "/models/iris/predict", extra)[0] == 422
    assert _post(app, "/models/iris/predict", missing)[0] == 422


def test_naive_app_predicts_like_the_model(store: ModelStore, iris: Manifest) -> None:
    app = baselines.create_naive_app(store, ["iris"])
    rows = workload.sample_rows(iris, 3, seed=0)
    status, payload = _post(app, "/models/iris/predict", workload.instances_body(iris, rows))
    _, model = store.load_model("iris", iris.version)
    assert status == 200
    assert payload["predictions"] == model.predict(workload.model_input(iris, rows)).tolist()


def test_bare_raw_app_validates_the_same_body(store: ModelStore, iris: Manifest) -> None:
    app = baselines.create_bare_raw_app(store, ["iris"])
    body = workload.instances_body(iris, workload.sample_rows(iris, 1, seed=0))
    status, payload = _post(app, "/models/iris/predict", body)
    assert status == 200
    assert payload == {"model": "iris", "version": iris.version, "predictions": [0]}
    missing = json.dumps({"instances": [{iris.feature_names[0]: 1.0}]})
    assert _post(app, "/models/iris/predict", missing)[0] == 422
