"""What the service tells about its models without a token (SERVEWELL_PROTECT_INFO off, the
default) and behind the admin token (on), on a real server; and store paths kept out of
every answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pydantic
import pytest

from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server

TOKEN = "info-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
WRONG = {"authorization": "Bearer not-the-token"}
INFO = [
    "/models",
    "/models/iris",
    "/models/iris/drift",
    "/metrics",
    "/v2/models/iris",
    "/v2/models/iris/versions/1",
    "/openapi.json",
    "/docs",
    "/redoc",
]
"""Every GET that tells about the served models."""
OPEN = ["/health/live", "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready"]


def _predicts(client: httpx.Client, headers: dict[str, str] | None = None) -> None:
    typed = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}, headers=headers)
    assert typed.json()["predictions"] == ["setosa"]
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}
    v2 = client.post("/v2/models/iris/infer", json={"inputs": [tensor]}, headers=headers)
    assert v2.json()["outputs"][0]["data"] == ["setosa"]


@pytest.fixture(scope="module")
def protected(trained_store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(trained_store, pool_size=1, protect_info=True, admin_token=TOKEN)
    with running_server(settings) as running:
        yield running


def test_protected_info_needs_the_admin_token(protected: RunningServer) -> None:
    with protected.client() as client:
        for path in INFO:
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            message = error if path.startswith("/v2") else error["message"]
            assert "SERVEWELL_PROTECT_INFO" in message, path
            assert client.get(path, headers=WRONG).status_code == 403, path
            assert client.get(path, headers=AUTH).status_code == 200, path
        for path in OPEN:
            assert client.get(path).status_code == 200, path
        _predicts(client)


def test_protected_readiness_answers_its_status_to_anyone(protected: RunningServer) -> None:
    with protected.client() as client:
        probe = client.get("/health/ready")
        assert probe.status_code == 200
        assert probe.json() == {"ready": True}
        assert client.head("/health/ready").status_code == 200
        detail = client.get("/health/ready", headers=AUTH).json()
        assert detail["ready"] is True
        assert detail["models"]["iris"]["1"]["state"] == "ready"
        assert client.get("/health/ready", headers=WRONG).status_code == 403


def test_info_is_open_by_default(client: httpx.Client) -> None:
    for path in [*INFO, *OPEN]:
        assert client.get(path).status_code == 200, path
    assert "executor" in client.get("/health/ready").json()
    _predicts(client)


def test_protect_info_needs_an_admin_token(trained_store: ModelStore) -> None:
    with pytest.raises(pydantic.ValidationError, match="protect_info needs admin_token"):
        Settings(store=trained_store.root, protect_info=True)


def test_answers_do_not_say_where_the_store_is(
    tampered_server: RunningServer, tampered_store: ModelStore
) -> None:
    """The tampered model's error names its file: relative to the store, not on the disk."""
    root = str(tampered_store.root.resolve())
    with tampered_server.client() as client:
        for path in ("/health/ready", "/models"):
            text = client.get(path).text
            assert "<store>/diabetes/1/model.joblib" in text, text
            assert root not in text
