"""The same answers over HTTP whichever runtime serves: ONNX Runtime or scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from serving.store import ModelStore
from tests.serving.conftest import RunningServer, quiet_settings, running_server
from training.onnx_export import PROBA_TOLERANCE, generated_rows

MODELS = ["iris", "breast_cancer", "diabetes", "churn"]


@pytest.fixture(scope="module")
def sklearn_server(trained_store: ModelStore) -> Iterator[RunningServer]:
    with running_server(quiet_settings(trained_store, pool_size=1, runtime="sklearn")) as running:
        yield running


def _rows(trained_store: ModelStore, name: str) -> list[list[Any]]:
    manifest = trained_store.manifest(name, 1)
    frame = generated_rows(manifest.features, 400, seed=99)
    for f in manifest.features:  # JSON types as a client sends them
        if f.kind == "integer":
            frame[f.name] = frame[f.name].astype(int)
        elif f.kind == "boolean":
            frame[f.name] = frame[f.name].astype(bool)
    return [list(row) for row in frame.itertuples(index=False)]


@pytest.mark.parametrize("name", MODELS)
def test_runtimes_give_the_same_answers(
    client: httpx.Client, sklearn_server: RunningServer, trained_store: ModelStore, name: str
) -> None:
    assert client.get(f"/models/{name}").json()["runtime"] == "onnx"
    with sklearn_server.client() as other:
        assert other.get(f"/models/{name}").json()["runtime"] == "sklearn"
        manifest = trained_store.manifest(name, 1)
        want = manifest.task == "classification"
        body = {"rows": _rows(trained_store, name), "return_probabilities": want}
        onnx, sklearn = (
            client.post(f"/models/{name}/predict", json=body),
            other.post(f"/models/{name}/predict", json=body),
        )
    assert onnx.status_code == 200, onnx.text
    assert sklearn.status_code == 200, sklearn.text
    a, b = onnx.json(), sklearn.json()
    if want:
        assert a["predictions"] == b["predictions"]
        classes = [str(c) for c in manifest.target.classes or []]
        pa = np.array([[p[c] for c in classes] for p in a["probabilities"]])
        pb = np.array([[p[c] for c in classes] for p in b["probabilities"]])
        assert np.allclose(pa, pb, rtol=0, atol=PROBA_TOLERANCE)
    else:
        assert np.allclose(a["predictions"], b["predictions"], rtol=1e-9, atol=0)
