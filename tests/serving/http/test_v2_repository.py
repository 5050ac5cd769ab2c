"""The model repository extension on a live server with an admin token, driven by the real
Triton client: index, unload (the model stops answering), load (it answers again), and the
admin authentication in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from serving.store import ModelStore
from tests.serving.conftest import RunningServer, quiet_settings, running_server
from tests.serving.http.triton import release

TOKEN = "v2-repository-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(trained_store: ModelStore) -> Iterator[RunningServer]:
    # Unloading changes what this server serves, never the store: the shared store will do.
    settings = quiet_settings(trained_store, pool_size=1, poll_interval_s=0, admin_token=TOKEN)
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def tc(live: RunningServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(urlsplit(live.url).netloc, network_timeout=60)
    yield client
    release(client)


def _iris(client: triton.InferenceServerClient) -> list[str]:
    tensor = triton.InferInput("input", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
    labels = client.infer("iris", [tensor]).as_numpy("predict")
    return [x.decode() for x in labels.tolist()]


def test_repository_needs_the_admin_token(live: RunningServer) -> None:
    with live.client() as client:
        missing = client.post("/v2/repository/index")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert isinstance(missing.json()["error"], str)
        wrong = client.post("/v2/repository/index", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403
        assert list(wrong.json()) == ["error"]
        unload = client.post("/v2/repository/models/iris/unload")
        assert unload.status_code == 401
        assert client.get("/v2/models/iris/ready").status_code == 200


def test_index_unload_load(tc: triton.InferenceServerClient, live: RunningServer) -> None:
    assert "model_repository" in tc.get_server_metadata()["extensions"]
    index = tc.get_model_repository_index(headers=AUTH)
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        (name, "1", "READY") for name in ("breast_cancer", "churn", "diabetes", "iris")
    }
    before = _iris(tc)

    tc.unload_model("iris", headers=AUTH)
    assert not tc.is_model_ready("iris")
    assert tc.is_model_ready("diabetes")
    with pytest.raises(InferenceServerException, match="no model named 'iris'"):
        _iris(tc)
    index = {e["name"]: e for e in tc.get_model_repository_index(headers=AUTH)}
    assert index["iris"]["state"] == "UNAVAILABLE"
    with live.client() as client:
        ready_only = client.post("/v2/repository/index", json={"ready": True}, headers=AUTH)
        assert [e["name"] for e in ready_only.json()] == ["breast_cancer", "churn", "diabetes"]
        # Unloading what is not served is a clean 404.
        again = client.post("/v2/repository/models/iris/unload", headers=AUTH)
        assert again.status_code == 404
        assert list(again.json()) == ["error"]
        # Load parameters (config overrides) are not supported: 400, nothing changes.
        config = client.post(
            "/v2/repository/models/iris/load",
            json={"parameters": {"config": "{}"}},
            headers=AUTH,
        )
        assert config.status_code == 400
        assert "not supported" in config.json()["error"]
        assert client.post("/v2/repository/models/..%2F/load", headers=AUTH).status_code in (
            400,
            404,
        )

    tc.load_model("iris", headers=AUTH)
    assert tc.is_model_ready("iris")
    assert _iris(tc) == before
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        tc.load_model("nope", headers=AUTH)


def test_typed_endpoint_follows_unload(live: RunningServer) -> None:
    with live.client() as client:
        unload = client.post("/v2/repository/models/diabetes/unload", headers=AUTH)
        assert unload.status_code == 200
        typed = client.post("/models/diabetes/predict", json={"rows": [[0.0] * 10]})
        assert typed.status_code == 404
        assert client.post("/v2/repository/models/diabetes/load", headers=AUTH).status_code == 200
        typed = client.post("/models/diabetes/predict", json={"rows": [[0.0] * 10]})
        assert typed.status_code == 200


def test_readme_example_runs(live: RunningServer) -> None:
    """The README's tritonclient example, run as written against this server."""
    from tests.serving.readme import python_block

    code = python_block("Open Inference Protocol")
    netloc = urlsplit(live.url).netloc
    assert '"localhost:8000"' in code
    namespace: dict[str, object] = {}
    exec(compile(code.replace('"localhost:8000"', f'"{netloc}"'), "README.md", "exec"), namespace)
    release(namespace.pop("client"))
    assert namespace["labels"] == ["setosa"]
    probabilities = namespace["probabilities"]
    assert isinstance(probabilities, np.ndarray)
    assert probabilities.shape == (1, 3)
    with httpx.Client(base_url=live.url) as client:
        assert client.get("/v2/health/ready").status_code == 200
