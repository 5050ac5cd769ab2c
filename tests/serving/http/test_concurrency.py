"""Batching under load: many concurrent requests with distinct inputs each get their own answer."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np

from serving.store import ModelStore
from tests.serving.conftest import RunningServer
from training.onnx_export import PROBA_TOLERANCE


async def _post_all(url: str, requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))


def test_500_concurrent_requests_get_their_own_answers(
    server: RunningServer, trained_store: ModelStore
) -> None:
    rng = np.random.default_rng(7)
    _, iris = trained_store.load_model("iris", 1)
    _, cancer = trained_store.load_model("breast_cancer", 1)
    manifest = trained_store.manifest("breast_cancer", 1)
    lows = np.array([f.min for f in manifest.features])
    highs = np.array([f.max for f in manifest.features])
    iris_rows = rng.uniform(0.1, 7.9, size=(400, 4))
    cancer_rows = lows + rng.random((100, 30)) * (highs - lows)
    names = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    requests: list[tuple[str, dict[str, Any]]] = []
    for i, row in enumerate(iris_rows):
        if i % 2:
            body: dict[str, Any] = {"rows": [row.tolist()], "return_probabilities": True}
        else:
            body = {"instances": [dict(zip(names, row.tolist(), strict=True))]}
        requests.append(("/models/iris/predict", body))
    for i in range(0, 100, 2):  # two rows per request
        requests.append(
            ("/models/breast_cancer/predict", {"rows": cancer_rows[i : i + 2].tolist()})
        )

    responses = asyncio.run(_post_all(server.url, requests))

    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    iris_expected = iris.predict(iris_rows).tolist()
    iris_proba = iris.predict_proba(iris_rows)
    for i, response in enumerate(responses[:400]):
        body = response.json()
        assert body["predictions"] == [iris_expected[i]]
        if i % 2:
            got = [body["probabilities"][0][c] for c in iris.classes_]
            assert np.allclose(got, iris_proba[i], rtol=0, atol=PROBA_TOLERANCE)
    cancer_expected = cancer.predict(cancer_rows).tolist()
    for j, response in enumerate(responses[400:]):
        assert response.json()["predictions"] == cancer_expected[2 * j : 2 * j + 2]


def test_one_bad_request_does_not_fail_its_batch_mates(server: RunningServer) -> None:
    good = {"rows": [[5.1, 3.5, 1.4, 0.2]]}
    bad = {"rows": [[5.1, 3.5, "x", 0.2]]}
    requests = [("/models/iris/predict", bad if i % 10 == 0 else good) for i in range(100)]
    responses = asyncio.run(_post_all(server.url, requests))
    for i, response in enumerate(responses):
        assert response.status_code == (422 if i % 10 == 0 else 200)
